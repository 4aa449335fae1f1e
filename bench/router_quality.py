"""Where a trained router lands against the single models, with paired-bootstrap error bars.

    python bench/router_quality.py runs/quality/eval/decisions.jsonl runs/quality/test_cache.jsonl
    python bench/router_quality.py DECISIONS TEST_CACHE --taus 0 3 15 300 --bootstrap 2000

Reads an evaluation's ``decisions.jsonl`` (or ``.jsonl.gz``) (every candidate's score and normalised cost per question, so the
router's decision under any ``tau`` is re-derived without the model) and the held-out ``test_cache.jsonl`` (every
model's recorded correctness and cost). For each tau it prints the router's accuracy and total cost, the accuracy of
the single models' non-decreasing convex hull at that same cost, the margin above it, and a 95% paired-bootstrap
interval of that margin: questions are resampled, and the router's point, the single models' points and their hull
are recomputed on each resample. A margin whose interval lies above 0 is "more accurate than every single model at
the same cost" beyond the noise of this many test questions. The best single model per dataset (chosen on the
test set itself: an optimistic reference) and the oracle are printed for scale.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.evaluate import load_prompts  # noqa: E402
from xrouter_lite.metrics import hull_value, ndch  # noqa: E402
from xrouter_lite.router import decide  # noqa: E402


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def load(decisions: Path, test_cache: Path):
    # the evaluation's own reader: errored and ungraded records left out, the later of two answers kept
    prompts, _ = load_prompts(test_cache)
    outcome = {p.prompt_id: {m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in prompts}
    dataset = {p.prompt_id: p.dataset or "-" for p in prompts}
    rows = []
    with _open(decisions) as f:
        for n, line in enumerate(f, 1):
            d = json.loads(line)
            pid = d["prompt_id"]
            if pid not in outcome:
                raise SystemExit(f"{decisions}:{n}: prompt {pid!r} is not in {test_cache}")
            if not d.get("base_scores"):
                raise SystemExit(f"{decisions}:{n}: no candidate scores (a generate-mode evaluation cannot be re-derived)")
            rows.append((pid, d["base_scores"], d["costs"]))
    return rows, outcome, dataset


def point(idx, picks, outcome):
    """(total cost, accuracy) of choosing picks[i] for question idx[i]."""
    cost = acc = 0.0
    for i in idx:
        ok, c = outcome[i][picks[i]]
        acc += ok
        cost += c
    return cost, acc / len(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("decisions", type=Path)
    ap.add_argument("test_cache", type=Path)
    ap.add_argument("--taus", type=float, nargs="*", help="default: the taus of report.json beside the decisions")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    rows, outcome, dataset = load(a.decisions, a.test_cache)
    taus = a.taus
    if not taus:
        rep = a.decisions.parent / "report.json"
        rep = rep if rep.exists() else a.decisions.parent / a.decisions.name.replace("decisions", "report").replace(".jsonl.gz", ".json")
        taus = json.loads(rep.read_text(encoding="utf-8"))["config"]["taus"] if rep.exists() else [0.0, 1.0, 10.0, 100.0]
    pids = [pid for pid, _, _ in rows]
    models = sorted(set.intersection(*(set(outcome[p]) for p in pids)))
    picks_by_tau = {t: {pid: decide(s, c, t)[0] for pid, s, c in rows} for t in taus}
    singles = {m: {pid: m for pid in pids} for m in models}
    oracle = {}
    for pid in pids:
        right = [(outcome[pid][m][1], m) for m in models if outcome[pid][m][0]]
        oracle[pid] = min(right)[1] if right else min((outcome[pid][m][1], m) for m in models)[1]
    per_ds_best = {}
    for ds in sorted(set(dataset[p] for p in pids)):
        ids = [p for p in pids if dataset[p] == ds]
        pts = {m: point(ids, singles[m], outcome) for m in models}
        per_ds_best[ds] = max(models, key=lambda m: (pts[m][1], -pts[m][0]))  # most accurate, then cheapest
    best_ds = {pid: per_ds_best[dataset[pid]] for pid in pids}

    def stats(idx):
        hull = ndch([point(idx, singles[m], outcome) for m in models])
        out = {}
        for t in taus:
            c, q = point(idx, picks_by_tau[t], outcome)
            out[t] = (q, c, hull_value(hull, c))
        return out

    full = stats(pids)
    rng = random.Random(a.seed)
    boots = defaultdict(list)
    for _ in range(a.bootstrap):
        idx = [pids[rng.randrange(len(pids))] for _ in pids]
        for t, (q, c, h) in stats(idx).items():
            boots[t].append(q - h)

    print(f"{a.decisions}: {len(pids)} held-out questions, {len(models)} models, {a.bootstrap} bootstrap resamples")
    print(f"{'model':36s} {'accuracy':>8s} {'total $':>9s}")
    for m in sorted(models, key=lambda m: point(pids, singles[m], outcome)[0]):
        c, q = point(pids, singles[m], outcome)
        print(f"{m:36s} {q:8.1%} {c:9.4f}")
    c, q = point(pids, best_ds, outcome)
    print(f"{'best single per dataset (on test)':36s} {q:8.1%} {c:9.4f}  " + ", ".join(f"{k}: {v.split('/')[-1]}" for k, v in per_ds_best.items()))
    c, q = point(pids, oracle, outcome)
    print(f"{'oracle (cheapest correct)':36s} {q:8.1%} {c:9.4f}")
    print()
    print(f"{'tau':>8s} {'accuracy':>8s} {'total $':>9s} {'hull at $':>9s} {'margin':>7s} {'95% CI':>17s}  calls")
    for t in taus:
        q, c, h = full[t]
        b = sorted(boots[t])
        lo, hi = b[int(0.025 * len(b))], b[int(0.975 * len(b)) - 1]
        share = defaultdict(int)
        for pid in pids:
            share[picks_by_tau[t][pid].split("/")[-1]] += 1
        top = ", ".join(f"{m} {n / len(pids):.0%}" for m, n in sorted(share.items(), key=lambda kv: -kv[1])[:3])
        flag = " *" if lo > 0 else ""
        print(f"{t:8g} {q:8.1%} {c:9.4f} {h:9.1%} {100 * (q - h):+6.1f} [{100 * lo:+5.1f}, {100 * hi:+5.1f}] pt{flag}  {top}")
    print("margin: router accuracy minus the single models' hull at the router's cost, in points; * = CI above 0")


if __name__ == "__main__":
    main()
