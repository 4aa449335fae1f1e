"""The trained router's mechanics on the real SmolLM2-135M (CPU, fp32) and the baseline routers.

The LoRA adapter here is freshly initialised (peft's default init: identical to the base model) and saved to a
temporary folder, so the tests check the machinery (prompt, action tokens, scoring, parsing, fallbacks), not a
trained router's quality (that is docs/BENCHMARKS.md, Stage 5)."""

import json
import math

import pytest

from xrouter_lite import prompting as P
from xrouter_lite.router import (
    BestSingleRouter,
    Decision,
    KNNRouter,
    LabeledPrompt,
    LoRARouter,
    OracleRouter,
    Outcome,
    RandomRouter,
    RouteItem,
    ScoredDecision,
    SingleModelRouter,
    base_model_of_adapter,
    decide,
    normalised_costs,
)

THREE = ["claude-v1", "claude-v2", "mistralai/mistral-7b-chat"]  # short prompts keep the CPU tests fast
QUERIES = [
    "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many clips in total?",
    "Write a Python function that returns the n-th Fibonacci number.",
]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path

    base = str(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    d = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def router(adapter_dir):
    return LoRARouter(adapter_dir=adapter_dir, mode="score", device="cpu", batch_size=4)


def naive_logp(model, tokenizer, query, offered, model_id):
    """log p(action | prompt) from one plain forward over prompt + action (no cache, no packing)."""
    import torch

    ids = P.encode_prompt(tokenizer, P.build_router_prompt(query, offered))
    act = P.encode_action(tokenizer, model_id)
    with torch.no_grad():  # logits of the last len(act) + 1 positions only (the rest is not needed)
        lp = model(input_ids=torch.tensor([ids + act]), logits_to_keep=len(act) + 1).logits[0].float().log_softmax(-1)
    return sum(float(lp[t, tok]) for t, tok in enumerate(act))


def test_base_model_is_read_from_the_adapter(adapter_dir, tmp_path):
    from xrouter_lite.assets import smollm2_path

    assert base_model_of_adapter(adapter_dir) == str(smollm2_path())
    card = tmp_path / "run_card.json"
    card.write_text(json.dumps({"config": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}}))
    assert base_model_of_adapter(tmp_path) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="base model"):
        base_model_of_adapter(tmp_path / "nowhere")


def test_score_mode_equals_naive_forward(router, pool_rb):
    offered = pool_rb.subset(THREE)
    d = router.route(QUERIES[0], offered)
    assert isinstance(d, ScoredDecision) and d.valid
    assert d.model_id == max(d.base_scores, key=d.base_scores.get)  # tau = 0: the most probable action
    assert d.latency_s > 0
    for m in THREE:
        # fp32 rounding: the prefix's KV comes from its own forward (prefix reuse), ~1e-5 relative on ~-30 nats
        assert d.base_scores[m] == pytest.approx(naive_logp(router.model, router.tokenizer, QUERIES[0], offered, m), abs=5e-4)


def test_score_mode_scores_every_offered_model(router, pool_rb):
    d = router.route(QUERIES[1], list(pool_rb))
    assert set(d.base_scores) == set(pool_rb.ids)
    assert all(math.isfinite(v) and v < 0 for v in d.base_scores.values())
    assert d.model_id in pool_rb.ids and d.valid


def test_batched_scores_equal_single_ones_with_different_offered_sets(router, pool_rb):
    subsets = [pool_rb.subset(["gpt-3.5-turbo-1106", "claude-v2"]), pool_rb.subset(THREE)]
    batch = router.route_batch(QUERIES, subsets)
    for q, off, d in zip(QUERIES, subsets, batch):
        single = router.route(q, off)
        assert list(d.base_scores) == [s.id for s in off]
        for m in d.base_scores:
            assert d.base_scores[m] == pytest.approx(single.base_scores[m], abs=1e-4)
    # the two-pass implementation (KV cache, then the candidates) gives the same numbers
    cached = LoRARouter(model=router.model, tokenizer=router.tokenizer, score_impl="cached").route_batch(QUERIES, subsets)
    for d, c in zip(batch, cached):
        for m in d.base_scores:
            assert d.base_scores[m] == pytest.approx(c.base_scores[m], abs=5e-4)
    # a single offered model is still scored (and chosen)
    one = router.route(QUERIES[0], pool_rb.subset(["claude-v2"]))
    assert one.model_id == "claude-v2"
    assert one.base_scores["claude-v2"] == pytest.approx(
        naive_logp(router.model, router.tokenizer, QUERIES[0], pool_rb.subset(["claude-v2"]), "claude-v2"), abs=5e-4
    )


