"""Issue 14's GPU part: train the quality recipe on several seeded splits of the RouterBench training files AT ONCE
(one process per split on one GPU) and score, with each adapter, its split's held-out questions AND the validation
part of its training side. Everything else (the decision head, kNN, the comparison) runs on a CPU from the
``decisions.jsonl`` files this writes: ``bench/router_quality.py --split ...``.

    python bench/router_quality_gpu.py OUT_DIR [--runs s0:0:0 s1:1:0 s2:2:0] [--train-s 380] [--rb DIR] [--model DIR]
        [--set lora_top_layers=8 max_steps=175 ...] [--train-only | --resume]

A run is TAG:SEED:LAMBDA. Per run: pairs as configs/quality_routerbench.yaml (every model offered, strategy all, 6 pairs
per prompt) with ``eval_fraction 0.2`` and ``val_fraction 0.25`` (1,323 training / 441 validation / 441 held-out
questions), QLoRA DPO of SmolLM2-135M-Instruct with the config's ``train_cuda`` (2 epochs, 16 pairs a step, here as
batch 8 x 2 accumulation so that three runs fit one 80 GB GPU), then the evaluation on the held-out and on the
validation questions, then the decision head fit on the validation scores (``fit_head_from_cache``, as ``xrouter-lite
fit-head``) and the evaluation again with it (the rule serving uses). A training run still going after ``--train-s``
seconds is stopped as Ctrl-C stops it (the adapter is saved; its run card says "interrupted"); with ``--train-only``
the call ends there and a later call with ``--resume`` (same OUT_DIR, a warm machine) trains on from that checkpoint
and evaluates: a recipe longer than one call's limit. Python functions only:
the device image has no typer/rich. ``--smoke`` checks the script on a CPU (8 questions per file, one step).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
POOL = str(REPO / "configs" / "pool_routerbench.yaml")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_cfg(a, data: Path, out: Path) -> dict:
    """The config's train_cuda, with batch 8 x 2 accumulation (16 pairs a step, as the recipe)."""
    import yaml

    t = yaml.safe_load((REPO / "configs" / "quality_routerbench.yaml").read_text())["train_cuda"]
    t.update(model_name_or_path=a.model, per_device_train_batch_size=8, gradient_accumulation_steps=2, report_to=[],
             data_path=str(data), output_dir=str(out))
    if a.epochs:
        t["num_train_epochs"] = a.epochs
    for kv in a.set or []:  # --set KEY=VALUE (YAML value): any train field, e.g. lora_top_layers=8 max_steps=175
        k, v = kv.split("=", 1)
        t[k] = yaml.safe_load(v)
    if a.smoke:
        t.update(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1, precompute_ref_log_probs=False)
    return t


def do_train(a) -> None:
    from xrouter_lite.train import TrainConfig, train

    cfg = json.loads(a.train_json)
    res = train(TrainConfig.load(None, cfg), resume=a.resume, say=lambda m: print(m, flush=True))
    print(f"status {res.run_card['status']} step {res.run_card['final_metrics'].get('global_step')}", flush=True)


