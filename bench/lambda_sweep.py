"""Lambda sweep of the cost-aware reward on the real RouterBench cache (11 models, real per-question costs).

    python bench/lambda_sweep.py                       # imports ../shared/data/routerbench/*.csv into a temp cache
    python bench/lambda_sweep.py --cache runs/rb/offline_cache.jsonl --subset-mode uniform

For each cost unit and lambda it runs the pairs stage (no files written) and prints: pairs, the share of pairs
whose rejected answer was also correct (the only pairs that teach "cheaper is better"; the others teach
correctness), prompts without any pair, the mean cost of chosen vs rejected answers, the share of those cost pairs
whose loser is a premium-tier model (gpt-4, claude-v1/v2: 10-20x the price of the rest), and the pair-weighted
chosen-model distribution. The best-reward model per prompt (the cheapest correct one for every lambda > 0
below the cost cap) is printed once, since it does not depend on lambda.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.pairs import PairsConfig, run_pairs  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402
from xrouter_lite.reward import RewardConfig  # noqa: E402

DEFAULT_GRID = {
    "usd": [0.1, 10.0, 100.0],
    "usd_per_1k": [0.01, 0.1, 0.5],
    "normalized": [0.02, 0.05, 0.1, 0.2, 0.4],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", help="an offline cache (default: import the RouterBench CSVs into a temp file)")
    ap.add_argument("--pool", default=str(REPO / "configs" / "pool_routerbench.yaml"))
    ap.add_argument("--strategy", default="best-vs-rest")
    ap.add_argument("--subset-mode", default="full", help="full (isolates lambda), uniform or per-tier")
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--cost-max", type=float, default=0.5)
    ap.add_argument("--max-pairs-per-prompt", type=int, default=8, help="cap per router prompt; 0: no cap")
    args = ap.parse_args()

    pool = load_pool(args.pool)
    tmp = None
    cache = args.cache
    if cache is None:
        from xrouter_lite.importers import import_routerbench

        csvs = sorted(glob.glob(str(REPO.parent / "shared" / "data" / "routerbench" / "*.csv")))
        if not csvs:
            sys.exit("no --cache given and ../shared/data/routerbench/*.csv not found")
        tmp = tempfile.TemporaryDirectory()
        cache = str(Path(tmp.name) / "offline_cache.jsonl")
        s = import_routerbench(csvs, cache, pool_path=args.pool)
        print(f"imported {s.rows_imported} RouterBench questions ({s.records_written} records) into {cache}")

    cap = args.max_pairs_per_prompt or None
    base = dict(strategy=args.strategy, subset_mode=args.subset_mode, margin=args.margin, max_pairs_per_prompt=cap, seed=0)
    rows = []
    best = None
    t0 = time.perf_counter()
    for unit, lams in DEFAULT_GRID.items():
        for lam in lams:
            cfg = PairsConfig(reward=RewardConfig(lam=lam, cost_max=args.cost_max, cost_unit=unit), **base)
            rep = run_pairs(cache, pool, cfg)
            rows.append((unit, lam, rep))
            if unit == "normalized" and lam == 0.1:
                best = rep.best_models
    dt = time.perf_counter() - t0
    print(f"\nstrategy={args.strategy} subset_mode={args.subset_mode} margin={args.margin} cost_max={args.cost_max} "
          f"cap={cap or 'none'}; {len(rows)} runs in {dt:.1f} s\n")
    hdr = f"{'unit':<11} {'lambda':>7} {'pairs':>6} {'both-correct':>12} {'no-pair prompts (wrong/tie)':>28} " \
          f"{'$/1k chosen':>11} {'$/1k rejected':>13} {'cost pairs vs premium':>21}"
    print(hdr)
    print("-" * len(hdr))
    for unit, lam, r in rows:
        share = r.pairs_both_correct / r.pairs_total if r.pairs_total else 0.0
        nop = f"{r.no_pair.get('all_wrong', 0)}/{r.no_pair.get('tie', 0)}"
        prem = sum(c for m, c in r.rejected_models_both_correct.items() if pool.get(m).tier == "premium")
        prem_share = f"{prem / r.pairs_both_correct:.0%}" if r.pairs_both_correct else "-"
        print(f"{unit:<11} {lam:>7g} {r.pairs_total:>6} {r.pairs_both_correct:>6} ({share:4.0%}) {nop:>28} "
              f"{r.mean_cost_chosen_per_1k:>11.3f} {r.mean_cost_rejected_per_1k:>13.3f} {prem_share:>21}")

    models = [m.id for m in pool]
    print("\npair-weighted chosen-model distribution (% of pairs)")
    cols = [(u, lam, r) for u, lam, r in rows]
    short = {"usd": "usd", "usd_per_1k": "1k", "normalized": "norm"}
    print(f"{'model':<34}" + "".join(f"{short[u] + ' ' + format(lam, 'g'):>10}" for u, lam, _ in cols))
    for m in models:
        line = f"{m:<34}"
        for _, _, r in cols:
            line += f"{100 * r.chosen_models.get(m, 0) / max(1, r.pairs_total):>10.1f}"
        print(line)
    if best:
        n = sum(best.values())
        print("\nbest-reward model per prompt (same for every lambda > 0 without cap saturation), % of prompts:")
        for m, c in sorted(best.items(), key=lambda kv: -kv[1]):
            print(f"  {m:<34} {100 * c / n:5.1f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