def test_tau_trades_probability_for_cost(router, pool_rb):
    offered = pool_rb.subset(THREE)
    d0 = router.route(QUERIES[1], offered, tau=0.0)
    costs = normalised_costs(QUERIES[1], offered)
    assert max(costs.values()) == pytest.approx(1.0)
    cheapest = min(costs, key=costs.get)
    big = router.route(QUERIES[1], offered, tau=1e6)
    assert big.model_id == cheapest
    # re-deciding from the stored scores gives what a new pass gives
    assert d0.with_tau(1e6).model_id == cheapest
    assert big.scores[cheapest] == max(big.scores.values())
    assert big.ranked()[0] == cheapest


def test_decide_breaks_ties_towards_the_cheaper_model():
    m, adj = decide({"a": -1.0, "b": -1.0}, {"a": 1.0, "b": 0.2}, 0.0)
    assert m == "b" and adj == {"a": -1.0, "b": -1.0}
    assert decide({"a": -1.0, "b": -1.2}, {"a": 1.0, "b": 0.0}, 0.5)[0] == "b"  # -1.5 < -1.2
    assert decide({"a": -1.0, "b": -1.2}, {"a": 1.0, "b": 0.0}, 0.1)[0] == "a"  # -1.1 > -1.2


def test_adapter_weights_are_really_applied(adapter_dir, tmp_path, pool_rb):
    """A non-zero LoRA update must change the scores (the adapter is attached, not ignored)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from xrouter_lite.assets import smollm2_path

    base = AutoModelForCausalLM.from_pretrained(str(smollm2_path()), dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    torch.manual_seed(0)
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    pm.save_pretrained(str(tmp_path))
    offered = pool_rb.subset(["claude-v1", "mistralai/mistral-7b-chat"])
    moved = LoRARouter(adapter_dir=tmp_path, device="cpu").route(QUERIES[0], offered)
    plain = LoRARouter(adapter_dir=adapter_dir, device="cpu").route(QUERIES[0], offered)
    assert any(abs(moved.base_scores[m] - plain.base_scores[m]) > 1e-3 for m in plain.base_scores)


def test_generate_mode_falls_back_and_counts_invalid_actions(router, pool_rb):
    """The untrained base answers the question instead of calling a tool: every such answer must fall back to
    the configured default model (the cheapest offered one when the default is not offered), be marked invalid
    and be counted; scores exist for every offered model."""
    gen = LoRARouter(model=router.model, tokenizer=router.tokenizer, mode="generate",
                     default_model="mistralai/mistral-7b-chat", max_new_tokens=12)
    offered = pool_rb.subset(THREE)
    sub = pool_rb.subset(["claude-v1", "gpt-3.5-turbo-1106"])
    ds = gen.route_batch([QUERIES[0], QUERIES[1]], [offered, sub])
    for d, off, fb in zip(ds, [offered, sub], ["mistralai/mistral-7b-chat", "gpt-3.5-turbo-1106"]):
        assert d.raw is not None
        try:
            P.parse_action(d.raw, P.build_router_prompt(QUERIES[0], off))
            parsed = True
        except P.ActionParseError:
            parsed = False
        assert d.valid == parsed
        if not d.valid:
            assert d.model_id == fb and d.invalid_reason
        assert set(d.scores) == {s.id for s in off} and all(math.isfinite(v) for v in d.scores.values())
    assert gen.invalid_count == sum(not d.valid for d in ds)


def test_generate_mode_reads_a_valid_tool_call(router, pool_rb):
    """The parsing side of generate mode, with the decoder's text fixed (the model itself is exercised above)."""
    offered = list(pool_rb)

    class Fixed(LoRARouter):
        def _generate_batch(self, prompts, actions):
            texts = [P.action_text("claude-v1") + "<|im_end|>", "<tool_call>\n{\"name\": \"call_nope\"}\n</tool_call>"]
            return texts[: len(prompts)], [[0.0] * len(a) for a in actions]

    r = Fixed(model=router.model, tokenizer=router.tokenizer, mode="generate")
    ok, bad = r.route_batch(QUERIES, [offered, offered])
    assert ok.valid and ok.model_id == "claude-v1"
    assert not bad.valid and bad.invalid_reason.startswith("not_offered")
    assert r.invalid_count == 1 and r.invalid_reasons == {"not_offered": 1}


