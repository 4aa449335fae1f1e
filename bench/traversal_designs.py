"""Issue 15, fourth session: exploration designs and estimator variants for the `logistic` router on a cost-ordered
cache, compared on INNER folds of each split's training side (2 folds x 80/20, several exploration draws), never on
the held-out questions. A simulation on the recorded answers (order: each model's mean cost on the fold's training
part), not the cache command's replay (bench/traversal_draws.py is that).

    python bench/traversal_designs.py FULL --emb-cache EMB.npz designs      # q0.08 a0 a0.5 a1 a-0.5
    python bench/traversal_designs.py FULL --emb-cache EMB.npz estimators   # C 0.5 / 1 / 2, weight clipping 3 / 5
    python bench/traversal_designs.py FULL --emb-cache EMB.npz dr           # inverse propensity vs doubly robust
    python bench/traversal_designs.py FULL --emb-cache EMB.npz cv           # C per model by weighted 5-fold log-loss
    python bench/traversal_designs.py FULL --emb-cache EMB.npz prune        # drop models from the cost-ordered part
    python bench/traversal_designs.py FULL --emb-cache EMB.npz strata       # exploration by where the traversal stopped
    python bench/traversal_designs.py FULL --emb-cache EMB.npz multitask    # one joint logistic regression of all models
    python bench/traversal_designs.py FULL --emb-cache EMB.npz nested       # dear dominated models explored on fewer rows
    python bench/traversal_designs.py FULL --emb-cache EMB.npz text         # plain text statistics next to the embedding
    python bench/traversal_designs.py FULL --emb-cache EMB.npz pca          # the embedding on its top principal directions
    python bench/traversal_designs.py FULL --emb-cache EMB.npz cstar        # + where the first correct answer came, predicted
    python bench/traversal_designs.py FULL --emb-cache EMB.npz explore      # question-level exploration 6% ... 12%
    python bench/traversal_designs.py FULL --emb-cache EMB.npz swap         # diagnostic: which models' labels the gap is
    python bench/traversal_designs.py FULL --emb-cache EMB.npz tiers        # cheap models explored on more questions
    python bench/traversal_designs.py FULL --emb-cache EMB.npz tierfix      # the same at fixed rates, 12 draws a fold
    python bench/traversal_designs.py FULL --emb-cache EMB.npz subsample    # no cost-ordered part: full rows only

Designs (same expected cost as the question-level 8% exploration of the fold): ``q0.08`` explores 8% of the questions
fully (the cache's ``--explore``); ``aX`` explores each skipped (question, model) with probability
p_m = min(1, k x rel_cost_m^-X) (X = 0: one rate for every model; X > 0: cheap models more), k matched to the budget.
Every arm weighs a model's explored rows where a cheaper model was right by 1 / (their explored share), per model.
``prune`` (sixth session): the cost-ordered part skips the models the explored rows show ``dominated`` (a model no
dearer was right as often) or not ``paying`` (greedy: dropping it lowers the traversal's cost on the explored rows),
and the money saved buys a larger exploration sample at the 8% design's cost of the same draw.
``multitask``, ``text``, ``pca``, ``cstar`` (ninth session): other recipes, in both arms (the full-cache reference changes too).
Tenth session: ``explore`` sweeps the exploration fraction; ``swap`` (a diagnostic, not a design) replaces the
classifiers of one model, of the eight cheap ones or of the three dear ones (mean cost >= half the dearest's) on the 8%
design by the full cache's, to see whose missing labels the gap is made of; ``tiers`` explores the three dear models on
a fraction e_lo of the questions and the eight cheap ones on the largest layer e_hi (nested, the cache's own draw) that
keeps the cost of the same draw's 8% design (``tier-0.08`` is the 8% design itself); ``tierfix`` fixes (e_lo, e_hi) as
a cache command would, over 12 draws a fold; ``subsample`` spends the 8% design's cost on full rows of a random
sample only (no cost-ordered part; unweighted): what the money buys without the traversal.
Prints each fold's gap (full-cache AIQ minus the arm's) and the mean over splits, folds and draws.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def soft_logistic(X, t, C=1.0):
    """argmin C sum(softplus(z) - t z) + ||beta||^2 / 2 over z = X beta + b (sklearn's C, intercept free): the logistic
    regression of soft labels t, which may lie outside [0, 1]. Returns a function of a feature matrix giving P."""
    import numpy as np
    from scipy.optimize import minimize

    X, t = np.asarray(X, float), np.asarray(t, float)
    d = X.shape[1]

    def f(th):
        z = X @ th[:d] + th[d]
        r = C * (1 / (1 + np.exp(-z)) - t)
        return C * np.sum(np.logaddexp(0, z) - t * z) + 0.5 * th[:d] @ th[:d], np.concatenate([X.T @ r + th[:d], [r.sum()]])

    th = minimize(f, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": 3000, "gtol": 1e-8}).x
    return lambda Z: 1 / (1 + np.exp(-(np.asarray(Z) @ th[:d] + th[d])))


def choose_c(X, y, w=None, grid=(0.1, 0.3, 1.0, 3.0), folds: int = 5) -> float:
    """The C of ``grid`` with the lowest 5-fold (stratified, seeded) log-loss of the classifier on these rows, each
    row's loss weighted by its own weight (a cost-ordered cache's explored rows count for the questions they stand
    for); 1.0 where a class has fewer than ``folds`` rows."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from xrouter_lite.simple_routers import correctness_classifier

    X, y = np.asarray(X), np.asarray(y).astype(int)
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    if len(set(y.tolist())) < 2 or np.bincount(y).min() < folds:
        return 1.0
    split = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y))

    def loss(c):
        tot = 0.0
        for tr, va in split:
            p = np.clip(correctness_classifier(X[tr], y[tr], c, sample_weight=w[tr])(X[va]), 1e-6, 1 - 1e-6)
            tot -= float((w[va] * (y[va] * np.log(p) + (1 - y[va]) * np.log(1 - p))).sum())
        return tot

    return min(grid, key=loss)


