"""Two routers on the same held-out questions: AIQ of each and a paired-bootstrap interval of their difference.

    python bench/traversal_quality.py FULL_DECISIONS OTHER_DECISIONS TEST_CACHE [--bootstrap 2000]

Used for the cost-ordered cache check: FULL_DECISIONS from the recipe trained on the full cache, OTHER_DECISIONS
from the same recipe trained on the cost-ordered cache (bench/traversal_gpu.sh), TEST_CACHE the split's held-out
full rows. Each ``decisions.jsonl(.gz)`` holds every candidate's score and normalised cost, so each router's point at
every tau is re-derived (``router.decide``); AIQ is RouterBench's area under the router's non-decreasing convex hull
over the cost range of the single models (``metrics.aiq``), as ``evaluate`` reports it. Questions are resampled
(the same resample for both routers) and both AIQs recomputed: the interval of ``AIQ(full) - AIQ(other)``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from router_quality import load, point  # noqa: E402

from xrouter_lite.metrics import aiq  # noqa: E402
from xrouter_lite.router import decide  # noqa: E402

DEFAULT_TAUS = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0,
                500.0, 1000.0, 3000.0, 10000.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("test_cache", type=Path)
    ap.add_argument("--taus", type=float, nargs="*", default=DEFAULT_TAUS)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    rows_f, outcome, _ = load(a.full, a.test_cache)
    rows_o, _, _ = load(a.other, a.test_cache)
    pids = sorted({p for p, _, _ in rows_f} & {p for p, _, _ in rows_o})
    if len(pids) != len(rows_f) or len(pids) != len(rows_o):
        raise SystemExit(f"the two decision files cover different questions ({len(rows_f)} / {len(rows_o)}, {len(pids)} shared)")
    models = sorted(set.intersection(*(set(outcome[p]) for p in pids)))
    picks = {}
    for name, rows in (("full", rows_f), ("other", rows_o)):
        picks[name] = {t: {pid: decide(s, c, t)[0] for pid, s, c in rows} for t in a.taus}
    singles = {m: {pid: m for pid in pids} for m in models}

    def aiqs(idx):
        costs = [point(idx, singles[m], outcome)[0] for m in models]
        lo, hi = min(costs), max(costs)
        return {n: aiq([point(idx, picks[n][t], outcome) for t in a.taus], lo, hi) for n in picks}

    base = aiqs(pids)
    rng = random.Random(a.seed)
    diffs = []
    for _ in range(a.bootstrap):
        idx = [pids[rng.randrange(len(pids))] for _ in pids]
        r = aiqs(idx)
        diffs.append(r["full"] - r["other"])
    diffs.sort()
    lo, hi = diffs[int(0.025 * len(diffs))], diffs[int(0.975 * len(diffs)) - 1]
    single_hull = aiq([point(pids, singles[m], outcome) for m in models],
                      *(lambda cs: (min(cs), max(cs)))([point(pids, singles[m], outcome)[0] for m in models]))
    print(f"{len(pids)} held-out questions, {len(models)} models, {len(a.taus)} taus, {a.bootstrap} paired resamples")
    print(f"AIQ full cache:   {base['full']:.4f}   ({a.full})")
    print(f"AIQ other cache:  {base['other']:.4f}   ({a.other})")
    print(f"single models' hull AIQ: {single_hull:.4f}")
    print(f"difference (full - other): {base['full'] - base['other']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