def test_prompt_over_the_cap_falls_back_never_truncates(router, pool_rb):
    r = LoRARouter(model=router.model, tokenizer=router.tokenizer, max_prompt_tokens=100)
    d = r.route(QUERIES[0], list(pool_rb))
    assert not d.valid and d.invalid_reason.startswith("prompt_too_long")
    assert d.model_id == "mistralai/mistral-7b-chat"  # cheapest by pool prices
    assert r.invalid_count == 1


# ---- baselines ------------------------------------------------------------------------------------------------------


def _lp(pid, ds, prompt, **res):
    return LabeledPrompt(pid, ds, prompt, {m: Outcome(c, cost) for m, (c, cost) in res.items()})


def test_single_random_and_oracle(pool_rb):
    off = pool_rb.subset(["claude-v1", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat"])
    assert SingleModelRouter("claude-v1").route("q", off).model_id == "claude-v1"
    s = SingleModelRouter("gpt-4-1106-preview")
    d = s.route("q", off)
    assert not d.valid and s.invalid_count == 1
    first = RandomRouter(seed=7).route("q", off).model_id
    r1, r2 = RandomRouter(seed=7), RandomRouter(seed=7)
    seq1 = [r1.route("q", off).model_id for _ in range(20)]
    assert seq1 == [r2.route("q", off).model_id for _ in range(20)] and first == seq1[0]
    assert len(set(seq1)) > 1
    table = {
        "p1": {"claude-v1": Outcome(True, 0.01), "gpt-3.5-turbo-1106": Outcome(True, 0.002),
               "mistralai/mistral-7b-chat": Outcome(False, 0.0001)},
        "p2": {"claude-v1": Outcome(False, 0.01), "gpt-3.5-turbo-1106": Outcome(False, 0.002),
               "mistralai/mistral-7b-chat": Outcome(False, 0.0001)},
    }
    o = OracleRouter(table)
    got = o.route_items([RouteItem("x", "p1"), RouteItem("y", "p2")], [off, off])
    assert [d.model_id for d in got] == ["gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat"]
    with pytest.raises(KeyError):
        o.route("no id", off)


def test_best_single_per_dataset(pool_rb):
    train = [
        _lp("a1", "math", "q", **{"claude-v1": (True, 1.0), "mistralai/mistral-7b-chat": (False, 0.1)}),
        _lp("a2", "math", "q", **{"claude-v1": (True, 1.0), "mistralai/mistral-7b-chat": (True, 0.1)}),
        _lp("b1", "chat", "q", **{"claude-v1": (False, 1.0), "mistralai/mistral-7b-chat": (True, 0.1)}),
    ]
    off = pool_rb.subset(["claude-v1", "mistralai/mistral-7b-chat"])
    cost = {"claude-v1": 1.0, "mistralai/mistral-7b-chat": 0.1}
    bs = BestSingleRouter(train, cost_per_query=cost)
    ds = bs.route_items([RouteItem("x", dataset="math"), RouteItem("y", dataset="chat"), RouteItem("z")], [off] * 3)
    # math: 1.0 vs 0.5 -> claude-v1; chat: 0 vs 1 -> mistral; no dataset: pooled 2/3 vs 2/3, a tie -> the cheaper
    assert [d.model_id for d in ds] == ["claude-v1", "mistralai/mistral-7b-chat", "mistralai/mistral-7b-chat"]
    assert bs.accuracies(None) == {"claude-v1": 2 / 3, "mistralai/mistral-7b-chat": 2 / 3}
    # with a cost knob, math moves to the cheap model once 0.5 < tau * (1 - 0.1)
    assert bs.route_items([RouteItem("x", dataset="math")], [off], tau=1.0)[0].model_id == "mistralai/mistral-7b-chat"
    assert bs.choice_per_dataset() == {"chat": "mistralai/mistral-7b-chat", "math": "claude-v1"}


def test_knn_follows_similar_training_prompts(pool_rb):
    maths = ["What is 17 times 23?", "Compute 45 plus 78.", "How much is 12 squared?", "Divide 144 by 12."]
    poems = ["Write a short poem about the sea.", "Compose a haiku about autumn leaves.",
             "Write a limerick about a cat.", "Write a sonnet about love."]
    train = [_lp(f"m{i}", "d", q, **{"claude-v1": (True, 1), "gpt-3.5-turbo-1106": (False, 1)}) for i, q in enumerate(maths)]
    train += [_lp(f"p{i}", "d", q, **{"claude-v1": (False, 1), "gpt-3.5-turbo-1106": (True, 1)}) for i, q in enumerate(poems)]
    knn = KNNRouter(train, k=3)
    off = pool_rb.subset(["claude-v1", "gpt-3.5-turbo-1106"])
    ds = knn.route_batch(["What is 31 times 7?", "Write a poem about mountains."], [off, off])
    assert [d.model_id for d in ds] == ["claude-v1", "gpt-3.5-turbo-1106"]
    assert ds[0].base_scores == {"claude-v1": 1.0, "gpt-3.5-turbo-1106": 0.0}
    # tau large: the cheaper model (gpt-3.5 by pool prices) wins even on maths
    assert knn.route("What is 31 times 7?", off, tau=100).model_id == "gpt-3.5-turbo-1106"


def test_knn_tied_neighbours_vote_the_same_in_a_batch_and_alone():
    """Training questions that share their first max_seq_length word pieces have one embedding, so many neighbours
    tie exactly; a batch's matrix product and one query's round differently in the last bits. The vote (hence the
    decision: evaluation batches, the server asks one at a time) must not depend on that: ties go to training order."""
    import numpy as np

    stem = "Choose the option that fits the blank best in the sentence below, then answer with one letter only. "
    train = [_lp(f"t{i}", "d", stem + f"Case {i}: the trophy does not fit in the suitcase.",
                 **{"claude-v1": (i % 3 == 0, 1), "gpt-3.5-turbo-1106": (i % 2 == 0, 1)}) for i in range(30)]
    knn = KNNRouter(train, k=5, max_seq_length=8)  # 8 word pieces: every question is the same stem
    queries = [stem + f"Query {j}: the ball broke the table." for j in range(40)]
    batch = knn.p_correct(queries)
    assert all(knn.p_correct([q])[0] == b for q, b in zip(queries[:6], batch[:6]))
    # the five earliest training questions vote: t0..t4
    assert batch[0] == {"claude-v1": 2 / 5, "gpt-3.5-turbo-1106": 3 / 5}
    # last-bit noise in the similarities (as another matrix-product shape gives) changes nothing
    rng, q0, e0 = np.random.default_rng(0), knn._embed(queries[:1]), knn.emb.copy()
    for _ in range(5):
        knn.emb = (e0 + rng.normal(0, 1e-8, e0.shape)).astype(np.float32)
        knn._embed = lambda texts: q0 + rng.normal(0, 1e-8, q0.shape).astype(np.float32)
        assert knn.p_correct(["any"])[0] == batch[0]


def test_decision_interface_is_unchanged():
    d = Decision("a", {"a": 0.1, "b": 0.5, "c": 0.3})
    assert d.ranked() == ["a", "b", "c"]


def test_auto_quantization_follows_the_training_run(adapter_dir, tmp_path, pool_rb):
    """A QLoRA adapter (run card: load_in_4bit) gets its 4-bit NF4 base on the CPU too: scoring it on unquantised
    weights shifted RouterBench scores by 10-30 nats and changed cheap-end decisions (docs/BENCHMARKS.md)."""
    import shutil

    from xrouter_lite.router import adapter_quantization, load_router_model

    assert adapter_quantization(adapter_dir) is None  # no run card: the device decides (CPU: unquantised)
    model, _ = load_router_model(adapter_dir=adapter_dir, device="cpu")
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())

    qlora = tmp_path / "qlora"
    shutil.copytree(adapter_dir, qlora)
    (qlora / "run_card.json").write_text(json.dumps({"status": "completed", "config": {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}}))
    assert adapter_quantization(qlora) == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
    model, _ = load_router_model(adapter_dir=qlora, device="cpu")
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    model, _ = load_router_model(adapter_dir=qlora, device="cpu", quantize="none")  # an explicit choice still wins
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())


