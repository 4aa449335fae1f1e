"""Issue 16, sixth session: does offering the agentic mode six models (not the pool's eleven) cost the one-shot
`logistic` router anything on the agentic evaluation's AIQ? Per seeded split (441 held-out questions), the one-shot
logistic rule (P(correct) - tau x c over LOGISTIC_TAUS) over the six agentic models and over all eleven, replayed by
``agentic.evaluate.curve``; AIQ over the six models' single-model cost range (both sets share the cheapest and the
dearest model), and the best point at <= 40% of GPT-4's cost.

    python bench/agentic_offered.py --cache CACHE --emb-cache EMB.npz      # CACHE, EMB as bench/agentic_logistic.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from agentic_quality import MODELS, _embeddings  # noqa: E402

from xrouter_lite.agentic.evaluate import LOGISTIC_TAUS, curve, logistic_oneshot, logistic_p, mean_costs  # noqa: E402
from xrouter_lite.agentic.state import load_questions  # noqa: E402
from xrouter_lite.metrics import aiq  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--emb-cache", type=Path)
    ap.add_argument("--pool", type=Path, default=REPO / "configs" / "pool_routerbench.yaml")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    a = ap.parse_args()
    qs = load_questions(a.cache, load_pool(a.pool))
    emb = _embeddings(qs, a.emb_cache)
    every = sorted({m for q in qs for m in q.outcomes})
    dearest = "gpt-4-1106-preview"
    for s in a.seeds:
        held = split_prompt_ids({q.prompt_id for q in qs}, 0.2, s)
        tr = [q for q in qs if q.prompt_id not in held]
        te = [q for q in qs if q.prompt_id in held]
        cs = np.array([[q.outcomes[m].cost for m in MODELS] for q in te]).sum(axis=0)
        g4 = sum(q.outcomes[dearest].cost for q in te)
        for name, offered in (("six agentic models", MODELS), ("all eleven", every)):
            p, c = logistic_p(tr, te, emb, offered), mean_costs(tr, offered)
            pts = curve(name, [(t, logistic_oneshot(p, c, offered, t)) for t in LOGISTIC_TAUS], te, 3)["points"]
            a_ = aiq([(x["_cost"].sum(), x["_ok"].mean()) for x in pts], float(cs.min()), float(cs.max()))
            best = max((x for x in pts if x["_cost"].sum() <= 0.4 * g4), key=lambda x: x["_ok"].mean())
            print(f"split {s} {name:18s} AIQ {a_:.4f}  best at <= 40% of GPT-4's cost: {best['_ok'].mean():.1%} at "
                  f"{best['_cost'].sum() / g4:.0%}", flush=True)


if __name__ == "__main__":
    main()
