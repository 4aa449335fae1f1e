"""What a cost-ordered cache (with exploration) saves against the full traversal, on seeded RouterBench splits.

    xrouter-lite import routerbench ../shared/data/routerbench/*.csv --out runs/traversal/full.jsonl
    python bench/traversal_savings.py runs/traversal/full.jsonl --explore 0.08 --seeds 0 1 2 --out-dir runs/traversal

Per seed, the questions are split as the pairs stage splits them (``pairs.split_prompt_ids``, eval_fraction 0.2,
the seed): the cost-ordered traversal (``traversal.simulate_traversal``, exploration drawn with the same seed) is
replayed on the *training* questions only, from the recorded answers, calling nothing; the held-out questions keep
their full rows (an evaluation needs every model's label). Writes ``OUT_DIR/split{seed}/cost_ordered.jsonl``
(training rows cost-ordered + held-out rows full) to train a router on, and prints the cost and calls of both
traversals on the training questions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.cache import latest_records  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402
from xrouter_lite.traversal import simulate_traversal  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full_cache", type=Path)
    ap.add_argument("--pool", type=Path, default=REPO / "configs/pool_routerbench.yaml")
    ap.add_argument("--explore", type=float, nargs="+", default=[0.08])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--out-dir", type=Path, help="write split{seed}/cost_ordered.jsonl (first --explore value)")
    a = ap.parse_args()

    pool = load_pool(a.pool)
    ids = {r.prompt_id for r in latest_records(a.full_cache, include_errors=False)}
    rows = []
    print(f"{'seed':>4} {'explore':>7} {'questions':>9} {'explored':>8} {'calls':>13} {'full calls':>10} "
          f"{'cost $':>8} {'full $':>8} {'cost share':>10}")
    for seed in a.seeds:
        held_out = split_prompt_ids(ids, a.eval_fraction, seed)
        train_ids = ids - held_out
        for i, explore in enumerate(a.explore):
            out = None
            if a.out_dir is not None and i == 0:
                out = a.out_dir / f"split{seed}" / "cost_ordered.jsonl"
            rep = simulate_traversal(a.full_cache, pool, "cost-ordered", explore=explore, seed=seed, out=out,
                                     ids=train_ids)
            if out is not None:  # + the held-out questions' full rows, verbatim
                with out.open("a", encoding="utf-8") as f:
                    for r in latest_records(a.full_cache, include_errors=False):
                        if r.prompt_id in held_out:
                            f.write(r.to_json() + "\n")
            rows.append({"seed": seed, **rep.to_dict()})
            print(f"{seed:4d} {explore:7.3f} {rep.questions:9d} {rep.explored_questions:8d} {rep.calls:7d} "
                  f"({rep.calls_fraction:4.0%}) {rep.full_calls:10d} {rep.cost_usd:8.4f} {rep.full_cost_usd:8.4f} "
                  f"{rep.cost_fraction:10.1%}")
    if a.out_dir is not None:
        (a.out_dir / "traversal_savings.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