# ---- static prefix reuse (prefix_cache.py) ---------------------------------------------------------------------------


def test_prefix_reuse_gives_the_scores_of_the_whole_prompt(router, pool_rb):
    """Real SmolLM2: scores with the pool block's KV cached equal those of the whole prompt in one forward, for a
    batch sharing one offered set, mixed offered sets, and questions whose first characters could merge with the
    prefix's last token (leading newline / spaces)."""
    assert router.prefix_scorer is not None  # on by default
    plain = LoRARouter(model=router.model, tokenizer=router.tokenizer, prefix_cache_mb=0)
    assert plain.prefix_scorer is None
    qs = [*QUERIES, "\n\nleading newlines: what is 2+2?", "   spaced out question about tax law", "x"]
    four = pool_rb.subset(["claude-v1", "claude-v2", "gpt-4-1106-preview", "mistralai/mistral-7b-chat"])
    for offered in ([four] * len(qs), [four, pool_rb.subset(THREE), four, pool_rb.subset(THREE), four]):
        reused = router.route_batch(qs, offered)
        whole = plain.route_batch(qs, offered)
        for a, b in zip(reused, whole):
            assert a.model_id == b.model_id
            for m in b.base_scores:
                assert a.base_scores[m] == pytest.approx(b.base_scores[m], abs=5e-4)
    # the question tokens are all that is left per decision: the static prefix is most of the prompt
    p = P.build_router_prompt(QUERIES[0], four)
    ids = P.encode_prompt(router.tokenizer, p)
    m = router.prefix_scorer.finder.reusable_len(p, ids)
    assert ids[:m] == list(router.prefix_scorer.finder.prefix_ids(p)) and m > 0.8 * len(ids)
    assert router.prefix_scorer.cache.hits > 0


