"""Does a tau calibrated on one set of questions meet its target on others? (kNN router, RouterBench example)

For each seed the built-in RouterBench sample (300 questions, 11 models) is split 60/20/20 into training,
calibration and test questions. The kNN router is built on the training questions with the one factory; tau is
calibrated (``calibrate.calibrate_rows``, exact) on the calibration questions for each target, then the test
questions are decided at that tau. Printed per target: the calibrated tau, the figure on the calibration split and
on the test split, and whether the target held on the test split; then mean and spread over the seeds.

    PYTHONPATH=. python bench/calibration_holdout.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.calibrate import CalibrationError, Target, calibrate_rows, figures_at, rows_from_decisions  # noqa: E402
from xrouter_lite.evaluate import load_prompts  # noqa: E402
from xrouter_lite.importers import import_routerbench  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402
from xrouter_lite.routing import RouteItem, load_router  # noqa: E402

TARGETS = {
    "cost <= $0.30/1k": Target(cost_per_1k=0.30),
    "cost <= $0.15/1k": Target(cost_per_1k=0.15),
    "accuracy >= 85%": Target(min_accuracy=0.85),
    "accuracy >= 75%": Target(min_accuracy=0.75),
    "Yi-34B share <= 20%": Target(max_share={"zero-one-ai/Yi-34B-Chat": 0.20}),
}


def met(p, t: Target) -> bool:
    if t.cost_per_1k is not None and p.cost_per_1k > t.cost_per_1k:
        return False
    if t.min_accuracy is not None and p.accuracy < t.min_accuracy:
        return False
    return all(p.share.get(m, 0.0) <= s for m, s in t.max_share.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    pool = load_pool(REPO / "configs" / "pool_routerbench.yaml")
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "cache.jsonl"
        import_routerbench([REPO / "data" / "examples" / "routerbench_sample.csv"], cache)
        prompts, _ = load_prompts(cache, pool.ids, require_complete=True)
    offered = list(pool)
    results: dict[str, list[tuple]] = {k: [] for k in TARGETS}
    for seed in args.seeds:
        ps = list(prompts)
        random.Random(seed).shuffle(ps)
        n = len(ps)
        train, calib, test = ps[: int(0.6 * n)], ps[int(0.6 * n) : int(0.8 * n)], ps[int(0.8 * n) :]
        router = load_router("knn", pool=pool, train=train)

        def rows(qs):
            ds = router.route_items([RouteItem(p.prompt, p.prompt_id, p.dataset) for p in qs], [offered] * len(qs), 0.0)
            return rows_from_decisions(ds, qs)

        rc, rt = rows(calib), rows(test)
        for name, t in TARGETS.items():
            try:
                c = calibrate_rows(rc, t)
            except CalibrationError as e:
                print(f"seed {seed} {name}: {e}")
                continue
            q = figures_at(rt, c.tau)
            results[name].append((c.tau, c.point, q, met(q, t)))
            print(f"seed {seed} | {name:22s} | tau {c.tau:8.4g} | calib: acc {100 * c.point.accuracy:5.1f}% "
                  f"${c.point.cost_per_1k:.3f}/1k | test: acc {100 * q.accuracy:5.1f}% ${q.cost_per_1k:.3f}/1k "
                  f"Yi {100 * q.share.get('zero-one-ai/Yi-34B-Chat', 0):4.1f}% | target held on test: {met(q, t)}")
    print("\nmean (spread = stdev) over seeds, test split:")
    for name, rs in results.items():
        if not rs:
            continue
        acc = [100 * q.accuracy for _, _, q, _ in rs]
        cost = [q.cost_per_1k for _, _, q, _ in rs]
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        print(f"{name:22s} | accuracy {statistics.mean(acc):5.1f}% +- {sd(acc):.1f} | ${statistics.mean(cost):.3f}/1k "
              f"+- {sd(cost):.3f} | held on test in {sum(h for *_, h in rs)}/{len(rs)} seeds")


if __name__ == "__main__":
    main()
