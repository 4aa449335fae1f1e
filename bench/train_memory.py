"""Stage 4 benchmark: peak GPU memory and pairs/s of QLoRA DPO steps, our recipe against TRL's plain recipe.

    python bench/train_memory.py                 # CUDA: the full matrix on the Qwen2.5-1.5B-Instruct architecture
    python bench/train_memory.py --tiny          # CPU smoke run: a tiny Qwen2-shaped model, two short lengths
    python bench/train_memory.py --lengths 2048 --variants plain,ours --steps 5

The model is Qwen2.5-1.5B-Instruct's exact architecture (config written by hand: the Hub is unreachable) with
random weights, loaded 4-bit NF4 (double quantisation, bf16 compute) through ``xrouter_lite.train.load_model``,
LoRA r=16 on every linear layer. Pairs are router-shaped: a prompt of exactly N tokens and two short tool-call
answers (20-29 tokens: the Qwen2.5 token lengths of the real ``prompting.encode_action`` texts of the RouterBench
models).

Variants (same model, quantisation and LoRA):
- ``plain``: TRL's DPOTrainer with its defaults (two rows per pair, reference forward with the adapter disabled
  at every step, gradient checkpointing, bf16), except ``max_length=None`` so a long prompt is not truncated;
- ``ours``: ``xrouter_lite.train`` defaults: packed pairs (prompt once for both answers, block attention mask),
  log-probs at answer positions only, reference log-probs precomputed once, gradient checkpointing,
  paged 8-bit AdamW, length grouping;
- ``ours-otf``: ours with the reference computed on the fly (adapter disabled) instead of precomputed;
- ``ours-ckpt2``: ours checkpointing every 2nd decoder layer only (less recompute, more memory);
- ``ours-nockpt``: ours without gradient checkpointing.
The ablations (otf, ckpt2, nockpt) run at ``--ablation-lengths`` only (default 2048 and 4096).

Each cell runs ``--warmup`` steps then ``--steps`` timed steps (CUDA-synchronised); a row (variant x length) stops
at the first batch size whose peak ``torch.cuda.max_memory_reserved`` exceeds ``--cap-gib`` or that runs out of
memory. The reference pass of ``ours`` is timed on its own (``--ref-batch`` pairs per forward) and reported per
length; "incl. ref" pairs/s amortises it over one epoch: 1 / (1/train + 1/ref). Also printed: our DPO loss against
TRL's ``_compute_loss`` on one identical batch (LoRA B randomised so the loss is not trivially log 2).

Needs only torch, transformers, peft, trl, bitsandbytes, datasets, accelerate and this repository. Writes
``train_memory.json`` to ``$OUT`` if set, else ``./bench_out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

# Qwen2.5-1.5B-Instruct's config.json, by hand
QWEN25_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
    max_window_layers=21,
    hidden_act="silu",
    bos_token_id=151643,
    eos_token_id=151645,
)
TINY = dict(QWEN25_15B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=151936)
# Qwen2.5 token lengths of prompting.encode_action(tok, m) for the 11 RouterBench models (action text + <|im_end|>)
ACTION_LENGTHS = [29, 22, 20, 20, 29, 25, 26, 25, 26, 28, 26]
PAD_ID, EOS_ID = 151643, 151645
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30


def log(*a):
    print(*a, flush=True)


def make_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(WordLevel({"<unk>": 0, "<|endoftext|>": PAD_ID, "<|im_end|>": EOS_ID}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>")


def make_pairs(prompt_len: int, n: int, seed: int = 0, vocab: int = 151936, eos_id: int = EOS_ID):
    """Router-shaped pairs: a prompt of exactly ``prompt_len`` ids, two answers sharing the tool-call opening."""
    from datasets import Dataset

    from xrouter_lite.packing import packed_length

    g = torch.Generator().manual_seed(seed + prompt_len)
    hi = min(vocab, 150000)

    def ids(k):
        return torch.randint(100, hi, (k,), generator=g).tolist()

    opening = ids(8)  # '<tool_call>\n{"name": "call_' in common
    cols = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "length": []}
    for i in range(n):
        p = ids(prompt_len)
        lc, lr = ACTION_LENGTHS[i % 11], ACTION_LENGTHS[(i + 4) % 11]
        c = opening + ids(lc - 9) + [eos_id]
        r = opening + ids(lr - 9) + [eos_id]
        cols["prompt_ids"].append(p)
        cols["chosen_ids"].append(c)
        cols["rejected_ids"].append(r)
        cols["length"].append(packed_length(len(p), len(c), len(r)))
    return Dataset.from_dict(cols)


def real_question_lengths() -> list[int]:
    """Qwen2.5 token lengths of the built-in example's RouterBench questions (data/examples), in file order."""
    import csv

    from xrouter_lite.qwen import qwen_tokenizer

    csv.field_size_limit(10**9)
    tok = qwen_tokenizer()
    out = []
    with open(REPO / "data" / "examples" / "routerbench_sample.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            q = r.get("prompt") or ""
            try:
                import ast

                v = ast.literal_eval(q)
                q = v[0] if isinstance(v, list) and v else q
            except (ValueError, SyntaxError):
                pass
            out.append(len(tok(str(q), add_special_tokens=False)["input_ids"]))
    return out


# static prefix lengths (system text + tool block, Qwen2.5 tokens) of the real router prompt: 11 RouterBench models,
# 18 models of configs/pool.yaml (bench/route_latency.py --prefix-reuse prints them: 1426 and 2217)
SHAPES = {"rb11": 1426, "pool18": 2217}


def make_shape_pairs(shape: str, n: int, qlens: list[int], seed: int = 0, vocab: int = 151936, eos_id: int = EOS_ID,
                     max_q: int = 1024):
    """Router pairs of the real shape: every pair offered the whole pool (the same static prefix of SHAPES[shape]
    tokens), then a question of a real length (cycled from ``qlens``, capped at ``max_q``), the 5-token turn change,
    two tool-call answers. ``prefix_len`` marks the shared part (as ``train.tokenize_pairs`` does)."""
    from datasets import Dataset

    from xrouter_lite.packing import packed_length

    P = SHAPES[shape]
    g = torch.Generator().manual_seed(seed + P)
    hi = min(vocab, 150000)

    def ids(k):
        return torch.randint(100, hi, (k,), generator=g).tolist()

    prefix, turn, opening = ids(P), ids(5), ids(8)
    cols = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "length": [], "prefix_len": []}
    for i in range(n):
        p = prefix + ids(max(1, min(max_q, qlens[i % len(qlens)]))) + turn
        lc, lr = ACTION_LENGTHS[i % 11], ACTION_LENGTHS[(i + 4) % 11]
        c = opening + ids(lc - 9) + [eos_id]
        r = opening + ids(lr - 9) + [eos_id]
        cols["prompt_ids"].append(p)
        cols["chosen_ids"].append(c)
        cols["rejected_ids"].append(r)
        cols["length"].append(packed_length(len(p), len(c), len(r)))
        cols["prefix_len"].append(P)
    return Dataset.from_dict(cols)