def test_prefix_cache_is_bounded_lru(router, pool_rb):
    from xrouter_lite.prefix_cache import PrefixScorer

    entry = router.prefix_scorer.entry_for(router.prefix_scorer.finder.prefix_ids(P.build_router_prompt("q", pool_rb.subset(THREE))))
    small = PrefixScorer(router.model, router.tokenizer, router.pad_id, max_bytes=int(entry.nbytes * 2.5))
    sets = [["claude-v1", "claude-v2"], THREE, ["claude-v2", "gpt-4-1106-preview"], ["claude-v1", "gpt-4-1106-preview"]]
    for ids in sets * 2:
        off = pool_rb.subset(ids)
        p = P.build_router_prompt(QUERIES[0], off)
        small.score([p], [P.encode_prompt(router.tokenizer, p)], [[P.encode_action(router.tokenizer, m) for m in p.offered]])
        assert small.cache.bytes <= small.cache.max_bytes
    st = small.cache.stats()
    assert st["entries"] <= 2 and st["evictions"] >= 2


@pytest.mark.parametrize("which", ["smollm2", "qwen"])
def test_fast_prompt_encoding_gives_the_same_tokens(which, smol_tokenizer, pool_rb):
    """The prefix finder tokenises only the question's part per decision: the ids equal encode_prompt's."""
    from xrouter_lite.prefix_cache import PrefixFinder
    from xrouter_lite.qwen import qwen_tokenizer

    tok = smol_tokenizer if which == "smollm2" else qwen_tokenizer()
    f = PrefixFinder(tok)
    qs = [*QUERIES, " lead space", "\n\nnewlines first", "trailing  \n", "ünïcödé 数学 题", "<|im_end|>x<|im_start|>",
          "", "tab\tsep", [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"},
                          {"role": "user", "content": "now"}]]
    for off in (pool_rb.subset(THREE), list(pool_rb)):
        for q in qs:
            p = P.build_router_prompt(q, off)
            assert f.encode(p) == P.encode_prompt(tok, p), q
        assert f._plan(p) is not None  # the fast path is really taken
    with pytest.raises(P.PromptTooLongError):
        f.encode(P.build_router_prompt(QUERIES[0], list(pool_rb)), max_prompt_tokens=50)


