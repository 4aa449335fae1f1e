"""DPO pairs (pairs.py) on the real RouterBench cache (imported with the project's importer), bad input, the CLI,
and TRL's DPOTrainer on the produced file."""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from xrouter_lite.pairs import (
    EVAL_FILE,
    REPORT_FILE,
    TEST_CACHE_FILE,
    TRAIN_FILE,
    PairsConfig,
    PairsInputError,
    load_groups,
    make_pairs,
    run_pairs,
    sample_offered,
    split_prompt_ids,
)
from xrouter_lite.pool import tool_name
from xrouter_lite.prompting import action_text, encode_action, encode_prompt, parse_action, prompt_from_example, render_prompt


def rows_of(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def rb_cache(shared_data, tmp_path_factory) -> Path:
    from xrouter_lite.importers import import_routerbench

    cache = tmp_path_factory.mktemp("rb") / "offline_cache.jsonl"
    import_routerbench(sorted((shared_data / "routerbench").glob("*.csv")), cache)
    return cache


@pytest.fixture(scope="module")
def rb_small(rb_cache, tmp_path_factory) -> Path:
    """Every 7th RouterBench question (all three datasets), for the tests that run the stage several times."""
    keep: dict[str, bool] = {}
    out = tmp_path_factory.mktemp("rb_small") / "offline_cache.jsonl"
    with open(rb_cache, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for line in f:
            pid = json.loads(line)["prompt_id"]
            if keep.setdefault(pid, len(keep) % 7 == 0):
                g.write(line)
    return out


@pytest.fixture(scope="module")
def rb_run(rb_cache, pool_rb, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    cfg = PairsConfig(eval_fraction=0.2, seed=3)
    rep = run_pairs(rb_cache, pool_rb, cfg, out_dir=out)
    return out, rep, cfg


# ---- on the real RouterBench cache --------------------------------------------------------------------------------


def test_split_never_puts_a_prompt_on_both_sides(rb_run, rb_cache):
    out, rep, _ = rb_run
    train, ev = rows_of(out / TRAIN_FILE), rows_of(out / EVAL_FILE)
    train_ids, eval_ids = {r["prompt_id"] for r in train}, {r["prompt_id"] for r in ev}
    test_lines = (out / TEST_CACHE_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    test_ids = {json.loads(line)["prompt_id"] for line in test_lines}
    assert train_ids and eval_ids and not train_ids & eval_ids and not train_ids & test_ids
    assert eval_ids <= test_ids  # test_cache also keeps held-out prompts that gave no pair (all wrong, ties)
    assert len(test_ids) == rep.prompts_eval == round(0.2 * rep.prompts_read)
    # verbatim cache lines, every model of every held-out prompt
    original = set(rb_cache.read_text(encoding="utf-8").splitlines(keepends=True))
    assert set(test_lines) <= original and len(test_lines) == 11 * len(test_ids)
    assert rep.pairs_train == len(train) and rep.pairs_eval == len(ev)


def test_every_row_is_a_valid_pair_among_the_offered_models(rb_run, pool_rb):
    out, rep, cfg = rb_run
    per_router_prompt: Counter = Counter()
    for row in rows_of(out / TRAIN_FILE) + rows_of(out / EVAL_FILE):
        offered = row["offered_models"]
        assert len(offered) >= 2 and len(set(offered)) == len(offered)
        assert row["chosen_model"] in offered and row["rejected_model"] in offered
        tools = json.loads(row["tools"])
        assert [t["function"]["name"] for t in tools] == [tool_name(m) for m in offered]  # exactly the offered
        assert row["reward_chosen"] > row["reward_rejected"] + cfg.margin
        assert row["chosen"] == [{"role": "assistant", "content": action_text(row["chosen_model"])}]
        assert row["rejected"] == [{"role": "assistant", "content": action_text(row["rejected_model"])}]
        assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["role"] == "user"
        per_router_prompt[row["prompt_id"]] += 1  # one subset per prompt by default
    assert max(per_router_prompt.values()) <= cfg.max_pairs_per_prompt
    assert rep.prompts_read == 2205 and rep.prompts_with_pairs == len(per_router_prompt)
    assert rep.no_pair["all_wrong"] >= 54  # the 54 questions no model answered (+ subsets with only wrong models)
    assert rep.router_prompts == rep.router_prompts_with_pairs + sum(rep.no_pair.values())
    assert json.loads((out / REPORT_FILE).read_text())["pairs_total"] == rep.pairs_total


def test_full_pool_best_vs_rest_on_a_hand_checked_row(rb_cache, pool_rb):
    """mbpp.dev.92 (read by hand): WizardLM is the cheapest correct answer; with margin 0.01 it beats the 3 premium
    correct answers and the 4 wrong ones, but not the 3 cheap correct ones (reward gaps < 0.01)."""
    cfg = PairsConfig(subset_mode="full", max_pairs_per_prompt=None)
    g = load_groups(rb_cache, pool_rb)["mbpp-mbpp.dev.92"]
    from xrouter_lite.reward import offered_rewards

    valid = g.valid()
    rewards = offered_rewards(valid, cfg.reward)
    pairs = make_pairs(rewards, {m: c for m, (_, c) in valid.items()}, "best-vs-rest", 0.01, None, random.Random(0))
    assert {a for a, _ in pairs} == {"WizardLM/WizardLM-13B-V1.2"}
    assert {b for _, b in pairs} == {
        "claude-v1", "claude-v2", "gpt-4-1106-preview",
        "meta/llama-2-70b-chat", "mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
    }
    every = make_pairs(rewards, {m: c for m, (_, c) in valid.items()}, "all", 0.01, None, random.Random(0))
    assert set(pairs) <= set(every) and all(rewards[a] > rewards[b] + 0.01 for a, b in every)
    worst = make_pairs(rewards, {m: c for m, (_, c) in valid.items()}, "best-vs-worst", 0.01, None, random.Random(0))
    assert len(worst) == 1 and worst[0][0] == "WizardLM/WizardLM-13B-V1.2" and rewards[worst[0][1]] == 0.0


def test_equal_rewards_never_make_a_pair(rb_cache, pool_rb):
    """arc-challenge.test.1108: claude-v1 and claude-v2 were both correct at exactly the same cost."""
    from xrouter_lite.reward import offered_rewards

    valid = load_groups(rb_cache, pool_rb)["arc-challenge-arc-challenge.test.1108"].valid()
    rewards = offered_rewards(valid, PairsConfig().reward)
    every = make_pairs(rewards, {m: c for m, (_, c) in valid.items()}, "all", 0.0, None, random.Random(0))
    assert ("claude-v1", "claude-v2") not in every and ("claude-v2", "claude-v1") not in every
    assert ("claude-v1", "gpt-4-1106-preview") in every


def test_strategies_and_cap(rb_cache, pool_rb):
    base = dict(subset_mode="full", max_pairs_per_prompt=None)
    reps = {s: run_pairs(rb_cache, pool_rb, PairsConfig(strategy=s, **base)) for s in ("best-vs-rest", "all", "best-vs-worst")}
    assert reps["best-vs-worst"].pairs_total == reps["best-vs-worst"].router_prompts_with_pairs
    assert reps["best-vs-worst"].pairs_total < reps["best-vs-rest"].pairs_total < reps["all"].pairs_total
    capped = run_pairs(rb_cache, pool_rb, PairsConfig(strategy="all", subset_mode="full", max_pairs_per_prompt=3))
    assert capped.pairs_total <= 3 * capped.router_prompts_with_pairs
    assert capped.router_prompts_with_pairs == reps["all"].router_prompts_with_pairs


def test_output_is_seeded_and_independent_of_line_order(rb_small, pool_rb, tmp_path):
    rb_cache = rb_small
    lines = rb_cache.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(1).shuffle(lines)  # the cache stage writes concurrently: a prompt's rows are scattered
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(lines), encoding="utf-8")
    cfg = PairsConfig(eval_fraction=0.1, subsets_per_prompt=2, seed=7)
    run_pairs(rb_cache, pool_rb, cfg, out_dir=tmp_path / "a")
    run_pairs(rb_cache, pool_rb, cfg, out_dir=tmp_path / "a2")
    run_pairs(shuffled, pool_rb, cfg, out_dir=tmp_path / "b")
    run_pairs(rb_cache, pool_rb, PairsConfig(eval_fraction=0.1, subsets_per_prompt=2, seed=8), out_dir=tmp_path / "c")
    a = (tmp_path / "a" / TRAIN_FILE).read_text(encoding="utf-8")
    assert a == (tmp_path / "a2" / TRAIN_FILE).read_text(encoding="utf-8")
    assert sorted(a.splitlines()) == sorted((tmp_path / "b" / TRAIN_FILE).read_text(encoding="utf-8").splitlines())
    assert a != (tmp_path / "c" / TRAIN_FILE).read_text(encoding="utf-8")


def test_offered_subsets(pool_rb, pool18):
    cands = pool_rb.ids
    rng = random.Random(0)
    sizes = Counter(len(sample_offered(cands, pool_rb, PairsConfig(min_offered=3, max_offered=5), rng)) for _ in range(300))
    assert set(sizes) == {3, 4, 5}
    assert sorted(sample_offered(cands, pool_rb, PairsConfig(subset_mode="full"), rng)) == sorted(cands)
    assert sample_offered(cands[:1], pool_rb, PairsConfig(), rng) == []  # fewer than 2 candidates: nothing offered
    # per-tier: round-robin over the tiers, so 5 models from 5 tiers cover every tier
    tiers = {m.tier for m in pool18}
    for _ in range(50):
        offered = sample_offered(pool18.ids, pool18, PairsConfig(subset_mode="per-tier", min_offered=len(tiers), max_offered=len(tiers)), rng)
        assert {pool18.get(m).tier for m in offered} == tiers
    ordered = sample_offered(cands, pool_rb, PairsConfig(subset_mode="full", shuffle_offered=False), rng)
    assert ordered == cands


def test_several_subsets_per_prompt_are_distinct(rb_small, pool_rb, tmp_path):
    rb_cache = rb_small
    rep = run_pairs(rb_cache, pool_rb, PairsConfig(subsets_per_prompt=3, max_offered=4), out_dir=tmp_path)
    subsets = defaultdict(set)
    for row in rows_of(tmp_path / TRAIN_FILE):
        subsets[row["prompt_id"]].add(frozenset(row["offered_models"]))
        assert 2 <= len(row["offered_models"]) <= 4
    assert max(len(s) for s in subsets.values()) == 3
    assert rep.router_prompts == 3 * rep.prompts_read
    full = run_pairs(rb_cache, pool_rb, PairsConfig(subsets_per_prompt=3, subset_mode="full"))
    assert full.router_prompts == full.prompts_read  # only one full subset exists


def test_one_fixed_offered_set_in_a_given_order(rb_small, pool_rb, tmp_path):
    """pairs.offered_models with subset_mode full and no shuffling: every router prompt offers exactly those
    models, in that order (the evaluation's offered set: one static prompt prefix for all the pairs)."""
    four = ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "gpt-4-1106-preview"]
    cfg = PairsConfig(offered_models=four, subset_mode="full", shuffle_offered=False, max_pairs_per_prompt=None,
                      reward={"lam": 0.0})
    rep = run_pairs(rb_small, pool_rb, cfg, out_dir=tmp_path)
    rows = rows_of(tmp_path / TRAIN_FILE)
    assert rows and rep.offered_sizes == {"4": rep.router_prompts}
    for row in rows:
        assert row["offered_models"] == four
        assert {row["chosen_model"], row["rejected_model"]} <= set(four)
        assert row["reward_chosen"] > row["reward_rejected"]  # lam 0: a right answer against a wrong one
    with pytest.raises(ValueError, match="offered_models"):
        run_pairs(rb_small, pool_rb, PairsConfig(offered_models=["no/such-model", four[0]]))


def test_split_is_exact_and_seeded():
    ids = [f"p{i}" for i in range(1000)]
    a = split_prompt_ids(ids, 0.25, 0)
    assert len(a) == 250 and a == split_prompt_ids(reversed(ids), 0.25, 0) and a != split_prompt_ids(ids, 0.25, 1)
    assert split_prompt_ids(ids, 0.0, 0) == set()


# ---- prompts, tokens, loading, TRL ----------------------------------------------------------------------------


def test_rows_render_tokenize_and_round_trip_with_smollm2(rb_run, smol_tokenizer):
    out, _, _ = rb_run
    rows = rows_of(out / TRAIN_FILE)
    for row in rows[:: max(1, len(rows) // 40)]:
        p = prompt_from_example(row)
        text = render_prompt(smol_tokenizer, p)
        assert row["prompt"][1]["content"] in text  # the whole query
        assert all(f'"name": "{tool_name(m)}"' in text for m in row["offered_models"])
        ids = encode_prompt(smol_tokenizer, p)
        for model in (row["chosen_model"], row["rejected_model"]):
            full = smol_tokenizer.decode(ids + encode_action(smol_tokenizer, model))
            assert full.startswith(text)
            assert parse_action(full[len(text):], p) == model


def test_prompt_tokens_are_counted_and_capped_never_truncated(rb_small, pool_rb, smol_tokenizer, tmp_path):
    rb_cache = rb_small
    cfg = PairsConfig(subset_mode="full", max_prompt_tokens=1900)
    rep = run_pairs(rb_cache, pool_rb, cfg, out_dir=tmp_path, tokenizer=smol_tokenizer, tokenizer_name="smollm2")
    assert rep.prompt_tokens["max"] <= 1900 and rep.prompt_tokens["n"] == rep.router_prompts_with_pairs > 0
    assert rep.no_pair["prompt_too_long"] > 0  # full-pool RouterBench prompts run to ~2190 SmolLM2 tokens
    assert any("over the cap of 1900" in e for e in rep.skipped_examples)
    for row in rows_of(tmp_path / TRAIN_FILE)[:50]:
        assert len(encode_prompt(smol_tokenizer, prompt_from_example(row), None)) <= 1900
    with pytest.raises(PairsInputError, match="over the cap"):
        run_pairs(rb_cache, pool_rb, PairsConfig(subset_mode="full", max_prompt_tokens=1900, strict=True), tokenizer=smol_tokenizer)


def test_datasets_loads_the_file(rb_run):
    from datasets import load_dataset

    out, rep, _ = rb_run
    ds = load_dataset("json", data_files=str(out / TRAIN_FILE), split="train")
    assert len(ds) == rep.pairs_train
    for col in ("prompt", "chosen", "rejected", "tools", "prompt_id", "chosen_model", "rejected_model", "reward_chosen", "reward_rejected"):
        assert col in ds.column_names
    assert ds[0]["prompt"][0]["role"] == "system" and ds[0]["chosen"][0]["role"] == "assistant"


def _short_rows(out: Path, n: int) -> list[dict]:
    """The n rows with the shortest prompts (few offered models, short questions): fast on CPU."""
    rows = rows_of(out / TRAIN_FILE)
    return sorted(rows, key=lambda r: len(r["tools"]) + len(r["prompt"][1]["content"]))[:n]


def test_trl_dpo_trainer_takes_the_file_as_is_with_qwen_native_tools(rb_run, tmp_path):
    """A tiny random Qwen2 model with the exact Qwen2.5 tokenizer: DPOTrainer accepts the rows as they are, and
    TRL's own tokenisation of a row (tools column passed to the chat template) is exactly prompting's prompt + the
    action. (A training step with Qwen's 151k vocabulary takes ~45 s on this CPU: see the slow tests.)"""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl import DPOConfig, DPOTrainer

    from xrouter_lite.qwen import qwen_tokenizer

    out, _, _ = rb_run
    tok = qwen_tokenizer()
    rows = _short_rows(out, 2)
    ds = Dataset.from_list(rows)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=4096, tie_word_embeddings=True,
    ))
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no",
        use_cpu=True, max_length=None, logging_steps=1, dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok,
        peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    first = trainer.train_dataset[0]
    p = prompt_from_example(rows[0])
    assert first["prompt_ids"] == encode_prompt(tok, p)  # the tool list is in TRL's prompt
    assert tok.decode(first["chosen_ids"]) == action_text(rows[0]["chosen_model"]) + "<|im_end|>\n"
    assert first["chosen_ids"][: len(encode_action(tok, rows[0]["chosen_model"]))] == encode_action(tok, rows[0]["chosen_model"])
    assert tok.decode(first["rejected_ids"]) == action_text(rows[0]["rejected_model"]) + "<|im_end|>\n"


@pytest.mark.slow
def test_trl_dpo_trainer_one_step_real_smollm2_lora(rb_run, tmp_path):
    """The real SmolLM2-135M-Instruct with a tiny LoRA, one DPO step on rows of the file (CPU, ~30-60 s).
    SmolLM2's template ignores tools=, so TRL's own rendering drops the tool list for it: the training stage renders
    with prompting.render_prompt instead. This test only proves the file is accepted and trains."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from xrouter_lite.assets import smollm2_path

    out, _, _ = rb_run
    small = tmp_path / "few.json"
    small.write_text("".join(json.dumps(r) + "\n" for r in _short_rows(out, 2)), encoding="utf-8")
    ds = load_dataset("json", data_files=str(small), split="train")
    tok = AutoTokenizer.from_pretrained(str(smollm2_path()))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path()))
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[], save_strategy="no",
        use_cpu=True, max_length=None, logging_steps=1, dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)


# ---- bad input --------------------------------------------------------------------------------------------------


def _rec(pid, model, correct=True, cost=0.001, **kw):
    d = {"prompt_id": pid, "dataset": "t", "prompt": f"question {pid}", "reference": "1", "model_name": model,
         "response": "1", "is_correct": correct, "token_usage": {"prompt_tokens": 1, "completion_tokens": 1},
         "cost": cost, "latency_s": 0.1, "error": None}
    d.update(kw)
    return json.dumps(d)


def _bad_cache(tmp_path: Path) -> Path:
    A, B, C = "mistralai/mistral-7b-chat", "gpt-4-1106-preview", "claude-v2"
    lines = [
        _rec("p1", A, True, 0.0001),                      # 1
        _rec("p1", B, True, 0.005),                       # 2
        _rec("p1", B, False, 0.005),                      # 3 duplicate: the last answer (wrong) is kept
        '{"prompt_id": "p1", "model_name": "x"}',         # 4 missing fields
        _rec("p1", C, True, float("nan")),                # 5 NaN cost (json.dumps writes NaN)
        _rec("p2", A, True, -0.001),                      # 6 negative cost
        _rec("p2", "gpt-99", True, 0.001),                # 7 unknown model
        _rec("p2", B, None, 0.001),                       # 8 is_correct null without error
        _rec("p2", A, None, 0.0, error="timeout"),        # 9 errored call: left out, not bad input
        _rec("p2", B, False, 0.004),                      # 10
        _rec("p2", A, True, 0.0002),                      # 11 successful retry of line 9
        _rec("p3", A, None, 0.0, error="HTTP 500"),       # 12 errored, never retried
        _rec("p3", B, False, 0.004),                      # 13 -> p3 has one valid answer: too few models
        _rec("p4", A, False, 0.0001),                     # 14
        _rec("p4", B, False, 0.004),                      # 15 -> p4 all wrong
        json.dumps({**json.loads(_rec("p4", C, True, 0.004)), "prompt": "another text"}),  # 16 prompt mismatch
        "not json at all",                                # 17 malformed
    ]
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + '\n{"prompt_id": "p5", "datas', encoding="utf-8")  # torn last line
    return p


def test_bad_input_is_skipped_and_counted_with_line_numbers(tmp_path, pool_rb):
    cache = _bad_cache(tmp_path)
    rep = run_pairs(cache, pool_rb, PairsConfig(subset_mode="full", eval_fraction=0.5, seed=0), out_dir=tmp_path / "o")
    assert rep.skipped_lines == {
        "duplicate": 1, "malformed": 2, "bad_cost": 2, "unknown_model": 1, "no_correctness": 1, "prompt_mismatch": 1,
    }
    text = "\n".join(rep.skipped_examples)
    for where in (":3: duplicate", ":4: missing field", ":5: cost must be", ":6: cost must be", ":7: model 'gpt-99'",
                  ":8: is_correct is null", ":16: prompt_id 'p4'", ":17: not valid JSON"):
        assert f"{cache}{where}" in text, where
    assert rep.torn_last_line
    assert rep.errored_calls_left_out == 1 and rep.retried_errors_replaced == 1
    assert rep.prompts_read == 4 and rep.prompts_too_few_models == 1
    assert rep.no_pair == {"all_wrong": 1}
    # p1: mistral (correct) beats gpt-4 (wrong: line 3 replaced line 2); p2: the retried mistral beats a wrong gpt-4
    rows = rows_of(tmp_path / "o" / TRAIN_FILE) + rows_of(tmp_path / "o" / EVAL_FILE)
    assert sorted((r["prompt_id"], r["chosen_model"], r["rejected_model"]) for r in rows) == [
        ("p1", "mistralai/mistral-7b-chat", "gpt-4-1106-preview"),
        ("p2", "mistralai/mistral-7b-chat", "gpt-4-1106-preview"),
    ]
    # the held-out prompts' lines are the kept ones (the retry, not the error; not the skipped lines)
    held = [json.loads(line) for line in (tmp_path / "o" / TEST_CACHE_FILE).read_text().splitlines()]
    assert len({h["prompt_id"] for h in held}) == 2
    groups = load_groups(cache, pool_rb)
    assert groups["p1"].outcomes["gpt-4-1106-preview"] == (False, 0.005, 3)  # the last of two answers
    assert groups["p2"].outcomes["mistralai/mistral-7b-chat"] == (True, 0.0002, 11)  # the retry, not the error
    assert groups["p3"].outcomes["mistralai/mistral-7b-chat"].correct is None  # errored: left out of the rewards
    assert all(h["cost"] >= 0 and h["model_name"] != "gpt-99" for h in held)


@pytest.mark.parametrize("lines,match", [
    ([_rec("p1", "claude-v2"), _rec("p1", "claude-v2", False)], r"bad\.jsonl:2: duplicate"),
    ([_rec("p1", "claude-v2"), _rec("p1", "claude-v1", cost=-1.0)], r"bad\.jsonl:2: cost must be"),
    ([_rec("p1", "claude-v2"), '{"prompt_id": "p1"}'], r"bad\.jsonl:2: missing field"),
    ([_rec("p1", "gpt-99")], r"bad\.jsonl:1: model 'gpt-99' is not in the pool"),
])
def test_strict_fails_at_the_first_bad_line(tmp_path, pool_rb, lines, match):
    cache = tmp_path / "bad.jsonl"
    cache.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PairsInputError, match=match):
        run_pairs(cache, pool_rb, PairsConfig(strict=True), out_dir=tmp_path / "o")
    assert not (tmp_path / "o" / TRAIN_FILE).exists()


def test_interrupted_run_keeps_earlier_outputs(rb_cache, pool_rb, tmp_path):
    run_pairs(rb_cache, pool_rb, PairsConfig(), out_dir=tmp_path)
    before = (tmp_path / TRAIN_FILE).read_bytes()
    calls = 0

    def stop():
        nonlocal calls
        calls += 1
        if calls == 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pairs(rb_cache, pool_rb, PairsConfig(seed=5), out_dir=tmp_path, on_prompt=stop)
    assert (tmp_path / TRAIN_FILE).read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


# ---- config and CLI -------------------------------------------------------------------------------------------


def test_config_file_and_overrides(repo, tmp_path):
    cfg = PairsConfig.from_yaml(repo / "configs" / "pairs.yaml")
    assert cfg == PairsConfig()  # the example file holds the defaults
    cfg = PairsConfig.from_yaml(repo / "configs" / "pairs.yaml", lam=0.2, strategy="all", cost_unit=None)
    assert cfg.reward.lam == 0.2 and cfg.reward.cost_unit == "normalized" and cfg.strategy == "all"
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: best-vs-everything\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: strategy"):
        PairsConfig.from_yaml(bad)
    bad.write_text("reward: {lam: 0.1, cost_max: 3}\n")
    with pytest.raises(ValueError, match="cost_max"):
        PairsConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="max_offered"):
        PairsConfig(min_offered=4, max_offered=3)


def test_cli_pairs(rb_cache, tmp_path, repo):
    from typer.testing import CliRunner

    from xrouter_lite.cli import app

    runner = CliRunner()
    res = runner.invoke(app, [
        "pairs", str(rb_cache), "--pool", str(repo / "configs" / "pool_routerbench.yaml"), "-o", str(tmp_path),
        "--eval-fraction", "0.1", "--strategy", "best-vs-worst", "--lambda", "0.2", "--tokenizer", "none",
    ])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / REPORT_FILE).read_text())
    assert rep["config"]["strategy"] == "best-vs-worst" and rep["config"]["reward"]["lam"] == 0.2
    assert rep["pairs_total"] == rep["router_prompts_with_pairs"]
    assert (tmp_path / TEST_CACHE_FILE).exists()
    res = runner.invoke(app, ["pairs", str(rb_cache), "--pool", str(repo / "configs" / "pool_routerbench.yaml"),
                              "--cost-unit", "dollars", "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "cost_unit" in res.output
    res = runner.invoke(app, ["pairs", str(rb_cache), "--pool", str(repo / "configs" / "pool.yaml"), "-o",
                              str(tmp_path / "y"), "--tokenizer", "none"])
    assert res.exit_code == 1 and "wrong --pool" in res.output


# ---- partial rows: a cost-ordered cache (xrouter_lite.traversal) -----------------------------------------------------


@pytest.fixture(scope="module")
def rb_cost_ordered(rb_small, pool_rb, tmp_path_factory) -> Path:
    from xrouter_lite.traversal import simulate_traversal

    out = tmp_path_factory.mktemp("co") / "cost_ordered.jsonl"
    simulate_traversal(rb_small, pool_rb, "cost-ordered", explore=0.1, seed=0, out=out)
    return out


def test_partial_rows_give_only_known_pairs_with_lambda_0(rb_cost_ordered, pool_rb, tmp_path):
    groups = load_groups(rb_cost_ordered, pool_rb)
    cfg = PairsConfig.from_dict({"subset_mode": "full", "max_pairs_per_prompt": None}, lam=0.0)
    rep = run_pairs(rb_cost_ordered, pool_rb, cfg, out_dir=tmp_path)
    assert rep.prompts_partial > 0 and rep.prompts_explored > 0
    assert "implied_over_skipped" not in rep.pairs_by_kind  # lambda 0: a skipped model might tie; nothing implied
    assert sum(rep.pairs_by_kind.values()) == rep.pairs_total
    for row in rows_of(tmp_path / TRAIN_FILE):
        g = groups[row["prompt_id"]]
        unknown = g.unknown()
        assert row["chosen_model"] not in unknown and row["rejected_model"] not in unknown
        assert g.outcomes[row["chosen_model"]].correct and not g.outcomes[row["rejected_model"]].correct
        # a skipped model is offered (the router sees the whole pool) but never labelled
        assert len(row["offered_models"]) == len(pool_rb)


def test_partial_rows_imply_cheaper_correct_over_skipped_with_lambda(rb_cost_ordered, pool_rb, tmp_path):
    groups = load_groups(rb_cost_ordered, pool_rb)
    cfg = PairsConfig.from_dict({"subset_mode": "full", "max_pairs_per_prompt": None, "strategy": "best-vs-rest"}, lam=0.5)
    rep = run_pairs(rb_cost_ordered, pool_rb, cfg, out_dir=tmp_path)
    assert rep.pairs_by_kind["implied_over_skipped"] > 0
    n_implied = 0
    for row in rows_of(tmp_path / TRAIN_FILE):
        g = groups[row["prompt_id"]]
        assert row["chosen_model"] not in g.unknown()  # never "chosen" without a label
        if row["rejected_model"] in g.unknown():
            n_implied += 1
            assert g.outcomes[row["chosen_model"]].correct
            assert row["cost_rejected"] > row["cost_chosen"]
    assert n_implied > 0


@pytest.mark.parametrize("strategy,lam,match", [("best-vs-worst", 0.1, "worst model"), ("best-vs-rest", 0.0, "lambda 0")])
def test_strategies_needing_unknown_labels_are_refused(rb_cost_ordered, pool_rb, tmp_path, strategy, lam, match):
    cfg = PairsConfig.from_dict({"strategy": strategy}, lam=lam)
    with pytest.raises(PairsInputError, match=match):
        run_pairs(rb_cost_ordered, pool_rb, cfg, out_dir=tmp_path)
    assert not (tmp_path / TRAIN_FILE).exists()


def test_a_full_cache_gives_the_same_pairs_as_before(rb_small, pool_rb, tmp_path):
    rep = run_pairs(rb_small, pool_rb, PairsConfig(), out_dir=tmp_path)
    assert rep.prompts_partial == 0 and set(rep.pairs_by_kind) == {"full_rows"}
