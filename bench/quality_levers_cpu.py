"""Issue 14 levers that need no GPU, on the three seeded splits of bench/router_quality.py (held-out 20%, validation
25% of the rest, exactly the pairs stage's split): the `logistic` router's formula (per-model logistic regression of
correctness on the embedding alone, fitted on the training side), a per-model logistic regression of correctness on the question's
all-MiniLM-L6-v2 embedding plus a task one-hot ("embedding logistic", fitted on the training side), the same fitted
on the fit part only and stacked with the router's scores in the decision head (on validation), and the average of
the router's head with the embedding logistic. Exact curves and AIQ as `bench/router_quality.py` computes them.

    python bench/quality_levers_cpu.py --cache CACHE --emb-cache EMB.npz --decisions docs/results/quality/splits

CACHE: the three RouterBench training files imported (`xrouter-lite import routerbench ...`); EMB.npz: the embeddings
bench/router_quality.py --knn caches; --decisions: the folder with decisions_s{S}_test/val.jsonl.gz of the GPU run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from router_quality import _embeddings, _split_ids  # noqa: E402

from xrouter_lite.decision import _features, _fit_logistic, curve_of_envelopes, envelope, fit_head, read_scores  # noqa: E402
from xrouter_lite.evaluate import load_prompts, mean_cost_per_query  # noqa: E402
from xrouter_lite.metrics import aiq  # noqa: E402


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--decisions", type=Path, default=REPO / "docs/results/quality/splits")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the embedding logistic")
    a = ap.parse_args()
    prompts, _ = load_prompts(a.cache)
    by = {p.prompt_id: p for p in prompts}
    models = sorted(prompts[0].outcomes)
    emb = _embeddings(prompts, a.emb_cache)
    outcome = {p.prompt_id: {m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in prompts}
    dsl = sorted({p.dataset for p in prompts})

    def feats(ids):
        E = np.stack([emb[i] for i in ids])
        T = np.array([[by[i].dataset == d for d in dsl] for i in ids], float)
        return np.hstack([E, T * 3])

    def logit_probs(fit_ids, query_ids, f=feats):
        P = np.zeros((len(query_ids), len(models)))
        for j, m in enumerate(models):
            y = np.array([by[i].outcomes[m].correct for i in fit_ids])
            P[:, j] = LogisticRegression(C=a.C, max_iter=3000).fit(f(fit_ids), y).predict_proba(f(query_ids))[:, 1]
        return P

    def emb_only(ids):  # what the `logistic` router fits (simple_routers.LogisticRouter): no task label
        return np.stack([emb[i] for i in ids])

    table = {}
    for seed in a.seeds:
        test, val, fit = _split_ids(prompts, seed, 0.2, 0.25)
        side, tq, vq, fq = sorted(fit | val), sorted(test), sorted(val), sorted(fit)
        ts = read_scores(a.decisions / f"decisions_s{seed}_test.jsonl.gz")
        vs = read_scores(a.decisions / f"decisions_s{seed}_val.jsonl.gz")
        cpq = mean_cost_per_query([by[i] for i in side])
        top = max(cpq.values())
        cvec = {m: cpq[m] / top for m in models}
        outs = [outcome[i] for i in tq]
        sing = [sum(o[m][1] for o in outs) for m in models]
        acc = {d: {m: np.mean([by[i].outcomes[m].correct for i in side if by[i].dataset == d]) for m in models} for d in dsl}
        util = {"per-task rule": [acc[by[i].dataset] for i in tq]}
        vcor = [{m: outcome[i][m][0] for m in models} for i in vq]
        head = fit_head([vs[i] for i in vq], vcor)
        util["router + decision head"] = [head.p_correct(ts[i]) for i in tq]
        util["logistic router (embeddings only, no task label)"] = [dict(zip(models, r)) for r in logit_probs(side, tq, emb_only)]
        pe = logit_probs(side, tq)
        util["embedding logistic (training side)"] = [dict(zip(models, r)) for r in pe]
        pv, pt = logit_probs(fq, vq), logit_probs(fq, tq)
        lg = lambda p: np.log(np.clip(p, 1e-4, 1 - 1e-4) / (1 - np.clip(p, 1e-4, 1 - 1e-4)))  # noqa: E731
        Xv = np.hstack([_features([[vs[i][m] for m in models] for i in vq]), lg(pv)])
        Xt = np.hstack([_features([[ts[i][m] for m in models] for i in tq]), lg(pt)])
        Yv = np.array([[float(c[m]) for m in models] for c in vcor])
        P = np.zeros((len(tq), len(models)))
        for j in range(len(models)):
            w = _fit_logistic(Xv, Yv[:, j], 100.0)
            P[:, j] = 1 / (1 + np.exp(-(w[0] + Xt @ w[1:])))
        util["head over router scores + embedding logistic"] = [dict(zip(models, r)) for r in P]
        util["average of head and embedding logistic"] = [{m: 0.5 * x[m] + 0.5 * y[m] for m in models}
                                                          for x, y in zip(util["router + decision head"], util["embedding logistic (training side)"])]
        for k, u in util.items():
            pts = curve_of_envelopes([envelope(x, cvec) for x in u], outs)
            table.setdefault(k, []).append(aiq([(p["total_cost"], p["accuracy"]) for p in pts], min(sing), max(sing)))
    print(f"{'AIQ (exact curves, held-out)':48s} " + " ".join(f"split {s}" for s in a.seeds) + "   mean")
    for k, v in table.items():
        print(f"{k:48s} " + " ".join(f"{x:7.4f}" for x in v) + f"  {np.mean(v):.4f}")


if __name__ == "__main__":
    main()