def test_graph_path_layout_gives_the_same_scores(router, pool_rb):
    """The CUDA-graph path's static layout (bucketed shapes, in-graph mask, one input copy), run without a graph
    on the CPU, gives the eager scores."""
    from xrouter_lite.prefix_cache import PrefixScorer

    sc = PrefixScorer(router.model, router.tokenizer, router.pad_id)
    off = pool_rb.subset(THREE)
    for q in QUERIES:
        p = P.build_router_prompt(q, off)
        ids = sc.finder.encode(p)
        acts = [[P.encode_action(router.tokenizer, m) for m in p.offered]]
        entry = sc.entry_for(sc.finder.prefix_ids(p))
        m = sc.finder.reusable_len(p, ids)
        _, _, _, flat, T0, keep0 = PrefixScorer._layout(m, [ids[m:]], acts)
        assert PrefixScorer._sizes([ids[m:]], acts) == (T0, keep0, len(flat[0]))  # the graph's buckets, rows unbuilt
        eager = sc._score_eager(entry, m, [ids[m:]], acts)[0]
        graph = sc._score_graph(entry, m, [ids[m:]], acts)[0]
        assert graph == pytest.approx(eager, abs=5e-4)


# ---- fused kernels (fused.py) -----------------------------------------------------------------------------------------


def test_fused_kernels_are_a_cuda_only_change(router):
    """On the CPU nothing is patched (the default is off there) and an explicit request changes nothing either."""
    from xrouter_lite.fused import fuse_elementwise

    assert router.fused == 0
    before = {id(m): m.forward for m in router.model.modules()}
    assert fuse_elementwise(router.model, rotary=True) == 0
    assert all(m.forward == before[id(m)] for m in router.model.modules())


@pytest.mark.gpu
def test_fused_kernels_keep_the_decisions(pool_rb):
    """CUDA, SmolLM2 in bf16: the fused norms / SiLU gate / rotary move the scores no more than bf16 rounding already
    moves them between two exact paths of the plain kernels (static prefix reused vs the whole prompt in one forward),
    a choice changes only between models within that rounding of each other; every norm and MLP is patched."""
    import torch

    from xrouter_lite.assets import smollm2_path

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    kw = dict(base_model=str(smollm2_path()), device="cuda", quantize="none", dtype="bfloat16", max_prompt_tokens=None)
    offered = [pool_rb] * len(QUERIES)
    plain = LoRARouter(**kw, fuse_kernels=False)
    want = plain.route_batch(QUERIES, offered)  # before the process-wide rotary patch
    whole = LoRARouter(model=plain.model, tokenizer=plain.tokenizer, prefix_cache_mb=0, fuse_kernels=False,
                       max_prompt_tokens=None).route_batch(QUERIES, offered)
    noise = max(abs(a.base_scores[m] - b.base_scores[m]) for a, b in zip(want, whole) for m in a.base_scores)
    fused = LoRARouter(**kw, fuse_kernels=True)
    n_layers = fused.model.config.num_hidden_layers
    assert fused.fused == 2 * n_layers + 1 + n_layers  # two norms a layer + the final norm, one MLP a layer
    got = fused.route_batch(QUERIES, offered)
    moved = max(abs(a.base_scores[m] - b.base_scores[m]) for a, b in zip(want, got) for m in a.base_scores)
    print(f"bf16 noise between the plain paths {noise:.4f}, fused vs plain {moved:.4f}")
    assert moved <= max(2 * noise, 0.05)
    for a, b in zip(want, got):  # a choice may change only between models the plain kernels' rounding also ties
        gap = abs(a.base_scores[a.model_id] - a.base_scores[b.model_id])
        assert a.model_id == b.model_id or gap <= 2 * max(noise, moved)


