"""Issue 15: the `logistic` router on the cost-ordered cache over several exploration draws per seeded split.

    python bench/traversal_draws.py FULL --emb-cache EMB.npz [--explore 0.08] [--draws 8] [--bootstrap 300]
                                    [--C 1|cv] [--weights ipw|norm] [--subsample] [--truncation-side left]

FULL: the full cache of RouterBench's three training files (`xrouter-lite import routerbench ...`). Per split seed s
(the pairs stage's split, eval_fraction 0.2) and draw k, the cost-ordered traversal with exploration F is replayed on
the training questions (`traversal.simulate_traversal`, the cache command's own replay) with explore seed s + 1000 k
(k = 0 is the split's own draw, the one of bench/traversal_savings.py); the `logistic` router (C 1, inverse-propensity
weights: `simple_routers.labelled_rows`, as `LogisticRouter`) is fitted on each cache's training side on cached
MiniLM embeddings and scored on the split's held-out questions (full rows): exact curves, AIQ. The exploration draw
is a random part of the procedure like the split, so one draw per split is an anecdote: this reports, per split, the
cost share and the gap (full-cache AIQ minus cost-ordered AIQ) of every draw, their mean, and a paired bootstrap over
the held-out questions of (full - mean over draws).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    import numpy as np

    from router_quality import _embeddings
    from traversal_designs import choose_c
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.evaluate import load_prompts, mean_cost_per_query
    from xrouter_lite.pairs import split_prompt_ids
    from xrouter_lite.pool import load_pool
    from xrouter_lite.simple_routers import correctness_classifier, explored_share, labelled_rows
    from xrouter_lite.traversal import explored_ids, is_explored, simulate_traversal

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", type=Path)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--pool", type=Path, default=REPO / "configs/pool_routerbench.yaml")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--explore", type=float, default=0.08)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--C", type=lambda v: v if v == "cv" else float(v), default=1.0,
                    help='C of every classifier, or "cv": per model by weighted 5-fold log-loss (traversal_designs.choose_c)')
    ap.add_argument("--weights", choices=["ipw", "norm"], default="ipw",
                    help="norm: each classifier's inverse-propensity weights scaled to mean 1 over its rows (tenth session)")
    ap.add_argument("--subsample", action="store_true",
                    help="instead of the cost-ordered cache: the full rows of a random sample of the training questions "
                         "(the cache's own draw, nested with the explored ones) costing the same draw's cost share")
    ap.add_argument("--truncation-side", choices=["right", "left"], default="right",
                    help="left: embed the end of prompts over 256 word pieces (with a new --emb-cache; tenth session)")
    a = ap.parse_args()
    pool = load_pool(a.pool)
    full, _ = load_prompts(a.full)
    emb = _embeddings(full, a.emb_cache, a.truncation_side)
    models = sorted(full[0].outcomes)
    rng = np.random.default_rng(0)

    def router_envelopes(train, explored, test):
        share = explored_share(train, explored)
        cpq = mean_cost_per_query(train)
        cvec = {m: cpq[m] / max(cpq.values()) for m in models}
        Et = np.stack([emb[p.prompt_id] for p in test])
        P = {}
        for m in models:
            rows, y, w = labelled_rows(train, m, explored, share)
            X = np.stack([emb[train[i].prompt_id] for i in rows])
            if a.weights == "norm":
                w = w * len(w) / w.sum()
            c = choose_c(X, y, w) if a.C == "cv" else a.C
            P[m] = correctness_classifier(X, y, c, sample_weight=w)(Et)
        return [envelope({m: float(P[m][i]) for m in models}, cvec) for i in range(len(test))]

    all_gaps, all_shares, split_means = [], [], []
    for s in a.seeds:
        held = split_prompt_ids({p.prompt_id for p in full}, 0.2, s)
        test = sorted((p for p in full if p.prompt_id in held), key=lambda p: p.prompt_id)
        outs = [{m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in test]
        train_ids = {p.prompt_id for p in full} - held
        env_full = router_envelopes([p for p in full if p.prompt_id in train_ids], None, test)
        a_full = aiq_of_envelopes(env_full, outs, models)
        envs, gaps, shares = [], [], []
        tr_full = [p for p in full if p.prompt_id in train_ids]  # --subsample's rows and their full traversal's cost
        tot = sum(o.cost for p in tr_full for o in p.outcomes.values())
        for k in range(a.draws):
            with tempfile.TemporaryDirectory() as td:
                out = Path(td) / "co.jsonl"
                rep = simulate_traversal(a.full, pool, "cost-ordered", explore=a.explore, seed=s + 1000 * k,
                                         out=out, ids=train_ids)
                co, _ = load_prompts(out)
                explored = explored_ids(out)
            share, n_exp = rep.cost_fraction, rep.explored_questions
            if a.subsample:  # the same money on full rows only: the largest nested sample within this draw's cost
                co = [p for p in tr_full if is_explored(p.prompt_id, rep.cost_fraction, s + 1000 * k)]
                share, n_exp, explored = sum(o.cost for p in co for o in p.outcomes.values()) / tot, len(co), None
            env = router_envelopes(co, explored, test)
            ak = aiq_of_envelopes(env, outs, models)
            envs.append(env), gaps.append(a_full - ak), shares.append(share)
            print(f"split {s} draw {k} (explore seed {s + 1000 * k}): {n_exp} explored, cost share "
                  f"{share:.1%}, AIQ full {a_full:.4f} cost-ordered {ak:.4f} gap {a_full - ak:+.4f}",
                  flush=True)
        diffs = []
        for _ in range(a.bootstrap):
            w = np.bincount(rng.integers(0, len(test), len(test)), minlength=len(test)).tolist()
            f = aiq_of_envelopes(env_full, outs, models, w)
            diffs.append(f - statistics.mean(aiq_of_envelopes(e, outs, models, w) for e in envs))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        mg = statistics.mean(gaps)
        split_means.append(mg)
        all_gaps += gaps
        all_shares += shares
        print(f"split {s}: mean gap over {a.draws} draws {mg:+.4f} [{lo:+.4f}, {hi:+.4f}] (sd {statistics.pstdev(gaps):.4f}, "
              f"max {max(gaps):+.4f}, {sum(g <= 0.01 for g in gaps)}/{len(gaps)} draws within 0.01); cost share "
              f"{min(shares):.1%}-{max(shares):.1%}", flush=True)
    print(f"all: mean gap {statistics.mean(all_gaps):+.4f} (split means {', '.join(f'{g:+.4f}' for g in split_means)}; "
          f"sd over draws {statistics.pstdev(all_gaps):.4f}; {sum(g <= 0.01 for g in all_gaps)}/{len(all_gaps)} draws "
          f"within 0.01); cost share {min(all_shares):.1%}-{max(all_shares):.1%} (mean {statistics.mean(all_shares):.1%})")


if __name__ == "__main__":
    main()
