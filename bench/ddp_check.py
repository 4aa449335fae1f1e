"""Data-parallel training on 2 GPUs against 1 GPU: same loss curve at the same effective batch, and the speed-up.

    python bench/ddp_check.py prepare --dir /tmp/ddp                      # random Qwen2.5-1.5B weights + tokenizer
    python bench/ddp_check.py train --dir /tmp/ddp --data PAIRS --run one --batch 8 --ga 2
    accelerate launch --multi_gpu --num_processes 2 bench/ddp_check.py train --dir /tmp/ddp --data PAIRS --run two --batch 8 --ga 1
    python bench/ddp_check.py compare --dir /tmp/ddp                      # prints and writes ddp_check.json ($OUT)

The model is Qwen2.5-1.5B-Instruct's architecture with random weights (seeded; no Hub), loaded 4-bit NF4 by
``xrouter_lite.train`` exactly as a real run (LoRA r=16 on every projection, packed + shared-prefix pairs, reference
log-probs precomputed, gradient checkpointing, paged 8-bit AdamW). PAIRS is a real ``dpo_train_data.json`` (the
built-in example's RouterBench questions, every pool model offered). ``group_by_length`` is off so both runs see
the same pairs at each optimiser step: with 2 processes accelerate hands batch 2k to rank 0 and 2k+1 to rank 1,
which is what one GPU accumulates at step k. Pairs/s = effective batch / median optimiser-step time (CUDA
synchronised, warm-up steps excluded); the reference pre-pass is timed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def prepare(d: Path, tiny: bool = False) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from bench.train_memory import QWEN25_15B, TINY
    from xrouter_lite.qwen import qwen_tokenizer

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        m = AutoModelForCausalLM.from_config(Qwen2Config(**(TINY if tiny else QWEN25_15B)), dtype=torch.bfloat16)
    m.save_pretrained(d / "model")
    qwen_tokenizer().save_pretrained(d / "model")


def run(args) -> None:
    import torch
    from transformers import TrainerCallback

    from xrouter_lite.train import TrainConfig, train

    rank = int(os.environ.get("RANK", "0"))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: list[float] = []
    logs: list[dict] = []

    class Rec(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync()
            times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                logs_ = dict(logs, step=state.global_step)
                recs.append(logs_)

    recs = logs
    out = args.dir / args.run
    cfg = TrainConfig(
        model_name_or_path=str(args.dir / "model"), data_path=str(args.data), output_dir=str(out),
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.ga, max_steps=args.steps,
        learning_rate=2e-4, warmup_ratio=0.0, lr_scheduler_type="constant", logging_steps=1, save_steps=10**6,
        report_to=[], group_by_length=False, disable_tqdm=True, seed=42, precompute_ref_batch_size=16,
    )
    t0 = time.time()
    res = train(cfg, callbacks=[Rec()], say=(print if rank == 0 else (lambda *a, **k: None)))
    wall = time.time() - t0
    if rank == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        eff = args.batch * args.ga * world
        timed = times[args.warmup:]
        card = res.run_card if hasattr(res, "run_card") else {}
        rec = {"world_size": world, "per_device_batch": args.batch, "grad_accum": args.ga, "effective_batch": eff,
               "steps": len(times), "median_step_s": statistics.median(timed), "pairs_per_s": eff / statistics.median(timed),
               "losses": [r["loss"] for r in logs], "wall_s_incl_load": wall, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "final_metrics": (card or {}).get("final_metrics")}
        (args.dir / f"{args.run}.json").write_text(json.dumps(rec, indent=2, default=str))
        print(json.dumps({k: v for k, v in rec.items() if k != "final_metrics"}))


def compare(d: Path) -> None:
    one = json.loads((d / "one.json").read_text())
    two = json.loads((d / "two.json").read_text())
    n = min(len(one["losses"]), len(two["losses"]))
    diffs = [abs(a - b) for a, b in zip(one["losses"][:n], two["losses"][:n])]
    out = {"one_gpu": one, "two_gpus": two, "max_abs_loss_diff": max(diffs), "mean_abs_loss_diff": sum(diffs) / n,
           "speedup": two["pairs_per_s"] / one["pairs_per_s"]}
    print(f"steps compared: {n}; loss 1 GPU {one['losses'][0]:.4f} -> {one['losses'][n - 1]:.4f}, "
          f"2 GPUs {two['losses'][0]:.4f} -> {two['losses'][n - 1]:.4f}; max |diff| {max(diffs):.4f}")
    print(f"pairs/s: 1 GPU {one['pairs_per_s']:.2f}, 2 GPUs {two['pairs_per_s']:.2f}: {out['speedup']:.2f}x")
    dest = Path(os.environ.get("OUT") or d) / "ddp_check.json"
    dest.write_text(json.dumps(out, indent=2, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prepare", "train", "compare"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ddp"))
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--run", default="one")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ga", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="prepare: a tiny Qwen2-shaped model (CPU smoke run)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.what == "prepare":
        prepare(args.dir, args.tiny)
    elif args.what == "train":
        run(args)
    else:
        compare(args.dir)


if __name__ == "__main__":
    main()
