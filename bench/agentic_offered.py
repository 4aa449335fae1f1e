"""Issue 16, sixth session: does offering the agentic mode six models (not the pool's eleven) cost the one-shot
`logistic` router anything on the agentic evaluation's AIQ? Per seeded split (441 held-out questions), the one-shot
logistic rule (P(correct) - tau x c over LOGISTIC_TAUS) over the six agentic models and over all eleven, replayed by
``agentic.evaluate.curve``; AIQ over the six models' single-model cost range (both sets share the cheapest and the
dearest model), and the best point at <= 40% of GPT-4's cost.

    python bench/agentic_offered.py --cache CACHE --emb-cache EMB.npz      # CACHE, EMB as bench/agentic_logistic.py
    python bench/agentic_offered.py --cache CACHE --emb-cache EMB.npz --table [--bootstrap 300]

``--table`` (ninth session): also the logistic-valued agentic table (its default settings) over each offered set, and
paired-bootstrap intervals of table - one-shot (same offered set) and of eleven - six (~4 min per split on 2 cores).
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

from xrouter_lite.agentic.evaluate import (  # noqa: E402
    LOGISTIC_TAUS, curve, logistic_oneshot, logistic_p, mean_costs, pairable_of,
)
from xrouter_lite.agentic.logistic_table import LogisticTable  # noqa: E402
from xrouter_lite.agentic.state import AgenticConfig, load_questions  # noqa: E402
from xrouter_lite.metrics import aiq  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--emb-cache", type=Path)
    ap.add_argument("--pool", type=Path, default=REPO / "configs" / "pool_routerbench.yaml")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=300)
    a = ap.parse_args()
    pool, cfg = load_pool(a.pool), AgenticConfig()
    qs = load_questions(a.cache, pool)
    emb = _embeddings(qs, a.emb_cache)
    every = sorted({m for q in qs for m in q.outcomes})
    dearest = "gpt-4-1106-preview"
    for s in a.seeds:
        held = split_prompt_ids({q.prompt_id for q in qs}, 0.2, s)
        tr = [q for q in qs if q.prompt_id not in held]
        te = [q for q in qs if q.prompt_id in held]
        g4 = sum(q.outcomes[dearest].cost for q in te)
        curves = {}
        for name, offered in (("six agentic models", MODELS), ("all eleven", every)):
            p, c = logistic_p(tr, te, emb, offered), mean_costs(tr, offered)
            curves[f"one-shot, {name}"] = curve(name, [(t, logistic_oneshot(p, c, offered, t)) for t in LOGISTIC_TAUS], te, 3)["points"]
            if a.table:
                t = LogisticTable(tr, np.stack([emb[q.prompt_id] for q in tr]), offered, pairable_of(pool, offered, cfg), c,
                                  turn_penalty=cfg.turn_penalty)
                P = t.predict(np.stack([emb[q.prompt_id] for q in te]))
                pr = {q.prompt_id: P[i] for i, q in enumerate(te)}
                curves[f"table, {name}"] = curve(name, [(x, t.policy(pr, x, cfg.max_calls)) for x in LOGISTIC_TAUS], te,
                                                 cfg.max_calls)["points"]

        cost6 = np.array([[q.outcomes[m].cost for m in MODELS] for q in te])  # the six models' range, once a split

        def aiq_of(k, idx):
            c = cost6[idx].sum(axis=0)
            return aiq([(x["_cost"][idx].sum(), x["_ok"][idx].mean()) for x in curves[k]], float(c.min()), float(c.max()))

        full = np.arange(len(te))
        for k, pts in curves.items():
            best = max((x for x in pts if x["_cost"].sum() <= 0.4 * g4), key=lambda x: x["_ok"].mean())
            print(f"split {s} {k:30s} AIQ {aiq_of(k, full):.4f}  best at <= 40% of GPT-4's cost: {best['_ok'].mean():.1%} at "
                  f"{best['_cost'].sum() / g4:.0%}", flush=True)
        if a.table:
            rng = np.random.default_rng(s)
            idxs = [rng.integers(0, len(te), len(te)) for _ in range(a.bootstrap)]
            for x, y in (("table, all eleven", "one-shot, all eleven"), ("table, six agentic models", "one-shot, six agentic models"),
                         ("table, all eleven", "table, six agentic models")):
                d = np.array([aiq_of(x, i) - aiq_of(y, i) for i in idxs])
                print(f"split {s} {x} - {y}: {aiq_of(x, full) - aiq_of(y, full):+.4f} "
                      f"[{np.quantile(d, 0.025):+.4f}, {np.quantile(d, 0.975):+.4f}]", flush=True)

if __name__ == "__main__":
    main()