def save_random_model(cfg_kwargs: dict, path: Path, device: str) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**cfg_kwargs)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def reset_base(model):
    """Back to the bare quantised model after a trainer: drop LoRA, TRL's forward patch, hooks, checkpointing."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.unload()
    if "forward" in model.__dict__:
        del model.forward
    try:
        model.disable_input_require_grads()
    except Exception:
        pass
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    return model


class StepTimer:
    def __init__(self, device: str):
        from transformers import TrainerCallback

        self.device = device
        self.times: list[float] = []
        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer._sync()
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer._sync()
                timer.times.append(time.perf_counter() - timer._t0)

        self.callback = _CB()

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


def peak_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_reserved() / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def clean(device: str):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build(variant: str, model, tok, ds, batch: int, steps: int, out_dir: str, precision, ref_batch: int,
          ref_key: str | None, callbacks):
    from transformers.trainer_callback import PrinterCallback

    common = dict(output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                  max_steps=steps, report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True)
    trainer = _build(variant, model, tok, ds, batch, steps, out_dir, precision, ref_batch, ref_key, callbacks, common)
    trainer.remove_callback(PrinterCallback)  # keep the output to the table
    return trainer


def _build(variant, model, tok, ds, batch, steps, out_dir, precision, ref_batch, ref_key, callbacks, common):
    from xrouter_lite.train import RouterDPOTrainer, TrainConfig, build_trainer, lora_config

    if variant == "plain":
        from trl import DPOConfig

        args = DPOConfig(max_length=None, bf16=precision.name == "bfloat16", use_cpu=precision.device == "cpu",
                         **common)
        cfg = TrainConfig(lora_target_modules=LORA_TARGETS)
        return RouterDPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                peft_config=lora_config(cfg), callbacks=callbacks, packed=False)
    # ours-shared-topK[c]: LoRA on the top K layers only; the frozen trunk runs once per batch for the policy and the
    # reference (reference on the fly, inside the step); "c": gradient checkpointing on the K adapted layers
    top = int(variant.rsplit("-top", 1)[1].rstrip("c")) if "-top" in variant else None
    cfg = TrainConfig(
        model_name_or_path="bench",
        output_dir=out_dir,
        share_prefix=variant.startswith("ours-shared"),
        lora_top_layers=top,
        lora_target_modules=LORA_TARGETS,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        max_steps=steps,
        precompute_ref_log_probs=variant != "ours-otf" and top is None,
        precompute_ref_batch_size=ref_batch,
        gradient_checkpointing=variant != "ours-nockpt" and (top is None or variant.endswith("c")),
        gradient_checkpointing_every_n_layers=int(variant[len("ours-ckpt"):]) if variant.startswith("ours-ckpt") else 1,
        report_to=[],
        disable_tqdm=True,
    )
    return build_trainer(cfg, model, tok, ds, precision=precision, callbacks=callbacks, ref_cache_key=ref_key,
                         save_strategy="no", logging_steps=10**6, report_to="none")


def sdpa_check(device: str, prompt_len: int) -> str:
    """Which fused SDPA kernel accepts the packed layout's boolean 4D mask (else PyTorch falls back to the
    quadratic-memory math kernel)."""
    if device != "cuda":
        return "n/a (cpu)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from xrouter_lite.packing import PackedPreferenceCollator, block_causal_mask

    ex = {"prompt_ids": [5] * prompt_len, "chosen_ids": [6] * 25, "rejected_ids": [7] * 22}
    b = PackedPreferenceCollator(pad_token_id=0, pad_to_multiple_of=16)([ex, ex])
    mask = block_causal_mask(b["segment_ids"].cuda(), "sdpa")
    L = mask.shape[-1]
    q = torch.randn(2, 12, L, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 12, L, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ok = []
    for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask).sum().backward()
            ok.append(name)
        except RuntimeError:
            pass
        q.grad = k.grad = None
    return ",".join(ok) or "none (math fallback)"


def layout_ab(model, tok, ds, precision, out_dir, reps: int, device: str):
    """Interleaved A/B on ONE pair, ``reps`` rounds after a warm-up round (robust to load drift):
    ``layout``: policy forward+backward, no checkpointing, TRL's two rows vs our packed row;
    ``step``: the compute of a training step per pair, with gradient checkpointing: TRL = policy on two rows +
    reference forward on two rows, ours = policy on the packed row (reference precomputed). Min and median s."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from xrouter_lite.packing import sequence_logps
    from xrouter_lite.train import TrainConfig, build_trainer

    cfg = TrainConfig(model_name_or_path="bench", output_dir=out_dir, lora_target_modules=LORA_TARGETS,
                      per_device_train_batch_size=1, precompute_ref_log_probs=False, report_to=[])
    trainer = build_trainer(cfg, model, tok, ds, precision=precision, save_strategy="no", report_to="none")
    dev = trainer.accelerator.device
    ex = [ds[0]]
    packed = {k: v.to(dev) for k, v in trainer.data_collator(ex).items()}
    un = {k: v.to(dev) for k, v in DataCollatorForPreference(pad_token_id=tok.pad_token_id)(ex).items()}
    labels = un["input_ids"].masked_fill(un["completion_mask"] == 0, -100)
    m = trainer.model
    m.train()

    def two_rows():
        out = m(input_ids=un["input_ids"], attention_mask=un["attention_mask"], labels=labels, fused_lm_head=True)
        return out.log_probs.sum()

    def one_row():
        out = trainer._packed_forward(m, packed)
        c, r = sequence_logps(out.log_probs, packed["shift_labels"], packed["segment_ids"])
        return (c + r).sum()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def policy(f):
        with trainer.accelerator.autocast():
            loss = f()
        loss.backward()
        m.zero_grad(set_to_none=True)

    def trl_step():  # TRL's step: policy on two rows (checkpointed) + reference forward on two rows
        policy(two_rows)
        with torch.no_grad(), m.disable_adapter(), trainer.accelerator.autocast():
            two_rows()

    def packed_step():  # ours: policy on one packed row (checkpointed); the reference was precomputed
        policy(one_row)

    rounds = {
        "layout": (("trl_two_rows", lambda: policy(two_rows)), ("packed_one_row", lambda: policy(one_row))),
        "step": (("trl_step", trl_step), ("packed_step", packed_step)),
    }
    res: dict = {}
    for what, pair in rounds.items():
        if what == "step":
            m.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        times: dict[str, list[float]] = {name: [] for name, _ in pair}
        for i in range(reps + 1):
            for name, f in pair:
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                if i > 0:  # the first round warms up
                    times[name].append(time.perf_counter() - t0)
        r = {k: {"min_s": round(min(v), 4), "median_s": round(statistics.median(v), 4)} for k, v in times.items()}
        a, b = (name for name, _ in pair)
        r["speedup_min"] = round(r[a]["min_s"] / r[b]["min_s"], 2)
        r["speedup_median"] = round(r[a]["median_s"] / r[b]["median_s"], 2)
        res[what] = r
    res["tokens"] = {"trl_two_rows": int(un["attention_mask"].sum()), "packed_one_row": int((packed["segment_ids"] != 3).sum())}
    return res, reset_base(trainer.model)


