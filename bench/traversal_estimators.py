"""Issue 15, third session: other ways to learn the `logistic` router's per-model P(correct) from a cost-ordered cache
(explore 0.08), against the same recipe on the full cache of each seeded split. CPU only; the caches of
bench/traversal_savings.py and the MiniLM embeddings of bench/traversal_logistic.py.

    python bench/traversal_estimators.py FULL CO_DIR --emb-cache EMB.npz [--C 1.0]

Variants (A_m = "a model cheaper than m was right", known on every cost-ordered row):
  ipw          the router's default: inverse-propensity weights on explored A_m rows (1 / explored share)
  decomp-const P = P(A_m|x) q_m + (1 - P(A_m|x)) P(m|x, not A_m), q_m = m's rate on the explored A_m rows
  decomp-C     the same with q_m(x) a logistic regression (C) on the explored A_m rows
  cstar        unknown labels soft-imputed from the explored rate of m given the cheapest correct model
Both arms use the same C; --C 0.3 shows the gap shrinking with a weaker full-cache router.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    import numpy as np

    from router_quality import _embeddings
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.evaluate import load_prompts, mean_cost_per_query
    from xrouter_lite.pairs import split_prompt_ids
    from xrouter_lite.records import iter_records
    from xrouter_lite.simple_routers import correctness_classifier

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", type=Path)
    ap.add_argument("co_dir", type=Path)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--C", type=float, default=1.0)
    a = ap.parse_args()
    full, _ = load_prompts(a.full)
    emb = _embeddings(full, a.emb_cache)
    models = sorted(full[0].outcomes)

    def fit(X, y, w=None):
        return correctness_classifier(X, y, a.C, sample_weight=w)

    X = lambda ps: np.stack([emb[p.prompt_id] for p in ps])  # noqa: E731
    gaps: dict[str, list[float]] = {}
    for seed in a.seeds:
        test = split_prompt_ids({p.prompt_id for p in full}, 0.2, seed)
        cop = a.co_dir / f"split{seed}" / "cost_ordered.jsonl"
        co, _ = load_prompts(cop)
        explored = {r.prompt_id for _ln, r in iter_records(cop) if r.traversal == "explore"}
        tq = sorted((p for p in full if p.prompt_id in test), key=lambda p: p.prompt_id)
        outs = [{m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in tq]
        Et = X(tq)
        fside = [p for p in full if p.prompt_id not in test]
        cside = [p for p in co if p.prompt_id not in test]
        share = sum(p.prompt_id in explored for p in cside) / len(cside)
        cpq_f, cpq = mean_cost_per_query(fside), mean_cost_per_query(cside)
        cvec_f = {m: cpq_f[m] / max(cpq_f.values()) for m in models}
        cvec_c = {m: cpq[m] / max(cpq.values()) for m in models}
        order = sorted(models, key=lambda m: cpq[m])

        def A(p, m):
            return any(o.correct for mm, o in p.outcomes.items() if cpq[mm] < cpq[m])

        def cstar(p):
            return next((m for m in order if m in p.outcomes and p.outcomes[m].correct), None)

        ex = [p for p in cside if p.prompt_id in explored]
        arms = {"full": ({m: fit(X(fside), [p.outcomes[m].correct for p in fside])(Et) for m in models}, cvec_f)}
        P = {}
        for m in models:
            rows = [p for p in cside if m in p.outcomes]
            w = np.array([1 / share if (p.prompt_id in explored and A(p, m)) else 1.0 for p in rows])
            P[m] = fit(X(rows), [p.outcomes[m].correct for p in rows], w)(Et)
        arms["ipw"] = (P, cvec_c)
        for kind in ("decomp-const", "decomp-C"):
            P = {}
            for m in models:
                a_lab = [A(p, m) for p in cside]
                pA = fit(X(cside), a_lab)(Et) if any(a_lab) else np.zeros(len(tq))
                nA = [p for p in cside if not A(p, m) and m in p.outcomes]
                pn = fit(X(nA), [p.outcomes[m].correct for p in nA])(Et) if nA else np.zeros(len(tq))
                exA = [p for p in ex if A(p, m)]
                if not exA:
                    qa = np.full(len(tq), 0.5)
                elif kind == "decomp-const":
                    qa = np.full(len(tq), np.mean([p.outcomes[m].correct for p in exA]))
                else:
                    qa = fit(X(exA), [p.outcomes[m].correct for p in exA])(Et)
                P[m] = pA * qa + (1 - pA) * pn
            arms[kind] = (P, cvec_c)
        P = {}
        for m in models:
            pm = np.mean([p.outcomes[m].correct for p in ex])
            rows, ys, ws = [], [], []
            for p in cside:
                if m in p.outcomes:
                    rows.append(p), ys.append(p.outcomes[m].correct), ws.append(1.0)
                else:
                    sub = [e for e in ex if cstar(e) == cstar(p)]
                    q = (sum(e.outcomes[m].correct for e in sub) + pm) / (len(sub) + 1)
                    rows += [p, p]
                    ys += [1, 0]
                    ws += [q, 1 - q]
            P[m] = fit(X(rows), ys, np.array(ws))(Et)
        arms["cstar"] = (P, cvec_c)
        def a_of(k):
            Pk, cv = arms[k]
            return aiq_of_envelopes([envelope({m: float(Pk[m][i]) for m in models}, cv) for i in range(len(tq))],
                                    outs, models)

        af = a_of("full")
        line = [f"split {seed} full {af:.4f}"]
        for k in arms:
            if k != "full":
                ak = a_of(k)
                gaps.setdefault(k, []).append(af - ak)
                line.append(f"{k} {ak:.4f} (gap {af - ak:+.4f})")
        print("; ".join(line), flush=True)
    for k, d in gaps.items():
        print(f"{k}: mean gap {np.mean(d):+.4f}, max {max(d):+.4f}")


if __name__ == "__main__":
    main()
