"""Is a DPO-loss gap between our packed / shared-prefix batches and TRL's a different objective, or bf16 rounding?

    python bench/loss_precision.py                     # CUDA: Qwen2.5-1.5B architecture, random weights
    python bench/loss_precision.py --model models/SmolLM2-135M-Instruct   # real weights (CPU or CUDA)
    python bench/loss_precision.py --tiny              # CPU smoke run

One batch of router pairs of the real shape (``train_memory.make_shape_pairs``: the 18-model pool offered, a real
question length, two tool-call answers; LoRA B randomised, seed 0, so the loss is not log 2) and the same weights
in several precisions: fp32 (the reference), bf16, and on CUDA 4-bit NF4 with bf16 compute (the training recipe).
In each, the loss of TRL's own ``_compute_loss`` on its two-rows-per-pair batch, of our packed batch and of our
shared-prefix batch (``PackedPreferenceCollator(share_prefix=True)``: the pairs' common prefix once). The table
gives every loss and its distance to TRL's fp32 loss: if ours is as close to it as TRL's own bf16 loss is, the gap
between ours and TRL in bf16 is rounding, not a different objective. Writes ``--json`` or $OUT/loss_precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


def losses(model_path: str, tok, ds, *, dtype: str, four_bit: bool, out_dir: str, n_pairs: int, n_batches: int) -> list[dict]:
    import torch

    from train_memory import LORA_TARGETS
    from xrouter_lite.train import TrainConfig, build_trainer, load_model, resolve_precision

    cfg = TrainConfig(model_name_or_path=model_path, output_dir=out_dir, load_in_4bit=four_bit, compute_dtype=dtype,
                      lora_target_modules=LORA_TARGETS, per_device_train_batch_size=n_pairs,
                      precompute_ref_log_probs=False, report_to=[], share_prefix=False, gradient_checkpointing=False)
    precision = resolve_precision(cfg)
    trainer = build_trainer(cfg, load_model(cfg, precision), tok, ds, precision=precision, save_strategy="no",
                            report_to="none")
    g = torch.Generator(device="cpu").manual_seed(0)
    for name, p in sorted(trainer.model.named_parameters()):
        if "lora_B" in name:
            p.data.copy_((torch.randn(p.shape, generator=g) * 0.01).to(p.dtype))
    dev = trainer.accelerator.device
    trainer.model.eval()
    res = []
    for k in range(n_batches):
        res.append(_one_batch(trainer, tok, [ds[k * n_pairs + i] for i in range(n_pairs)], dev))
        res[-1]["precision"] = precision.name + (" (4-bit NF4 weights)" if four_bit else "")
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def _one_batch(trainer, tok, ex, dev) -> dict:
    import torch
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from xrouter_lite.packing import PackedPreferenceCollator

    batches = {
        "trl": {k: v.to(dev) for k, v in DataCollatorForPreference(pad_token_id=tok.pad_token_id)(ex).items()},
        "ours_packed": {k: v.to(dev) for k, v in trainer.data_collator(ex).items()},
        "ours_shared": {k: v.to(dev) for k, v in PackedPreferenceCollator(tok.pad_token_id, 16, share_prefix=True)(ex).items()},
    }
    out = {}
    with torch.no_grad(), trainer.accelerator.autocast():
        for name, b in batches.items():
            for mode in ("train", "eval"):
                trainer._metrics[mode].clear()
            trl = name == "trl"
            f = DPOTrainer._compute_loss if trl else type(trainer)._compute_loss
            loss = f(trainer, trainer.model, b, False).item()
            m = {k: v[-1] for mode in ("train", "eval") for k, v in trainer._metrics[mode].items() if isinstance(v, list) and v}
            ref = (DPOTrainer.compute_ref_log_probs if trl else type(trainer).compute_ref_log_probs)(trainer, trainer.model, b)
            out[name] = {"loss": loss, "logps_chosen": m.get("logps/chosen"), "logps_rejected": m.get("logps/rejected"),
                         "margin": m.get("rewards/margins"),
                         "ref_chosen": [round(float(x), 4) for x in ref[0].float().flatten()],
                         "ref_rejected": [round(float(x), 4) for x in ref[1].float().flatten()]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a local model folder (default: random Qwen2.5-1.5B architecture)")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--shape", default="pool18", help="rb11 or pool18 (train_memory.SHAPES)")
    ap.add_argument("--pairs", type=int, default=2, help="pairs per batch")
    ap.add_argument("--batches", type=int, default=6, help="batches (other pairs each): errors are averaged over them")
    ap.add_argument("--pairs-file", default=None, help="real pairs (a dpo_train_data.json) instead of random tokens")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    from train_memory import QWEN25_15B, TINY, make_shape_pairs, make_tokenizer, real_question_lengths, save_random_model

    cuda = torch.cuda.is_available()
    tmp = Path(tempfile.mkdtemp(prefix="loss_precision_"))
    if args.model:
        from transformers import AutoTokenizer

        path = args.model
        tok = AutoTokenizer.from_pretrained(path)
        tok.pad_token = tok.pad_token or tok.eos_token
    else:
        path = str(tmp / "model")
        save_random_model(TINY if args.tiny else QWEN25_15B, Path(path), "cuda" if cuda else "cpu")
        tok = make_tokenizer()
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    n = args.pairs * args.batches
    if args.pairs_file:  # real router pairs (real text: answers the model can predict, log-probs of real size)
        from xrouter_lite.train import pairs_dataset, read_pairs, tokenize_pairs

        rows = [r for _, r in read_pairs(args.pairs_file)][:n]
        ds = pairs_dataset(tokenize_pairs(rows, tok, None))
    else:
        ds = make_shape_pairs(args.shape, n, real_question_lengths(), vocab=vocab, eos_id=tok.eos_token_id)
    runs = [("float32", False), ("bfloat16", False)] + ([("bfloat16", True)] if cuda else [])
    res = {"info": {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                    "model": args.model or ("tiny Qwen2" if args.tiny else "Qwen2.5-1.5B architecture, random weights"),
                    "shape": args.shape, "pairs": args.pairs}, "runs": []}
    print(json.dumps(res["info"]), flush=True)
    res["info"]["pairs_file"] = args.pairs_file or "random tokens (train_memory.make_shape_pairs)"
    for dtype, four in runs:
        rs = losses(path, tok, ds, dtype=dtype, four_bit=four, out_dir=str(tmp / f"t-{dtype}-{four}"),
                    n_pairs=args.pairs, n_batches=args.batches)
        res["runs"].append(rs)
        for r in rs:
            print(json.dumps(r), flush=True)
    names = ("trl", "ours_packed", "ours_shared")
    print(f"\nmean over {args.batches} batches of {args.pairs} pairs ({res['info']['pairs_file']})")
    print(f"{'precision':<34} | mean |loss - TRL's fp32 loss|: TRL, packed, shared | mean |ours - TRL|, same precision:"
          f" packed, shared")
    res["summary"] = []
    for rs in res["runs"]:
        fp32 = res["runs"][0]  # the same batches in float32: TRL's loss there is the reference
        to_ref = {k: sum(abs(r[k]["loss"] - f["trl"]["loss"]) for r, f in zip(rs, fp32)) / len(rs) for k in names}
        same = {k: sum(abs(r[k]["loss"] - r["trl"]["loss"]) for r in rs) / len(rs) for k in names[1:]}
        res["summary"].append({"precision": rs[0]["precision"], "mean_abs_to_trl_fp32": to_ref, "mean_abs_to_trl_same": same,
                               "max_abs_to_trl_same": {k: max(abs(r[k]["loss"] - r["trl"]["loss"]) for r in rs) for k in names[1:]}})
        print(f"{rs[0]['precision']:<34} | {to_ref['trl']:.4f} {to_ref['ours_packed']:.4f} {to_ref['ours_shared']:.4f} | "
              f"{same['ours_packed']:.4f} {same['ours_shared']:.4f}")
    from route_latency import write_result

    write_result(res, args.json, "loss_precision.json")
    return res


if __name__ == "__main__":
    main()