def test_distinct_action_prefixes_keep_exactly_the_deciding_tokens(pool_rb):
    """Each truncated action is a prefix of its action, differs from every other truncated one, and loses its last
    token's uniqueness when cut one shorter (minimal); on the 11 RouterBench models it keeps ~1/5 of the tokens
    after the shared opening."""
    from xrouter_lite.qwen import qwen_tokenizer

    tok = qwen_tokenizer()
    acts = [P.encode_action(tok, m.id) for m in pool_rb]
    cut = P.distinct_action_prefixes(acts)
    for i, (a, c) in enumerate(zip(acts, cut)):
        assert a[: len(c)] == c
        others = [b for j, b in enumerate(acts) if j != i]
        assert all(b[: len(c)] != c for b in others)  # no other action starts with it
        assert any(b[: len(c) - 1] == c[:-1] for b in others)  # one shorter would not decide
    shared = min(len(a) for a in acts)
    while len({tuple(a[:shared]) for a in acts}) > 1:
        shared -= 1
    assert sum(len(c) - shared for c in cut) * 4 < sum(len(a) - shared for a in acts)
    # an action that is a prefix of another keeps all of it; identical actions are kept whole
    assert P.distinct_action_prefixes([[1, 2], [1, 2, 3], [4]]) == [[1, 2], [1, 2, 3], [4]]
    assert P.distinct_action_prefixes([[1, 2], [1, 2]]) == [[1, 2], [1, 2]]


def test_distinct_scores_are_the_full_scores_without_the_shared_tails(router, pool_rb):
    """score_tokens 'distinct': each candidate's score is exactly the log-probability of its deciding tokens, the
    same with the prefix cache and in one forward over the whole prompt; the full score adds the tail's (<= 0)."""
    offered = pool_rb.subset(THREE)
    fast = LoRARouter(model=router.model, tokenizer=router.tokenizer, score_tokens="distinct")
    whole = LoRARouter(model=router.model, tokenizer=router.tokenizer, score_tokens="distinct", prefix_cache_mb=0)
    assert fast.score_tokens == "distinct" and router.score_tokens == "full"  # a run card-less adapter scores 'full'
    a, b, full = fast.route(QUERIES[1], offered), whole.route(QUERIES[1], offered), router.route(QUERIES[1], offered)
    cut = dict(zip(THREE, P.distinct_action_prefixes([P.encode_action(router.tokenizer, m) for m in THREE])))
    ids = P.encode_prompt(router.tokenizer, P.build_router_prompt(QUERIES[1], offered))
    import torch

    for m in THREE:
        act = P.encode_action(router.tokenizer, m)
        with torch.no_grad():
            lp = router.model(input_ids=torch.tensor([ids + act])).logits[0, len(ids) - 1 :].float().log_softmax(-1)
        per = [float(lp[t, x]) for t, x in enumerate(act)]
        n = len(cut[m])
        assert a.base_scores[m] == pytest.approx(sum(per[:n]), abs=5e-4)
        assert b.base_scores[m] == pytest.approx(sum(per[:n]), abs=5e-4)
        assert full.base_scores[m] == pytest.approx(sum(per), abs=5e-4)
    with pytest.raises(ValueError, match="score_tokens"):
        LoRARouter(model=router.model, tokenizer=router.tokenizer, score_tokens="some")


def test_score_tokens_come_from_the_run_card_and_must_match_the_head(adapter_dir, tmp_path, pool_rb):
    """The adapter's training config says how its router scores (evaluation, fit-head and serving read the same
    run card); a decision head fitted on the other kind of scores is refused with a message naming both."""
    import shutil

    from xrouter_lite.decision import DecisionHead, HeadError
    from xrouter_lite.router import adapter_score_tokens

    d = tmp_path / "a"
    shutil.copytree(adapter_dir, d)
    assert adapter_score_tokens(d) == "full"
    (d / "run_card.json").write_text(json.dumps({"status": "completed", "config": {"score_tokens": "distinct"}}))
    assert adapter_score_tokens(d) == "distinct"
    r = LoRARouter(adapter_dir=d, device="cpu")
    assert r.score_tokens == "distinct"
    models = THREE
    DecisionHead(models=models, coef=[[0.0] * 3 for _ in models], intercept=[0.0] * 3, score_tokens="full").save(d)
    with pytest.raises(HeadError, match="fitted on 'full' scores but this router scores 'distinct'"):
        LoRARouter(adapter_dir=d, device="cpu")
    LoRARouter(adapter_dir=d, device="cpu", use_head=False)  # without the head it loads


