"""Stage 3 training: packing, equivalence with TRL's DPO loss, tokenisation through prompting.py, the 7B rule,
few-step training on real RouterBench pairs (CPU, bitsandbytes 4-bit), checkpoints, resume and Ctrl-C.

Fast tests use the real SmolLM2-135M-Instruct weights and tokenizer cut to its first layers (same code path,
~8x less compute); the `slow` ones use the whole model."""

from __future__ import annotations

import ast
import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from xrouter_lite import prompting  # noqa: E402
from xrouter_lite.packing import (  # noqa: E402
    CHOSEN,
    IGNORE,
    PAD,
    PREFIX,
    REJECTED,
    PackedPreferenceCollator,
    block_causal_mask,
    pack_pair,
)

torch.set_num_threads(min(2, os.cpu_count() or 1))
LAYERS_FAST = 2


# ---- helpers ------------------------------------------------------------------------------------------------------


def routerbench_pairs(shared_data: Path, pool_rb, n: int, n_offered: int = 2) -> list[dict]:
    """Real pairs: RouterBench MBPP questions (short), chosen = the cheapest model that was right, rejected = a
    model that was wrong, offered = those two (+ more), built by prompting.dpo_example."""
    csv.field_size_limit(10**9)
    ids = pool_rb.ids() if callable(pool_rb.ids) else pool_rb.ids
    out = []
    with open(shared_data / "routerbench" / "mbpp_train.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            try:
                right = {m: float(r[m]) for m in ids}
                cost = {m: float(r[m + "|total_cost"]) for m in ids}
            except (ValueError, KeyError):
                continue
            good = [m for m in ids if right[m] == 1.0]
            bad = [m for m in ids if right[m] == 0.0]
            if not good or not bad:
                continue
            chosen = min(good, key=cost.get)
            rejected = bad[len(out) % len(bad)]
            extra = [m for m in ids if m not in (chosen, rejected)][: n_offered - 2]
            offered = [pool_rb.get(m) for m in [rejected, chosen, *extra]]
            query = ast.literal_eval(r["prompt"])[0]
            out.append(prompting.dpo_example(query, offered, chosen, rejected, prompt_id=r["sample_id"]))
            if len(out) == n:
                break
    assert len(out) == n
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def smol_cut(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's real weights and tokenizer, first LAYERS_FAST layers only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path

    src = smollm2_path()
    out = tmp_path_factory.mktemp("smol_cut")
    model = AutoModelForCausalLM.from_pretrained(str(src), num_hidden_layers=LAYERS_FAST, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def real_pairs(shared_data, pool_rb) -> list[dict]:
    return routerbench_pairs(shared_data, pool_rb, 6)


def small_cfg(model_path: Path, data: Path, out: Path, **kw):
    from xrouter_lite.train import TrainConfig

    base = dict(
        model_name_or_path=str(model_path),
        data_path=str(data),
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=2e-3,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_steps=1,
        report_to=[],
        disable_tqdm=True,
        max_steps=2,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---- packing ------------------------------------------------------------------------------------------------------


def test_pack_pair_layout_and_mask():
    p = pack_pair([11, 12, 13], [21, 22], [31, 32, 33])
    assert p["input_ids"] == [11, 12, 13, 21, 22, 13, 31, 32, 33]
    assert p["position_ids"] == [0, 1, 2, 3, 4, 2, 3, 4, 5]  # both branches restart after the prompt
    assert p["segment_ids"] == [PREFIX, PREFIX, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED, REJECTED]
    assert p["shift_labels"] == [IGNORE, IGNORE, 21, 22, IGNORE, 31, 32, 33, IGNORE]

    batch = PackedPreferenceCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [
            {"prompt_ids": [11, 12, 13], "chosen_ids": [21, 22], "rejected_ids": [31, 32, 33]},
            {"prompt_ids": [5], "chosen_ids": [6], "rejected_ids": [7], "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0},
        ]
    )
    assert batch["input_ids"].shape == (2, 12)  # 9 rounded up to 12
    assert (batch["segment_ids"][0, 9:] == PAD).all()
    mask = block_causal_mask(batch["segment_ids"], "sdpa")[0, 0]
    seg = batch["segment_ids"][0]
    L = mask.shape[0]
    for i in range(L):
        for j in range(L):
            if seg[i] == PAD:
                expect = i == j
            else:
                expect = j <= i and seg[j] != PAD and not (seg[i] == REJECTED and seg[j] == CHOSEN)
            assert bool(mask[i, j]) == expect, (i, j)
    eager = block_causal_mask(batch["segment_ids"], "eager", torch.float32)[0, 0]
    assert (eager[mask] == 0).all() and (eager[~mask] == torch.finfo(torch.float32).min).all()


# ---- tokenisation through prompting.py ----------------------------------------------------------------------------


def test_tokenize_pairs_uses_the_router_prompt(real_pairs, smol_tokenizer, tmp_path):
    from xrouter_lite.train import TrainDataError, read_pairs, tokenize_pairs

    path = write_jsonl(tmp_path / "dpo_train_data.json", real_pairs)
    tok = tokenize_pairs(read_pairs(path), smol_tokenizer, 4096, "skip", str(path))
    assert tok.n_pairs == len(real_pairs)
    for i, row in enumerate(real_pairs):
        p = prompting.prompt_from_example(row)
        assert tok.columns["prompt_ids"][i] == prompting.encode_prompt(smol_tokenizer, p, 4096)
        assert tok.columns["chosen_ids"][i] == prompting.encode_action(smol_tokenizer, row["chosen_model"])
        assert tok.columns["rejected_ids"][i] == prompting.encode_action(smol_tokenizer, row["rejected_model"])
    # SmolLM2's template has no tools support: the tool block must still be in the prompt the model reads
    text = smol_tokenizer.decode(tok.columns["prompt_ids"][0])
    assert "<tools>" in text and prompting.tool_name(real_pairs[0]["chosen_model"]) in text

    # a JSON array file reads the same
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps(real_pairs), encoding="utf-8")
    assert tokenize_pairs(read_pairs(arr), smol_tokenizer, 4096).columns == tok.columns

    # too long: skipped and counted, or refused with the line
    short = min(len(x) for x in tok.columns["prompt_ids"])
    assert tokenize_pairs(read_pairs(path), smol_tokenizer, short).skipped_too_long == len(real_pairs) - 1
    with pytest.raises(TrainDataError, match=r"dpo_train_data.json:\d+: router prompt is \d+ tokens"):
        tokenize_pairs(read_pairs(path), smol_tokenizer, short, "error", str(path))

    # bad rows name the file and the line
    bad = dict(real_pairs[1])
    bad["chosen"] = [{"role": "assistant", "content": "call gpt-4"}]
    p2 = write_jsonl(tmp_path / "bad.json", [real_pairs[0], bad])
    with pytest.raises(TrainDataError, match=r"bad.json:2: the 'chosen' answer"):
        tokenize_pairs(read_pairs(p2), smol_tokenizer, 4096, source=str(p2))
    p3 = tmp_path / "broken.json"
    p3.write_text(json.dumps(real_pairs[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(TrainDataError, match=r"broken.json:2: not valid JSON"):
        tokenize_pairs(read_pairs(p3), smol_tokenizer, 4096, source=str(p3))
    missing = {k: v for k, v in real_pairs[0].items() if k != "tools"}
    with pytest.raises(TrainDataError, match=r"m.json:1: missing field\(s\) \['tools'\]"):
        p4 = write_jsonl(tmp_path / "m.json", [missing])
        tokenize_pairs(read_pairs(p4), smol_tokenizer, 4096, source=str(p4))


# ---- the 7B rule --------------------------------------------------------------------------------------------------


def _qwen2_config(tmp_path: Path, name: str, **kw) -> Path:
    from transformers import Qwen2Config

    d = tmp_path / name
    Qwen2Config(**kw).save_pretrained(d)
    return d


def test_model_size_rule(tmp_path):
    from xrouter_lite.train import ModelTooLargeError, check_model_size

    qwen15 = _qwen2_config(
        tmp_path, "qwen2.5-1.5b", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    )
    assert check_model_size(str(qwen15)) == 1_543_714_304  # Qwen2.5-1.5B-Instruct's published count
    qwen7 = _qwen2_config(
        tmp_path, "qwen2.5-7b", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    )
    with pytest.raises(ModelTooLargeError, match=r"7\.6\dB parameters .* at most 7B parameters \(hard rule"):
        check_model_size(str(qwen7))


def test_train_refuses_a_large_model_before_loading_weights(tmp_path, real_pairs):
    from xrouter_lite.train import ModelTooLargeError, train

    big = _qwen2_config(tmp_path, "big", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    data = write_jsonl(tmp_path / "d.json", real_pairs)
    with pytest.raises(ModelTooLargeError):  # the folder holds no weights and no tokenizer: refused first
        train(small_cfg(big, data, tmp_path / "out"), say=lambda *a: None)
    assert not (tmp_path / "out").exists()


def test_config_file_and_overrides(tmp_path, repo):
    from xrouter_lite.train import TrainConfig, TrainConfigError, parse_overrides

    cfg = TrainConfig.load(repo / "configs" / "train_qwen_4060.yaml", parse_overrides(["lora_r=8", "report_to=[]"]))
    assert (cfg.lora_r, cfg.report_to, cfg.bnb_4bit_quant_type, cfg.optim) == (8, [], "nf4", "paged_adamw_8bit")
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_r: zero\nlearning_rat: 1\n")
    with pytest.raises(TrainConfigError, match=r"bad.yaml: lora_r: .*; learning_rat: unknown key \(did you mean 'learning_rate'\?\)"):
        TrainConfig.load(bad)
    with pytest.raises(TrainConfigError, match="unknown setting 'lora_rank'"):
        parse_overrides(["lora_rank=4"])


def test_script_flags_cover_every_setting(repo):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_dpo_light", repo / "scripts" / "train_dpo_light.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ns = mod.build_parser().parse_args(["--lora-r", "8", "--beta", "0.2", "--report_to", "[]"])
    assert (ns.lora_r, ns.beta, ns.report_to) == ("8", "0.2", "[]")
    from xrouter_lite.train import TrainConfig

    for name in TrainConfig.model_fields:
        assert hasattr(ns, name)


# ---- equivalence with TRL's own DPO loss -------------------------------------------------------------------------


def _equivalence(model_path: Path, pairs: list[dict], tmp_path: Path, loss_type: str, **cfg_kw):
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from xrouter_lite.train import (
        build_trainer, load_model, load_tokenizer, pairs_dataset, resolve_precision, share_whole_prompts, tokenize_pairs,
    )

    cfg = small_cfg(model_path, tmp_path / "unused.json", tmp_path / "eq", load_in_4bit=False, loss_type=loss_type,
                    precompute_ref_log_probs=False, gradient_checkpointing=False, **cfg_kw)
    tok = load_tokenizer(cfg)
    tp = tokenize_pairs(pairs, tok, 4096)
    if cfg.share_scope == "prompt":
        share_whole_prompts(tp)
    ds = pairs_dataset(tp)
    precision = resolve_precision(cfg)
    trainer = build_trainer(cfg, load_model(cfg, precision), tok, ds, precision=precision)
    torch.manual_seed(0)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:  # move the policy away from the reference, else every loss is trivially log(2)
            p.data.normal_(0, 0.02)
    examples = [ds[i] for i in range(len(ds))]
    packed = trainer.data_collator(examples)
    unpacked = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    with torch.no_grad():
        ours = trainer._compute_loss(trainer.model, packed, False)
        ours_m = {k: v[-1] for k, v in trainer._metrics["train"].items() if isinstance(v, list) and v}
        trainer._metrics["train"].clear()
        theirs = DPOTrainer._compute_loss(trainer, trainer.model, unpacked, False)
        theirs_m = {k: v[-1] for k, v in trainer._metrics["train"].items() if isinstance(v, list) and v}
        ref_ours = trainer.compute_ref_log_probs(trainer.model, packed)
        ref_theirs = DPOTrainer.compute_ref_log_probs(trainer, trainer.model, unpacked)
    _equivalence.trainer = trainer
    _equivalence.batch = packed
    return ours, theirs, ours_m, theirs_m, ref_ours, ref_theirs


@pytest.mark.parametrize("loss_type", ["sigmoid", pytest.param("ipo", marks=pytest.mark.slow), pytest.param("hinge", marks=pytest.mark.slow)])
def test_packed_loss_equals_trl_loss(smol_cut, real_pairs, tmp_path, loss_type):
    """Speed is not bought with a different objective: on the same batch, the packed forward gives TRL's own
    DPO loss (TRL's `_compute_loss` on its two-rows-per-pair batch), per-pair log-probs and reference log-probs."""
    ours, theirs, om, tm, ref_o, ref_t = _equivalence(smol_cut, real_pairs[:2], tmp_path, loss_type)
    assert abs(ours.item() - theirs.item()) < 1e-3, (ours.item(), theirs.item())
    assert abs(ours.item() - math.log(2)) > 1e-3 or loss_type != "sigmoid"  # a non-trivial loss was compared
    for key in ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies"):
        assert om[key] == pytest.approx(tm[key], abs=2e-3), key
    for a, b in zip(ref_o, ref_t):
        assert torch.allclose(a, b, atol=2e-3), (a, b)


def test_shared_prefix_batch_gives_trl_loss(smol_cut, shared_data, pool_rb, tmp_path):
    """Pairs of a batch offered the same models share ONE forward of the static prefix (system text + tools):
    one row for those pairs, and still TRL's own DPO loss, per-pair log-probs and reference log-probs on the same
    batch (real SmolLM2 weights, CPU). A pair offered other models gets a row of its own."""
    same = [pool_rb.get(m) for m in ["claude-v1", "claude-v2", "gpt-4-1106-preview", "mistralai/mistral-7b-chat"]]
    rows = routerbench_pairs(shared_data, pool_rb, 4, n_offered=3)
    pairs = [prompting.dpo_example(r["prompt"][-1]["content"], same, m1, m2, prompt_id=str(i))
             for i, (r, (m1, m2)) in enumerate(zip(rows[:3], [("claude-v1", "claude-v2"), ("gpt-4-1106-preview", "claude-v1"),
                                                               ("mistralai/mistral-7b-chat", "gpt-4-1106-preview")]))]
    pairs.insert(1, rows[3])  # another offered set, in the middle of the batch
    from xrouter_lite.train import load_tokenizer, tokenize_pairs

    cfg = small_cfg(smol_cut, tmp_path / "unused.json", tmp_path / "x")
    tok = tokenize_pairs(pairs, load_tokenizer(cfg), 4096)
    pl = tok.columns["prefix_len"]
    assert pl[0] == pl[2] == pl[3] and pl[0] > 0.8 * len(tok.columns["prompt_ids"][0])
    ours, theirs, om, tm, ref_o, ref_t = _equivalence(smol_cut, pairs, tmp_path, "sigmoid")
    assert abs(ours.item() - theirs.item()) < 1e-3, (ours.item(), theirs.item())
    assert abs(ours.item() - math.log(2)) > 1e-3
    for key in ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies"):
        assert om[key] == pytest.approx(tm[key], abs=2e-3), key
    for a, b in zip(ref_o, ref_t):  # per pair, in the batch's order
        assert torch.allclose(a, b, atol=2e-3), (a, b)
    from xrouter_lite.packing import PackedPreferenceCollator

    ex = [{k: tok.columns[k][i] for k in tok.columns} for i in range(4)]
    batch = PackedPreferenceCollator(pad_token_id=0, share_prefix=True)(ex)
    assert batch["input_ids"].shape[0] == 2  # 3 pairs in one row + the other offered set
    plain = PackedPreferenceCollator(pad_token_id=0)(ex)
    assert (batch["segment_ids"] != 3).sum() < 0.6 * (plain["segment_ids"] != 3).sum()  # far fewer tokens


def test_top_layer_lora_shares_the_frozen_trunk(smol_cut, real_pairs, tmp_path):
    """LoRA on the top layer only (lora_top_layers) and the pairs of one question in one row (share_scope: prompt):
    the frozen layers below run once per batch for the policy and the reference, and the loss, log-probs and
    gradients are still TRL's own (real SmolLM2 weights, CPU)."""
    q = real_pairs[0]
    two = [q, {**q, "chosen": q["rejected"], "rejected": q["chosen"],
               "chosen_model": q["rejected_model"], "rejected_model": q["chosen_model"]}, real_pairs[1]]
    ours, theirs, om, tm, ref_o, ref_t = _equivalence(smol_cut, two, tmp_path, "sigmoid", lora_top_layers=1,
                                                      share_scope="prompt")
    trainer, batch = _equivalence.trainer, _equivalence.batch
    assert trainer._trunk_plan() is not None and trainer._trunk_plan()[1] == LAYERS_FAST - 1
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if ".layers.0." in n)
    assert batch["input_ids"].shape[0] == 2  # the two pairs of one question share one row
    assert set(batch["pair_ids"][0].tolist()) - {-1} == {0, 1} and set(batch["pair_ids"][1].tolist()) - {-1} == {2}
    assert abs(ours.item() - theirs.item()) < 1e-3, (ours.item(), theirs.item())
    assert abs(ours.item() - math.log(2)) > 1e-3
    for key in ("logps/chosen", "logps/rejected", "rewards/margins"):
        assert om[key] == pytest.approx(tm[key], abs=2e-3), key
    for a, b in zip(ref_o, ref_t):
        assert torch.allclose(a, b, atol=2e-3), (a, b)

    def grads():
        trainer.model.zero_grad()
        trainer._compute_loss(trainer.model, batch, False).backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.model.train()  # (no dropout in this recipe) checkpointing acts in training mode only
    shared = grads()
    trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules())
    ckpt = grads()  # checkpointing on the adapted layers: the GPU recipe's memory cap, same gradients
    trainer.model.gradient_checkpointing_disable()
    trainer._trunk = None  # the plain path: every layer, twice
    plain = grads()
    assert shared.keys() == plain.keys() == ckpt.keys() and shared
    for n in shared:
        assert torch.allclose(shared[n], plain[n], rtol=1e-3, atol=1e-6), n
        assert torch.allclose(ckpt[n], shared[n], rtol=1e-4, atol=1e-7), n


def test_prompt_grouped_sampler_keeps_a_questions_pairs_together():
    from xrouter_lite.train import PromptGroupedSampler

    prompts = [[1, 2], [3], [1, 2], [4], [3], [1, 2]]
    s = PromptGroupedSampler(prompts, seed=1)
    order = list(s)
    assert sorted(order) == list(range(6)) and len(s) == 6
    runs = [tuple(prompts[i]) for i in order]
    assert len([k for j, k in enumerate(runs) if j == 0 or runs[j - 1] != k]) == 3  # each question once, whole
    s.set_epoch(1)
    assert sorted(s) == list(range(6))


@pytest.mark.slow
def test_packed_loss_equals_trl_loss_full_smollm2(real_pairs, tmp_path):
    from xrouter_lite.assets import smollm2_path

    ours, theirs, om, tm, ref_o, ref_t = _equivalence(smollm2_path(), real_pairs[:2], tmp_path, "sigmoid")
    assert abs(ours.item() - theirs.item()) < 1e-3
    for a, b in zip(ref_o, ref_t):
        assert torch.allclose(a, b, atol=2e-3)


# ---- training on the CPU, bitsandbytes 4-bit ----------------------------------------------------------------------


def _train_and_measure(model_path: Path, pairs: list[dict], tmp_path: Path, steps: int, **kw):
    """Loss and reward margin on the training pairs before and after `steps` optimiser steps."""
    from xrouter_lite.train import build_trainer, load_model, load_tokenizer, pairs_dataset, resolve_precision, tokenize_pairs

    cfg = small_cfg(model_path, tmp_path / "unused.json", tmp_path / "run", max_steps=steps, save_steps=1000, **kw)
    tok = load_tokenizer(cfg)
    ds = pairs_dataset(tokenize_pairs(pairs, tok, 4096))
    precision = resolve_precision(cfg)
    trainer = build_trainer(cfg, load_model(cfg, precision), tok, ds, eval_ds=ds, precision=precision)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    return trainer, before, after


def test_cpu_4bit_training_lowers_the_loss_and_grows_the_margin(smol_cut, real_pairs, tmp_path):
    trainer, before, after = _train_and_measure(smol_cut, real_pairs[:4], tmp_path, steps=3,
                                                gradient_checkpointing_every_n_layers=2)
    base = trainer.model.get_base_model()
    assert base.is_loaded_in_4bit  # bitsandbytes 4-bit on the CPU
    assert [layer.gradient_checkpointing for layer in base.model.layers] == [True, False]  # every 2nd layer
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert after["eval_loss"] < before["eval_loss"] - 0.02, (before, after)
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.05
    assert after["eval_rewards/accuracies"] >= 0.75
    grew = (after["eval_logps/chosen"] - after["eval_logps/rejected"]) - (before["eval_logps/chosen"] - before["eval_logps/rejected"])
    assert grew > 0.5, grew  # the chosen action's log-probability margin over the rejected one grew (nats)
    assert trainer.state.global_step == 3


@pytest.mark.slow
def test_cpu_4bit_training_full_smollm2(real_pairs, tmp_path):
    from xrouter_lite.assets import smollm2_path

    trainer, before, after = _train_and_measure(smollm2_path(), real_pairs[:4], tmp_path, steps=3)
    assert after["eval_loss"] < before["eval_loss"] - 0.01
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"]


@pytest.mark.slow
def test_trl_recipe_trains_too(smol_cut, real_pairs, tmp_path):
    _, before, after = _train_and_measure(smol_cut, real_pairs[:4], tmp_path, steps=3, recipe="trl",
                                          precompute_ref_log_probs=False)
    assert after["eval_loss"] < before["eval_loss"] - 0.02


def test_cpu_4bit_gradients_survive_an_eval_pass(smol_cut, smol_tokenizer):
    """bitsandbytes repacks 4-bit weights for CPU inference after an eval-mode forward, and that layout has no
    backward: the reference pass would silently break training. Gradients must be the same before and after."""
    from peft import get_peft_model

    from xrouter_lite.train import TrainConfig, load_model, lora_config, resolve_precision

    cfg = TrainConfig(model_name_or_path=str(smol_cut))
    model = get_peft_model(load_model(cfg, resolve_precision(cfg)), lora_config(cfg))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)
    x = torch.tensor([smol_tokenizer("a short router prompt, then an answer")["input_ids"]])

    def grads():
        model.train()
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    g1 = grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=x)  # what the reference pass and evaluation do
    g2 = grads()
    for n in g1:
        assert torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-6), n


# ---- long jobs: run card, checkpoints, resume, Ctrl-C ------------------------------------------------------------


def test_run_card_checkpoints_resume_and_ctrl_c(smol_cut, real_pairs, tmp_path):
    from transformers import TrainerCallback

    from xrouter_lite.train import RUN_CARD, TrainConfigError, file_sha256, train

    data = write_jsonl(tmp_path / "dpo_train_data.json", real_pairs[:4])
    out = tmp_path / "run"
    cfg = small_cfg(smol_cut, data, out, max_steps=3, save_steps=10, report_to=["tensorboard"])

    class CtrlCAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    said = []
    r1 = train(cfg, say=said.append, callbacks=[CtrlCAtStep2()])
    assert r1.interrupted and r1.run_card["status"] == "interrupted" and r1.run_card["stopped_at_step"] == 2
    assert any("stop requested" in s for s in said)
    assert (out / "checkpoint-2").is_dir()  # saved although save_steps is 10
    assert (out / "adapter_model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert (out / "ref_logps_train.pt").exists()
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard logs
    card = json.loads((out / RUN_CARD).read_text())
    assert card["data"]["sha256"] == file_sha256(data) and card["data"]["pairs"] == 4
    assert card["config"]["lora_r"] == 16 and card["effective"]["compute_dtype"] == "float32"
    assert card["peak_memory"]["cpu_max_rss_gib"] > 0 and card["wall_time_s"] > 0
    assert {"torch", "transformers", "trl", "peft", "bitsandbytes"} <= set(card["versions"])
    assert "loss" in card["final_metrics"] and "rewards/accuracies" in card["final_metrics"]

    with pytest.raises(TrainConfigError, match="already holds checkpoints"):
        train(cfg, say=lambda *a: None)  # never silently overwrites a run

    said.clear()
    r2 = train(cfg, resume=True, say=said.append)
    assert not r2.interrupted and r2.run_card["status"] == "completed"
    assert r2.run_card["resumed_from"].endswith("checkpoint-2")
    assert r2.run_card["final_metrics"]["global_step"] == 3
    assert any("read from cache" in s for s in said)  # reference log-probs not recomputed on resume
    with pytest.raises(TrainConfigError, match="no checkpoint"):
        train(small_cfg(smol_cut, data, tmp_path / "empty"), resume=True, say=lambda *a: None)


@pytest.mark.slow
def test_data_parallel_two_processes_cpu(smol_cut, real_pairs, tmp_path, repo):
    """The script under a distributed launcher (torchrun here; `accelerate launch` starts the same processes):
    two ranks share the reference pass and train data-parallel."""
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "d.json", real_pairs[:4])
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(repo / "scripts" / "train_dpo_light.py"),
           "--config", str(repo / "configs" / "train_smollm2_cpu.yaml"), "--model_name_or_path", str(smol_cut),
           "--data_path", str(data), "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "1",
           "--gradient_accumulation_steps", "1", "--report_to", "[]", "--disable_tqdm", "true"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    card = json.loads((out / "run_card.json").read_text())
    assert card["effective"]["world_size"] == 2 and card["final_metrics"]["global_step"] == 2
    assert card["final_metrics"]["epoch"] == pytest.approx(1.0)  # 2 steps x 2 ranks x 1 pair = the 4 pairs