def one(a, tag: str, seed: int, lam: float) -> None:
    from xrouter_lite.decision import fit_head_from_cache
    from xrouter_lite.evaluate import EvalConfig, evaluate
    from xrouter_lite.pairs import PairsConfig, run_pairs
    from xrouter_lite.pool import load_pool

    out = Path(a.out)
    d = out / tag
    d.mkdir(parents=True, exist_ok=True)
    pcfg = PairsConfig.from_dict({
        "strategy": "all", "max_pairs_per_prompt": 6, "subset_mode": "full", "eval_fraction": 0.2, "val_fraction": 0.25,
        "seed": seed, "reward": {"k": 1.0, "lam": lam, "cost_max": 0.5, "cost_unit": "normalized"},
    })
    if a.resume and (d / "dpo_train_data.json").exists():
        log(f"{tag}: --resume: the pairs of the first call, training goes on from the adapter's last checkpoint")
    else:
        rep = run_pairs(out / "cache.jsonl", load_pool(POOL), pcfg, out_dir=d)
        log(f"{tag}: pairs {rep.pairs_train} from {rep.prompts_train} questions; {rep.prompts_val} validation, "
            f"{rep.prompts_eval} held out")
    test = {json.loads(x)["prompt_id"] for x in open(d / "test_cache.jsonl")}
    with open(d / "trainside_cache.jsonl", "w") as f:  # the training side (train + validation): tau's cost vector
        for line in open(out / "cache.jsonl"):
            if json.loads(line)["prompt_id"] not in test:
                f.write(line)
    # training in its own process (its GPU memory is given back when it ends); stopped after --train-s
    t0 = time.time()
    cfg = train_cfg(a, d / "dpo_train_data.json", d / "router")
    card = d / "router" / "run_card.json"
    done = card.exists() and json.loads(card.read_text()).get("status") == "completed"
    if (a.smoke or (a.resume and done)) and (d / "router" / "adapter_config.json").exists():
        log(f"{tag}: reusing the {'completed ' if done else ''}adapter in {d / 'router'}")
        rc = 0
    else:
        with open(d / "train.log", "a" if a.resume else "w") as lf:
            p = subprocess.Popen([sys.executable, __file__, str(out), "--train-json", json.dumps(cfg)]
                                 + (["--resume"] if a.resume else []), stdout=lf, stderr=subprocess.STDOUT)
            try:
                p.wait(timeout=a.train_s)
            except subprocess.TimeoutExpired:
                log(f"{tag}: training still going after {a.train_s} s: stopping it (adapter saved at the current step)")
                p.send_signal(signal.SIGINT)
                p.wait()
            rc = p.returncode
    log(f"{tag}: training exit {rc} after {time.time() - t0:.0f} s")
    if a.train_only:
        return
    common = dict(adapter=str(d / "router"), train_cache=str(d / "trainside_cache.jsonl"), pool=POOL, batch_size=8,
                  max_queries=3 if a.smoke else None)
    say = lambda m: print(f"  {tag}: {m}", flush=True)  # noqa: E731
    rules = a.score_tokens.split(",") if a.score_tokens else [None]
    for rule in rules:  # None: the adapter's own score_tokens; several: one set of evaluations + head per rule
        sfx = f"_{rule}" if len(rules) > 1 else ""
        evaluate(EvalConfig(test_cache=str(d / "test_cache.jsonl"), out_dir=str(d / f"eval_test{sfx}"), use_head=False,
                            score_tokens=rule, baselines=["single", "random", "oracle", "best_single"], **common), log=say)
        log(f"{tag}{sfx}: held-out evaluation done")
        evaluate(EvalConfig(test_cache=str(d / "val_cache.jsonl"), out_dir=str(d / f"eval_val{sfx}"), use_head=False,
                            score_tokens=rule, baselines=["single"], plot=False,
                            **{**common, "max_queries": None if not a.smoke else 6}), log=say)
        log(f"{tag}{sfx}: validation evaluation done")
        head, path = fit_head_from_cache(d / "router", d / "val_cache.jsonl", decisions=d / f"eval_val{sfx}" / "decisions.jsonl",
                                         pool=POOL, score_tokens=rule, say=say)
        if sfx:
            (d / f"decision_head{sfx}.json").write_text(path.read_text())
        log(f"{tag}{sfx}: decision head l2 {head.l2:g} on {head.info['n_questions']} validation questions -> {path}")
        evaluate(EvalConfig(test_cache=str(d / "test_cache.jsonl"), out_dir=str(d / f"eval_test_head{sfx}"),
                            score_tokens=rule, baselines=["single", "best_single"], **common), log=say)
        log(f"{tag}{sfx}: held-out evaluation with the head done")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--runs", nargs="+", default=["s0:0:0", "s1:1:0", "s2:2:0"])
    ap.add_argument("--train-s", type=float, default=380)
    ap.add_argument("--rb", default=str(REPO.parent / "shared" / "data" / "routerbench"))
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--epochs", type=float, help="override the recipe's num_train_epochs (2)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="train config overrides (YAML values)")
    ap.add_argument("--train-only", action="store_true", help="stop after training (a later call: --resume)")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the runs of an earlier call in OUT_DIR (its pairs; training from its checkpoint)")
    ap.add_argument("--score-tokens", help="evaluate (and fit the head) once per rule, e.g. full,distinct "
                    "(outputs eval_test_RULE/, eval_val_RULE/, eval_test_head_RULE/, decision_head_RULE.json)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--train-json", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.train_json:
        do_train(a)
        return
    if a.one:
        tag, seed, lam = a.one.split(":")
        one(a, tag, int(seed), float(lam))
        return
    from xrouter_lite.importers import import_routerbench

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [f"{a.rb}/{n}" for n in ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")]
    if not (a.resume and (out / "cache.jsonl").exists()):
        s = import_routerbench(files, out / "cache.jsonl", pool_path=POOL, limit_per_file=8 if a.smoke else None,
                               overwrite=True)
        log(s.format().splitlines()[0])
    procs = []
    for r in a.runs:
        cmd = [sys.executable, __file__, str(out), "--one", r, "--train-s", str(a.train_s), "--model", a.model]
        cmd += ["--epochs", str(a.epochs)] if a.epochs else []
        cmd += ["--smoke"] if a.smoke else []
        cmd += ["--set", *a.set] if a.set else []
        cmd += ["--train-only"] if a.train_only else []
        cmd += ["--resume"] if a.resume else []
        cmd += ["--score-tokens", a.score_tokens] if a.score_tokens else []
        procs.append((r, subprocess.Popen(cmd)))
    for r, p in procs:
        p.wait()
        log(f"run {r}: exit {p.returncode}")


if __name__ == "__main__":
    main()