def loss_check(model, tok, ds, precision, out_dir):
    """Our packed DPO loss vs TRL's `_compute_loss` on the same batch of 2 pairs (4-bit, LoRA B randomised)."""
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from xrouter_lite.train import TrainConfig, build_trainer

    cfg = TrainConfig(model_name_or_path="bench", output_dir=out_dir, lora_target_modules=LORA_TARGETS,
                      per_device_train_batch_size=2, precompute_ref_log_probs=False, report_to=[], share_prefix=False)
    trainer = build_trainer(cfg, model, tok, ds, precision=precision, save_strategy="no", report_to="none")
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:
            p.data.copy_((torch.randn(p.shape, generator=g) * 0.01).to(p.dtype))
    examples = [ds[i] for i in range(2)]
    dev = trainer.accelerator.device
    packed = {k: v.to(dev) for k, v in trainer.data_collator(examples).items()}
    unpacked = {k: v.to(dev) for k, v in DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples).items()}
    trainer.model.train()
    from xrouter_lite.packing import PackedPreferenceCollator

    shared = {k: v.to(dev) for k, v in PackedPreferenceCollator(tok.pad_token_id, 16, share_prefix=True)(examples).items()}
    singles = [{k: v.to(dev) for k, v in DataCollatorForPreference(pad_token_id=tok.pad_token_id)([e]).items()} for e in examples]
    with torch.no_grad(), trainer.accelerator.autocast():
        ours = trainer._compute_loss(trainer.model, packed, False).item()
        ours_shared = trainer._compute_loss(trainer.model, shared, False).item()
        theirs = DPOTrainer._compute_loss(trainer, trainer.model, unpacked, False).item()
        # TRL against itself: the same two pairs, each in a batch of its own (other padding, other kernel shapes)
        theirs_alone = sum(DPOTrainer._compute_loss(trainer, trainer.model, b, False).item() for b in singles) / len(singles)
    base = reset_base(trainer.model)
    del trainer
    return {"ours": ours, "ours_shared": ours_shared, "trl": theirs, "abs_diff": abs(ours - theirs),
            "abs_diff_shared": abs(ours_shared - theirs), "trl_one_pair_per_batch": theirs_alone,
            "trl_vs_itself_abs_diff": abs(theirs_alone - theirs), "dtype": str(precision.name)}, base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2-shaped model, short prompts (CPU smoke run)")
    ap.add_argument("--lengths", default=None, help="prompt lengths, comma-separated (default 2048,4096,1024,512)")
    ap.add_argument("--variants", default="plain,ours,ours-otf,ours-ckpt2,ours-nockpt", help="comma-separated variants")
    ap.add_argument("--ablation-lengths", default="2048,4096", help="lengths at which the ours-* ablations run")
    ap.add_argument("--plain-batches", default="1,4,8")
    ap.add_argument("--ours-batches", default="1,2,4,8")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per cell")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    ap.add_argument("--ref-batch", type=int, default=4, help="pairs per forward in the reference pass")
    ap.add_argument("--cap-gib", type=float, default=6.0, help="peak reserved memory cap (GiB)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip remaining cells after this many seconds")
    ap.add_argument("--no-loss-check", action="store_true")
    ap.add_argument("--ref-batch-shared", type=int, default=16, help="pairs per forward in ours-shared's reference pass")
    ap.add_argument("--ref-pairs", type=int, default=64, help="pairs in the reference pass of --shapes (timed)")
    ap.add_argument("--ab-reps", type=int, default=3, help="repetitions of the layout A/B (0: skip)")
    ap.add_argument("--ab-only", action="store_true", help="only the loss check and the layout A/B, no matrix")
    ap.add_argument("--shapes", default=None, help="real router-prompt shapes instead of --lengths: rb11,pool18 "
                    "(whole pool offered, real question lengths)")
    ap.add_argument("--model", default=None, help="a local model folder instead of the random-weight Qwen2.5-1.5B "
                    "architecture (e.g. models/SmolLM2-135M-Instruct for a CPU ratio on real weights)")
    args = ap.parse_args()

    import bitsandbytes
    import peft
    import transformers
    import trl

    import trl.trainer.dpo_trainer as dpo_trainer_module

    from xrouter_lite.train import TrainConfig, load_model, resolve_precision

    # TRL hashes every weight of the model (~1.5 GB through the CPU) on each trainer built with precomputed
    # reference log-probs, only to name a cache file; here the weights never change between cells and our own
    # reference cache is keyed per prompt length, so skip that cost (it is paid once per real training run).
    dpo_trainer_module.hash_module = lambda module: "bench-fixed-weights"

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or (device == "cpu" and not args.model)
    if device == "cpu" and not args.tiny and not args.model:
        log("no CUDA device: running the --tiny configuration")
    lengths = [int(x) for x in (args.lengths or ("64,128" if tiny else "2048,4096,1024,512")).split(",")]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    plain_b = [int(x) for x in (args.plain_batches if not tiny else "1,2").split(",")]
    ours_b = [int(x) for x in (args.ours_batches if not tiny else "1,2").split(",")]
    warmup, steps = (1, 1) if tiny and args.warmup == 2 and args.steps == 3 else (args.warmup, args.steps)
    t_start = time.time()
    info = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "model": args.model or ("tiny Qwen2" if tiny else "Qwen2.5-1.5B-Instruct architecture, random weights"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__},
        "cap_gib": args.cap_gib, "warmup": warmup, "steps": steps, "ref_batch": args.ref_batch,
    }
    log(json.dumps(info))
    tmp = Path(tempfile.mkdtemp(prefix="xr_bench_"))
    if args.model:
        from transformers import AutoTokenizer

        cfg = TrainConfig(model_name_or_path=args.model)
        tok = AutoTokenizer.from_pretrained(args.model)
        tok.pad_token = tok.pad_token or tok.eos_token
    else:
        log("building the random-weight model ...")
        save_random_model(TINY if tiny else QWEN25_15B, tmp / "model", device)
        cfg = TrainConfig(model_name_or_path=str(tmp / "model"))
        tok = make_tokenizer()
    precision = resolve_precision(cfg)
    model = load_model(cfg, precision)
    log(f"loaded 4-bit in {time.time() - t_start:.1f} s; compute {precision.name}")
    clean(device)

    results: dict = {"info": info, "cells": [], "reference_pass": {}, "loss_check": None,
                     "sdpa_masked_kernel": None}
    try:
        results["sdpa_masked_kernel"] = sdpa_check(device, max(lengths))
    except Exception as e:
        results["sdpa_masked_kernel"] = f"check failed: {type(e).__name__}: {e}"
    log(f"SDPA with our 4D boolean mask: {results['sdpa_masked_kernel']}")
    n_pairs = (warmup + steps) * max(plain_b + ours_b)
    datasets = {n: make_pairs(n, n_pairs, vocab=model.config.vocab_size, eos_id=tok.eos_token_id) for n in lengths}
    if args.shapes:
        qlens = real_question_lengths()
        results["question_tokens"] = {"n": len(qlens), "median": statistics.median(qlens), "max": max(qlens)}
        n_shape = max(n_pairs, args.ref_pairs)
        lengths = [x.strip() for x in args.shapes.split(",") if x.strip()]
        datasets = {n: make_shape_pairs(n, n_shape, qlens, vocab=model.config.vocab_size, eos_id=tok.eos_token_id)
                    for n in lengths}

    if not args.no_loss_check:
        try:
            results["loss_check"], model = loss_check(model, tok, datasets[min(lengths)], precision, str(tmp / "lc"))
            log(f"loss check (same batch, {min(lengths)}-token prompts): {results['loss_check']}")
        except Exception as e:  # keep the benchmark going; report it
            results["loss_check"] = {"error": f"{type(e).__name__}: {e}"}
            log("loss check failed:", results["loss_check"])
        clean(device)

    if args.ab_reps > 0:
        ab_len = 2048 if 2048 in lengths else max(lengths)
        try:
            results["layout_ab"], model = layout_ab(model, tok, datasets[ab_len], precision, str(tmp / "ab"),
                                                    args.ab_reps, device)
            results["layout_ab"]["prompt_len"] = ab_len
            log(f"A/B, one pair, {ab_len}-token prompt: {results['layout_ab']}")
        except Exception as e:
            results["layout_ab"] = {"error": f"{type(e).__name__}: {e}"}
            log("layout A/B failed:", results["layout_ab"])
        clean(device)
        write_results(results)
    if args.ab_only:
        lengths = []

    ablation_lengths = {int(x) for x in args.ablation_lengths.split(",") if x} if not tiny else set(lengths)
    for n in lengths:
        for variant in variants:
            if variant not in ("plain", "ours") and not variant.startswith("ours-shared") and n not in ablation_lengths:
                continue
            batches = plain_b if variant == "plain" else ours_b
            for b in batches:
                if time.time() - t_start > args.budget_s:
                    results["cells"].append({"variant": variant, "prompt_len": n, "batch": b, "status": "skipped (time budget)"})
                    continue
                timer = StepTimer(device)
                cell = {"variant": variant, "prompt_len": n, "batch": b}
                trainer = None
                try:
                    clean(device)
                    ref_key = f"bench-{n}-{variant}" if variant != "ours-otf" else None
                    rkey = n if variant != "ours-shared" else f"{n}/shared"
                    rb = args.ref_batch_shared if variant == "ours-shared" else args.ref_batch
                    trainer = build(variant, model, tok, datasets[n], b, warmup + steps, str(tmp / "out"), precision,
                                    rb, ref_key, [timer.callback])
                    ref_s = getattr(trainer, "ref_precompute_seconds", {}).get("train")
                    if ref_s and rkey not in results["reference_pass"]:
                        results["reference_pass"][rkey] = {
                            "pairs": len(datasets[n]), "seconds": round(ref_s, 3),
                            "pairs_per_s": round(len(datasets[n]) / ref_s, 3),
                            "peak_reserved_gib": round(peak_gib(device), 3), "batch": rb,
                        }
                    clean(device)
                    trainer.train()
                    timed = timer.times[warmup:] or timer.times
                    step_s = statistics.median(timed)
                    cell.update(status="ok", peak_reserved_gib=round(peak_gib(device), 3), step_s=round(step_s, 4),
                                step_s_min=round(min(timed), 4),
                                s_per_pair=round(step_s / b, 4), pairs_per_s=round(b / step_s, 3))
                    if device == "cuda":
                        cell["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
                except torch.OutOfMemoryError:
                    cell.update(status="OOM")
                except Exception as e:  # report and go on with the next row
                    cell.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
                    traceback.print_exc(limit=6)
                finally:
                    if trainer is not None:
                        model = reset_base(trainer.model)
                        trainer.model = None
                        del trainer
                    if any("lora_" in name for name, _ in model.named_modules()):
                        log("LoRA layers left behind by a failed cell: reloading the model")
                        del model
                        clean(device)
                        model = load_model(cfg, precision)
                    clean(device)
                results["cells"].append(cell)
                log(json.dumps(cell))
                write_results(results)  # a run cut short still leaves its figures
                if cell["status"] != "ok" or (device == "cuda" and cell.get("peak_reserved_gib", 0) > args.cap_gib):
                    break  # larger batches only need more memory

    summarise(results, args.cap_gib, device)
    results["wall_s"] = round(time.time() - t_start, 1)
    log(f"wrote {write_results(results)} ({results['wall_s']} s)")
    return 0


def write_results(results: dict) -> Path:
    out = Path(os.environ.get("OUT") or "bench_out")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train_memory.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def summarise(results: dict, cap: float, device: str) -> None:
    ref = results["reference_pass"]
    log("\nvariant       prompt  batch  peak GiB   s/pair  pairs/s  incl.ref pairs/s")
    for c in results["cells"]:
        if c.get("status") != "ok":
            log(f"{c['variant']:<12} {c['prompt_len']:>7} {c['batch']:>6}  {c['status']}")
            continue
        incl = ""
        rk = c["prompt_len"] if c["variant"] != "ours-shared" else f"{c['prompt_len']}/shared"
        if "-top" in c["variant"] or c["variant"] == "ours-otf":  # the reference ran inside each step
            c["pairs_per_s_incl_ref"] = c["pairs_per_s"]
            incl = f"{c['pairs_per_s_incl_ref']:>10.2f}"
        elif c["variant"] != "plain" and rk in ref:
            r = ref[rk]["pairs_per_s"]
            c["pairs_per_s_incl_ref"] = round(1 / (1 / c["pairs_per_s"] + 1 / r), 3)
            incl = f"{c['pairs_per_s_incl_ref']:>10.2f}"
        flag = " (over cap)" if device == "cuda" and c["peak_reserved_gib"] > cap else ""
        log(f"{c['variant']:<12} {c['prompt_len']:>7} {c['batch']:>6} {c['peak_reserved_gib']:>9.2f} "
            f"{c['s_per_pair']:>8.3f} {c['pairs_per_s']:>8.2f} {incl}{flag}")
    for n, r in ref.items():
        log(f"reference pass, {n}-token prompts: {r['pairs_per_s']:.2f} pairs/s (batch {r['batch']}), peak {r['peak_reserved_gib']:.2f} GiB")
    headline = {}
    for n in sorted({c["prompt_len"] for c in results["cells"]}):
        ok = [c for c in results["cells"] if c.get("status") == "ok" and c["prompt_len"] == n
              and (device != "cuda" or c["peak_reserved_gib"] <= cap)]
        best = {}
        for c in ok:
            v = c["variant"]
            if v not in best or c["pairs_per_s"] > best[v]["pairs_per_s"]:
                best[v] = c
        if "plain" in best:
            row = {"plain": best["plain"]["pairs_per_s"], "plain_batch": best["plain"]["batch"]}
            for v in sorted(x for x in best if x != "plain"):
                if v in best:
                    row[v] = best[v]["pairs_per_s"]
                    row[f"{v}_batch"] = best[v]["batch"]
                    row[f"{v}_speedup"] = round(best[v]["pairs_per_s"] / best["plain"]["pairs_per_s"], 2)
                    if "pairs_per_s_incl_ref" in best[v]:
                        row[f"{v}_incl_ref_speedup"] = round(best[v]["pairs_per_s_incl_ref"] / best["plain"]["pairs_per_s"], 2)
            headline[n] = row
            log(f"best under the cap at {n} tokens: {row}")
    results["headline_under_cap"] = headline


if __name__ == "__main__":
    sys.exit(main())