def test_packed_flex_batches_give_the_scores_of_the_rows(router, pool_rb):
    """flex_scoring: a batch laid out as one packed sequence over one copy of the prefix (FlexAttention, the CUDA
    default for batches) scores every candidate as the per-decision rows do, full and distinct actions alike, with
    offered sets and question lengths mixed in one batch."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from xrouter_lite.prefix_cache import PrefixScorer

    sc = router.prefix_scorer
    assert sc.flex is False  # CPU: off by default (compiled FlexAttention is a CUDA path)
    flex = PrefixScorer(router.model, router.tokenizer, router.pad_id, flex=True)
    qs = [*QUERIES, "\n\nleading newlines: what is 2+2?", "x", "a longer question " * 12]
    offered = [pool_rb.subset(THREE), pool_rb.subset(THREE), pool_rb.subset(["claude-v1", "gpt-4-1106-preview"]),
               pool_rb.subset(THREE), pool_rb.subset(["claude-v1", "gpt-4-1106-preview"])]
    ps = [P.build_router_prompt(q, off) for q, off in zip(qs, offered)]
    ids = [P.encode_prompt(router.tokenizer, p) for p in ps]
    for cut in (False, True):
        acts = [[P.encode_action(router.tokenizer, m) for m in p.offered] for p in ps]
        if cut:
            acts = [P.distinct_action_prefixes(a) for a in acts]
        a, b = sc.score(ps, ids, acts), flex.score(ps, ids, acts)
        assert flex.flex and flex.flex_failures == 0  # the packed path really ran
        for x, y in zip(a, b):
            assert y == pytest.approx(x, abs=5e-4)


def test_warm_up_runs_the_packed_path_before_any_request(router, pool_rb, monkeypatch):
    """Router.warm_up (the server calls it at start-up): where batches are packed (FlexAttention, CUDA) it decides one
    question, then a batch of two over the offered set and one over a second set, so the kernel compile and the one
    recompilation for a new prefix length happen before serving (29 s + 9 s on an H100 otherwise paid by the first
    requests); elsewhere it decides one question only."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    seen = []
    real = router.route_batch

    def spy(queries, offered, tau=None):
        seen.append([len(o) for o in offered])
        return real(queries, offered, tau)

    monkeypatch.setattr(router, "route_batch", spy)
    off = pool_rb.subset(THREE)
    router.warm_up(off)
    assert seen == [[3]]  # CPU: no packed batches, one decision
    seen.clear()
    monkeypatch.setattr(router.prefix_scorer, "flex", True)
    router.warm_up(off)
    assert seen == [[3], [3] * 4, [2] * 4]  # batches of min(batch_size 4, 8)
    assert router.prefix_scorer.flex and router.prefix_scorer.flex_failures == 0  # the packed path ran and stayed on


def test_packed_trie_runs_each_shared_name_prefix_once(pool_rb):
    """flex_scoring.pack: candidates that share name tokens (claude-*, mistralai/*) share trie nodes, so a decision
    over the 11 RouterBench models runs fewer tokens than one row per candidate, and every candidate's every scored
    token is gathered once at the position of its parent."""
    from xrouter_lite.flex_scoring import pack
    from xrouter_lite.prefix_cache import PrefixScorer
    from xrouter_lite.qwen import qwen_tokenizer

    tok = qwen_tokenizer()
    full = [P.encode_action(tok, m.id) for m in pool_rb]
    for acts in (full, P.distinct_action_prefixes(full)):
        tails = [[11, 12, 13], [21, 22]]
        ids, pos, row, end, (fb, fw, ft, fc) = pack(100, tails, [acts, acts])
        rows = PrefixScorer._layout(100, tails, [acts, acts])
        n_rows = sum(sum(1 for s in r if s != -2) for r in rows[2])
        assert sum(1 for r in row if r >= 0) < n_rows and len(ids) % 128 == 0
        for b in range(2):  # each candidate's tokens after the shared opening, in order
            for j, a in enumerate(acts):
                assert [t for bb, t, c in zip(fb, ft, fc) if bb == b and c == j] == a[len(a) - sum(1 for bb, c in zip(fb, fc) if bb == b and c == j):]