def main() -> None:
    import numpy as np

    from router_quality import label_matrices
    from xrouter_lite.decision import aiq_of_envelopes, envelope
    from xrouter_lite.pairs import split_prompt_ids
    from xrouter_lite.simple_routers import correctness_classifier
    from xrouter_lite.traversal import is_explored

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", type=Path)
    ap.add_argument("what", choices=["designs", "estimators", "dr", "cv", "prune", "strata", "multitask", "nested", "text", "pca", "cstar", "explore", "swap", "tiers", "tierfix", "subsample", "truncate"])
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    a = ap.parse_args()
    full, models, ids, Y, Cq, E = label_matrices(a.full, a.emb_cache)
    M = len(models)

    def u(*parts):
        return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big") / 2**64

    def explore_u(pid, seed):
        """The uniform number behind ``traversal.is_explored`` (explored at fraction e iff below e): nested layers on
        the cache's own draw, so an arm and the 8% design share their random numbers."""
        h = hashlib.sha256(f"explore\x1f{seed}\x1f{pid}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    def base_mask(rows, order):
        L = np.zeros((len(rows), M), bool)
        for k, r in enumerate(rows):
            for m in order:
                L[k, m] = True
                if Y[r, m]:
                    break
        return L

    def traverse(rows, design, seed):
        L = base_mask(rows, np.argsort(Cq[rows].mean(0)))
        for k, r in enumerate(rows):
            if design[0] == "q":
                L[k] |= is_explored(ids[r], design[1], seed)
            else:
                for m in range(M):
                    if not L[k, m] and u("m", seed, ids[r], models[m]) < design[1][m]:
                        L[k, m] = True
        return L

    def rates(rows, target, alpha):
        cpq = Cq[rows].mean(0)
        base = base_mask(rows, np.argsort(cpq))
        sk, tot, b0, rel = (~base) * Cq[rows], Cq[rows].sum(), (base * Cq[rows]).sum(), cpq / cpq.max()
        lo, hi = 0.0, 1e6
        for _ in range(100):
            mid = (lo + hi) / 2
            p = np.minimum(1, mid * rel ** (-alpha))
            lo, hi = (mid, hi) if (b0 + (sk * p).sum()) / tot < target else (lo, mid)
        return np.minimum(1, lo * rel ** (-alpha))

    def cheaper_right(rows, cpq, m, called=None):
        """A_m per row: a model cheaper than m (by mean cost ``cpq``; among ``called`` when given) answered right."""
        cheaper = cpq < cpq[m]
        if called is not None:
            cheaper &= called
        return (Y[rows][:, cheaper].sum(1) > 0) if cheaper.any() else np.zeros(len(rows), bool)

    def dominated(rows, expl):
        """Per model: some model no dearer (mean cost) was right at least as often on the explored rows."""
        cpq, acc = Cq[rows].mean(0), Y[rows][expl].mean(0)
        return np.array([any(j != m and cpq[j] <= cpq[m] and acc[j] >= acc[m] for j in range(M)) for m in range(M)])

    def paying(rows, expl):
        """Per model: kept in the cost-ordered traversal. Greedy: drop the model whose removal lowers the traversal's
        mean cost on the explored rows most, while one does (a call that does not pay for the calls it saves); the
        most accurate model there (the traversal's last resort) stays."""
        cpq, R = Cq[rows].mean(0), [rows[k] for k in np.where(expl)[0]]
        keep, top = np.ones(M, bool), int(np.argmax(Y[R].mean(0)))

        def cost(kp):
            order = [m for m in np.argsort(cpq) if kp[m]]
            tot = 0.0
            for r in R:
                for m in order:
                    tot += Cq[r, m]
                    if Y[r, m]:
                        break
            return tot

        best = cost(keep)
        while True:
            trials = [(cost(np.where(np.arange(M) == m, False, keep)), m) for m in np.where(keep)[0] if m != top]
            c, m = min(trials)
            if c >= best:
                return keep
            keep[m], best = False, c

    def traverse_pruned(rows, e, seed, rule="dominated"):
        """Explore e of the questions fully; on the others, cost-ordered over the models the explored rows keep
        (``dominated``: not dominated; ``paying``: calls that pay for themselves). Returns the label mask and the
        called models."""
        expl = np.array([is_explored(ids[r], e, seed) for r in rows])
        keep = ~dominated(rows, expl) if rule == "dominated" else paying(rows, expl)
        cpq = Cq[rows].mean(0)
        order = [m for m in np.argsort(cpq) if keep[m]]
        L = base_mask(rows, order)
        L[expl] = True
        return L, keep

    def traverse_strata(rows, target, beta, seed):
        """Explore question r with a known probability p_r = min(1, lam x (labels it lacks / cost of completing it)
        ^ beta), lam set so the expected cost share is ``target``: a question the traversal stopped early (many
        labels missing) is worth more per dollar. Returns the label mask and p per row (0: nothing missing)."""
        base = base_mask(rows, np.argsort(Cq[rows].mean(0)))
        miss = ~base
        gain, cc = miss.sum(1), (miss * Cq[rows]).sum(1)
        score = np.where(gain > 0, (gain / np.maximum(cc, 1e-12)) ** beta, 0.0)
        tot, b0 = Cq[rows].sum(), (base * Cq[rows]).sum()
        lo, hi = 0.0, 1e12
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (b0 + (np.minimum(1, mid * score) * cc).sum()) / tot < target else (lo, mid)
        p = np.minimum(1, lo * score)
        L = base.copy()
        for k, r in enumerate(rows):
            if p[k] > 0 and u("s", seed, ids[r]) < p[k]:
                L[k] = True
        return L, p

    def traverse_nested(rows, e_hi, e_lo, seed, dear_share=0.5, keep_top=True, cache_draw=False):
        """Question-level exploration in two nested layers: the models whose mean cost is at least ``dear_share`` of
        the dearest one's, except the most accurate model on the inner layer's rows, are explored on the questions of
        the inner layer only (rate ``e_lo``); every other model on the outer layer (rate ``e_hi``; inner within it).
        The dear dominated models (claude-v1, claude-v2 here: half of the full traversal's cost) are explored less and
        the money buys a larger sample of the others. ``keep_top`` False: the most accurate model is inner too (the
        tenth session's tiers); ``cache_draw``: the layers drawn as the cache draws its exploration sample.
        Returns the label mask and the models of the inner layer."""
        cpq = Cq[rows].mean(0)
        L = base_mask(rows, np.argsort(cpq))
        uu = np.array([explore_u(ids[r], seed) if cache_draw else u("n", seed, ids[r]) for r in rows])
        inner, outer = uu < e_lo, uu < e_hi
        top = int(np.argmax(Y[np.array(rows)[inner]].mean(0))) if inner.any() else int(np.argmax(cpq))
        dear = (cpq >= dear_share * cpq.max()) & ((np.arange(M) != top) | (not keep_top))
        L[outer] |= ~dear
        L[inner] = True
        return L, dear

    def share_weights(lab, A, clip=None):
        """1 on every row; on the rows of A_m (a cheaper model right) 1 / (their explored share), capped at ``clip``:
        the inverse-propensity weights of the 8% design (``lab``: m's label known)."""
        w = np.ones(len(lab))
        if A.any() and lab[A].mean() > 0:
            w[A] = min(1.0 / lab[A].mean(), clip or np.inf)
        return w

    def predict(rows, L, test, C=1.0, clip=None, cv=None, called=None, pruned_w=1.0, prop=None, poststrat=False,
                norm=False):
        """``prop``: each row's known exploration probability (weights 1 / p on the explored rows of A_m);
        ``poststrat``: the explored share of A_m taken per stratum of the cheapest correct model, not overall."""
        rows, cpq = np.array(rows), Cq[rows].mean(0)
        P = np.zeros((len(test), M))
        for m in range(M):
            if called is not None and not called[m]:  # never called off the exploration sample: its rows, weight pruned_w
                sel = np.where(L[:, m])[0]
                w = np.full(len(sel), pruned_w if pruned_w > 0 else 1.0 / L[:, m].mean())
                P[:, m] = correctness_classifier(E[rows[sel]], Y[rows[sel], m], C, sample_weight=w)(E[test])
                continue
            lab, A = L[:, m], cheaper_right(rows, cpq, m, called)
            if prop is not None:
                w = np.ones(len(rows))
                ex = A & lab
                w[ex] = 1.0 / prop[ex]
            elif poststrat:
                w = np.ones(len(rows))
                order = np.argsort(cpq)
                cstar = np.array([next((j for j in order if Y[r, j]), -1) for r in rows])
                for c in set(cstar[A].tolist()):
                    st = A & (cstar == c)
                    if lab[st].any():
                        w[st] = 1.0 / lab[st].mean()
            else:
                w = share_weights(lab, A, clip)
            sel = np.where(lab)[0]
            if norm:  # weights to mean 1 over the rows known: the penalty weighs as for that many plain rows
                w = w * len(sel) / w[sel].sum()
            c = choose_c(E[rows[sel]], Y[rows[sel], m], w[sel], cv) if cv else C
            P[:, m] = correctness_classifier(E[rows[sel]], Y[rows[sel], m], c, sample_weight=w[sel])(E[test])
        return P

    def predict_dr(rows, L, test, how, C=1.0):
        """Doubly robust: every A_m row enters with a soft label, g (an outcome model from the explored A_m rows: their
        rate of m, ``const``, or that rate given the cheapest correct model, ``cstar``, smoothed toward it) on the
        unexplored ones and g + (y - g) / (explored share of A_m) on the explored ones; the rows the traversal reached
        keep their label. The logistic loss stays convex with labels outside [0, 1] (softplus(z) - t z)."""
        rows, cpq = np.array(rows), Cq[rows].mean(0)
        order = np.argsort(cpq)
        P = np.zeros((len(test), M))
        Yr = Y[rows]
        cstar = np.array([next((j for j in order if Yr[k, j]), -1) for k in range(len(rows))])
        for m in range(M):
            lab, A = L[:, m], cheaper_right(rows, cpq, m)
            t = Yr[:, m].astype(float)
            keep = lab | A
            if A.any():
                ex = A & lab
                pi = ex.sum() / A.sum()
                pm = Yr[ex, m].mean() if ex.any() else 0.5
                g = np.full(len(rows), pm)
                if how == "cstar":
                    for c in set(cstar[A].tolist()):
                        sub = ex & (cstar == c)
                        g[A & (cstar == c)] = (Yr[sub, m].sum() + pm) / (sub.sum() + 1)
                t[A] = g[A]
                if pi > 0:
                    t[ex] = g[ex] + (Yr[ex, m] - g[ex]) / pi
            sel = np.where(keep)[0]
            P[:, m] = soft_logistic(E[rows[sel]], t[sel], C)(E[test])
        return P

    def predict_mt(rows, L, test, a=1.0, b=1.0, C=1.0):
        """Multi-task logistic regression of every model's label at once: z = c_m + x (w0 + W_m), penalty
        a |w0|^2 / 2 + b sum |W_m|^2 / 2, the loss of each known (question, model) label weighted as ``predict``
        weighs it (1 / explored share on the explored rows where a cheaper model was right). The shared direction w0
        learns from every model's labels, so the dear models' classifiers borrow from the rows the cheap ones have.
        a = inf, b = 1 is ``predict`` (C 1) exactly."""
        from scipy.optimize import minimize

        rows, cpq = np.array(rows), Cq[rows].mean(0)
        X, Yr = E[rows], Y[rows].astype(float)
        Wt = np.stack([np.where(L[:, m], share_weights(L[:, m], cheaper_right(rows, cpq, m)), 0.0) for m in range(M)],
                      axis=1)
        d = X.shape[1]
        shared = np.isfinite(a)

        def unpack(th):
            W = th[:d * M].reshape(d, M)
            c = th[d * M:d * M + M]
            w0 = th[d * M + M:] if shared else np.zeros(d)
            return W, c, w0

        def f(th):
            W, c, w0 = unpack(th)
            z = X @ (W + w0[:, None]) + c
            R = C * Wt * (1 / (1 + np.exp(-z)) - Yr)
            loss = C * np.sum(Wt * (np.logaddexp(0, z) - Yr * z)) + 0.5 * b * np.sum(W * W)
            gW, gc = X.T @ R + b * W, R.sum(0)
            g = [gW.ravel(), gc]
            if shared:
                loss += 0.5 * a * w0 @ w0
                g.append(X.T @ R.sum(1) + a * w0)
            return loss, np.concatenate(g)

        th = minimize(f, np.zeros(d * M + M + (d if shared else 0)), jac=True, method="L-BFGS-B",
                      options={"maxiter": 5000, "gtol": 1e-7}).x
        W, c, w0 = unpack(th)
        return 1 / (1 + np.exp(-(E[test] @ (W + w0[:, None]) + c)))

    def aiq(P, test, rows):
        cpq = Cq[rows].mean(0)
        cvec = {m: cpq[j] / cpq.max() for j, m in enumerate(models)}
        outs = [{m: (bool(Y[t, j]), Cq[t, j]) for j, m in enumerate(models)} for t in test]
        return aiq_of_envelopes([envelope({m: float(P[i, j]) for j, m in enumerate(models)}, cvec)
                                 for i in range(len(test))], outs, models)

    arms = {
        "designs": {d: d for d in ("q0.08", "a0", "a0.5", "a1", "a-0.5")},
        "estimators": {"C1": {}, "C0.5": {"C": 0.5}, "C2": {"C": 2.0}, "clip5": {"clip": 5}, "clip3": {"clip": 3}},
        "dr": {"C1": {}, "dr-const": {"dr": "const"}, "dr-cstar": {"dr": "cstar"}},
        "cv": {"C1": {}, "Ccv": {"cv": [0.1, 0.3, 1.0, 3.0]}},
        "prune": {"C1": {}, "prune-w1": {"pruned_w": 1.0}, "prune-wshare": {"pruned_w": 0.0},
                  "pay-w1": {"pruned_w": 1.0, "rule": "paying"}, "pay-wshare": {"pruned_w": 0.0, "rule": "paying"}},
        "multitask": {"C1": {}, "mt-inf-1": {"mt": (np.inf, 1.0)}, "mt-1-3": {"mt": (1.0, 3.0)},
                      "mt-1-10": {"mt": (1.0, 10.0)}, "mt-0.3-3": {"mt": (0.3, 3.0)}, "mt-3-30": {"mt": (3.0, 30.0)}},
        "nested": {"C1": {}, "nest-0.02": {"e_lo": 0.02}, "nest-0.04": {"e_lo": 0.04}, "nest-0.06": {"e_lo": 0.06}},
        "text": {"C1": {}, "text0.1": {"text": 0.1}, "text0.3": {"text": 0.3}},
        "pca": {"C1": {}, "pca16": {"pca": 16}, "pca32": {"pca": 32}, "pca64": {"pca": 64}, "pca128": {"pca": 128}},
        "cstar": {"C1": {}, "cstar0.3": {"cstar": 0.3}, "cstar1": {"cstar": 1.0}},
        "tiers": {"C1": {}, **{f"tier-{e}": {"e_lo": e, "tiers": True} for e in (0.08, 0.07, 0.06, 0.05, 0.04)}},
        "tierfix": {"C1": {}, "q0.09": {"e": 0.09},
                    **{f"tier-{lo}-{hi}": {"e_lo": lo, "e_hi": hi} for lo, hi in ((0.06, 0.15), (0.06, 0.18), (0.06, 0.2),
                                                                                 (0.07, 0.15), (0.05, 0.2))}},
        "explore": {f"q{e:.2f}": {"e": e} for e in (0.06, 0.07, 0.08, 0.09, 0.10, 0.12)},
        "subsample": {"C1": {}, "sub": {"sub": True}, "norm": {"norm": True}},
        "truncate": {"C1": {}, "norm": {"norm": True}, "sub": {"sub": True},
                     **{f"trunc{k}{n}": {"trunc": k, "norm": bool(n)} for k in (2, 3, 5, 8) for n in ("", "-norm")}},
        "swap": {"C1": {}, **{f"swap-{m.split('/')[-1]}": {"swap": [j]} for j, m in enumerate(models)},
                 "swap-cheap8": {"swap": list(np.argsort(Cq.mean(0))[:-3])},
                 "swap-dear3": {"swap": list(np.argsort(Cq.mean(0))[-3:])}},
        "strata": {"C1": {}, "poststrat": {"poststrat": True}, "strata-b1": {"beta": 1.0}, "strata-b0.5": {"beta": 0.5},
                   "strata-b2": {"beta": 2.0}},
    }[a.what]
    E0 = E
    S = None
    RECIPES = ("cv", "mt", "text", "pca", "cstar")  # arm keys that change the recipe, so the full-cache reference too

    def features(rows, test, kind, w):
        """The embedding with more features (``text``, ``cstar``) or projected (``pca``), fitted on ``rows``."""
        nonlocal S
        if kind == "text":  # the five plain text statistics of bench/text_features.py, standardised, weight w
            from text_features import text_stats

            if S is None:
                S = np.array([text_stats(p.prompt) for p in full])
            mu, sd = S[rows].mean(0), S[rows].std(0) + 1e-9
            return np.hstack([E0, w * (S - mu) / sd])
        if kind == "cstar":  # + P(the first correct model in cost order is among the k cheapest | x), k = 1..M-1:
            from sklearn.model_selection import KFold  # known on every question of either cache; cross-fitted

            r_ = np.array(rows)
            order = np.argsort(Cq[r_].mean(0))
            pos = np.array([next((i for i, m in enumerate(order) if Y[r, m]), M) for r in r_])
            F = np.zeros((len(E0), M - 1))
            test_a = np.array(test)
            for k in range(M - 1):
                y = (pos <= k).astype(int)
                F[test_a, k] = correctness_classifier(E0[r_], y)(E0[test_a])
                for tr_i, va_i in KFold(5, shuffle=True, random_state=k).split(r_):
                    F[r_[va_i], k] = correctness_classifier(E0[r_[tr_i]], y[tr_i])(E0[r_[va_i]])
            F = np.log(np.clip(F, 1e-4, 1 - 1e-4) / (1 - np.clip(F, 1e-4, 1 - 1e-4)))
            return np.hstack([E0, w * F / 4])
        mu = E0[rows].mean(0)  # pca: the top w principal directions of the training rows
        _, _, vt = np.linalg.svd(E0[rows] - mu, full_matrices=False)
        return (E0 - mu) @ vt[:w].T

    def fit(rows, L, test, **kw):
        """An arm's router on label mask ``L``: its features (``features``) swapped in for the fit, then its estimator."""
        nonlocal E
        kind = next((k for k in ("text", "cstar", "pca") if k in kw), None)
        if kind is not None:
            E = features(rows, test, kind, kw.pop(kind))
            try:
                return fit(rows, L, test, **kw)
            finally:
                E = E0
        if "mt" in kw:
            return predict_mt(rows, L, test, *kw["mt"])
        return predict_dr(rows, L, test, kw["dr"]) if "dr" in kw else predict(rows, L, test, **kw)

    n_draws = {"designs": 2, "tiers": 6, "tierfix": 12, "subsample": 12, "truncate": 6}.get(a.what, 3)  # exploration seeds s, s + 10 (, s + 20)
    res: dict[str, list[float]] = {}
    for s in a.seeds:
        held = split_prompt_ids(set(ids), 0.2, s)
        train = [i for i, x in enumerate(ids) if x not in held]
        rng = np.random.default_rng(100 + s)
        for f in range(2):
            perm = rng.permutation(train)
            n = len(perm) // 5
            tr, te = sorted(perm[n:].tolist()), sorted(perm[:n].tolist())
            Pf = predict(tr, np.ones((len(tr), M), bool), te)
            af = aiq(Pf, te, tr)
            af_of = {k: aiq(fit(tr, np.ones((len(tr), M), bool), te, **spec), te, tr)
                     for k, spec in arms.items() if spec.keys() & set(RECIPES)}
            if af_of:
                print(f"split {s} fold {f}: full-cache AIQ C1 {af:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in af_of.items()), flush=True)

            def cost_share(L):
                """Share of the fold's full-traversal cost that the label mask ``L`` (rows ``tr``) pays."""
                return (Cq[tr] * L).sum() / Cq[tr].sum()

            target = cost_share(traverse(tr, ("q", 0.08), s))
            for es in range(s, s + 10 * n_draws, 10):
                t_es = cost_share(traverse(tr, ("q", 0.08), es))  # this draw's cost of the 8% design
                if a.what == "prune":  # per rule, the largest exploration within this draw's cost of the 8% design
                    chosen = {}
                    for rule in ("dominated", "paying"):
                        fits = [(x, traverse_pruned(tr, x, es, rule)) for x in np.arange(0.08, 0.2, 0.0025)]
                        fits = [(x, t) for x, t in fits if cost_share(t[0]) <= t_es]
                        chosen[rule] = fits[-1] if fits else (0.08, traverse_pruned(tr, 0.08, es, rule))
                for k, spec in arms.items():
                    if a.what == "prune" and k != "C1":
                        spec = dict(spec)
                        rule = spec.pop("rule", "dominated")
                        e, (L, called) = chosen[rule]
                        kw = dict(spec, called=called)
                        print(f"  {rule}: explore {e:.4f}, not called {[models[j] for j in np.where(~called)[0]]}")
                    elif a.what == "strata" and "beta" in spec:  # at this draw's cost of the 8% design
                        L, prop = traverse_strata(tr, t_es, spec["beta"], es)
                        kw = {"prop": prop}
                    elif a.what in ("nested", "tiers") and "e_lo" in spec:  # the largest outer layer within the 8% design's cost
                        kt = "tiers" not in spec  # tiers: every model of at least half the dearest's price is inner
                        grid = np.arange(0.08, 0.4, 0.005) if kt else np.arange(spec["e_lo"], 0.6, 0.005)
                        fits = [(x, traverse_nested(tr, x, spec["e_lo"], es, keep_top=kt, cache_draw=not kt)) for x in grid]
                        fits = [(x, t) for x, t in fits if cost_share(t[0]) <= t_es]
                        e_hi, (L, dear) = fits[-1] if fits else (spec["e_lo"], traverse_nested(tr, spec["e_lo"], spec["e_lo"], es,
                                                                                               keep_top=kt, cache_draw=not kt))
                        print(f"  nested: outer {e_hi:.3f} inner {spec['e_lo']} dear {[models[j] for j in np.where(dear)[0]]}")
                        kw = {}
                    elif a.what == "designs":
                        L = traverse(tr, ("q", 0.08) if k == "q0.08" else ("m", rates(tr, target, float(k[1:]))), es)
                        kw = {}
                    elif "e_hi" in spec:  # tierfix: fixed layers (cheap models on e_hi, the dear ones on e_lo)
                        L, _ = traverse_nested(tr, spec["e_hi"], spec["e_lo"], es, keep_top=False, cache_draw=True)
                        kw = {}
                    elif "trunc" in spec:  # the cost-ordered part over the k cheapest models only, the rest explored
                        cpq = Cq[tr].mean(0)
                        called = np.isin(np.arange(M), np.argsort(cpq)[:spec["trunc"]])
                        uu = np.array([explore_u(ids[r], es) for r in tr])

                        def tmask(e):
                            L = base_mask(tr, [m for m in np.argsort(cpq) if called[m]])
                            L[uu < e] = True
                            return L
                        fits = [e for e in np.arange(0.08, 0.3, 0.0025) if cost_share(tmask(e)) <= t_es]
                        L = tmask(fits[-1] if fits else 0.08)
                        print(f"  {k}: explore {L.all(1).mean():.3f}")
                        kw = {"called": called, "norm": spec["norm"]}
                    elif "sub" in spec:  # subsample: no cost-ordered part, the largest full-row sample within the cost
                        uu = np.array([explore_u(ids[r], es) for r in tr])
                        fits = [e for e in np.arange(0.08, 0.3, 0.0025) if cost_share(np.repeat((uu < e)[:, None], M, 1)) <= t_es]
                        L = np.repeat((uu < (fits[-1] if fits else 0.08))[:, None], M, 1)
                        print(f"  subsample: {L[:, 0].mean():.3f} of the questions, every model")
                        kw = {"clip": 1.0}  # a plain random sample: every row weighs 1
                    elif "e" in spec:  # explore: another exploration fraction
                        L, kw = traverse(tr, ("q", spec["e"]), es), {}
                    else:
                        L, kw = traverse(tr, ("q", 0.08), es), spec
                    if "swap" in kw:  # diagnostic: one model's classifier taken from the full cache
                        P = predict(tr, L, te)
                        P[:, kw["swap"]] = Pf[:, kw["swap"]]
                    else:
                        P = fit(tr, L, te, **kw)
                    g = af_of.get(k, af) - aiq(P, te, tr)
                    res.setdefault(k, []).append(g)
                    share = cost_share(L)
                    print(f"split {s} fold {f} draw {es} {k}: cost share {share:.3f} gap {g:+.4f}", flush=True)
    for k, g in res.items():
        print(f"{k}: mean gap {np.mean(g):+.4f} (sd {np.std(g):.4f}, n {len(g)})")


if __name__ == "__main__":
    main()
