"""The logistic-valued agentic policy: the cluster table's states and backward induction, with each state's values
from per-question logistic regressions on the question's all-MiniLM-L6-v2 embedding instead of cluster averages.

The plan it values (max 3 calls; ``pairable``: the models that may be called two at once):

- root: ``call m`` then answer with it, value P_m(x) - tau x c_m: exactly the one-shot ``logistic`` router
  (``simple_routers.LogisticRouter``, C = 1); or ``call a + b`` at once (a, b pairable), value
  P(agree | x) V(ab, agree) + P(disagree | x) V(ab, disagree) - tau x (c_a + c_b);
- after the pair, with their read answers agreeing or not (s): V(ab, s) = max(P(a right | x, s), P(b right | x, s),
  max over a third model c of P(the majority of a, b, c right | x, s) - tau x c_c); the majority answer of three
  (ties to the dearest model) is the fixed last step.

Every P is ``simple_routers.correctness_classifier`` (L2 logistic regression) fitted on the training questions in
that condition (the rows where a and b agree, say); ``mode="shared"`` fits one classifier per (pair, target) on all
rows with the condition as a +-1 sign times the embedding, so the L2 penalty shrinks the agree and disagree
classifiers toward a common one. c = the models' mean normalised cost (``evaluate.mean_costs``), as the one-shot
router's. ONE decision function (``decide``) serves the replay (evaluation) and the live runner (serving)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..prompting import action_models, call_key, is_select_key, select_key
from .state import Question


def majority(called: Sequence[str], reads: Mapping[str, str | None], costs: Mapping[str, float]) -> str:
    """The answer most read answers agree on (an unread answer stands alone); ties, and the model within the group,
    to the dearest model."""
    def votes(m):
        r = reads.get(m)
        return sum(1 for x in called if reads.get(x) == r) if r is not None else 1
    return max(called, key=lambda m: (votes(m), costs.get(m, 0.0), m))


class LogisticTable:
    """``X``: the training questions' embeddings (rows of ``questions``); ``costs``: normalised mean cost per offered
    model. ``C``: the root (one-shot) classifiers' C; ``C_cond``: the conditional classifiers'; ``mode``: "separate"
    (one classifier per condition) or "shared" (see the module); ``min_rows``: a condition with fewer training rows
    gets its mean (Laplace-smoothed) instead of a classifier; ``escalate=False``: no third call (the pair's answer is
    final). Defaults: the setting chosen on the validation parts of three RouterBench splits (docs/BENCHMARKS.md)."""

    def __init__(self, questions: Sequence[Question], X, offered: Sequence[str], pairable: set[str],
                 costs: Mapping[str, float], *, C: float = 1.0, C_cond: float = 1.0, mode: str = "separate",
                 min_rows: int = 30, turn_penalty: float = 0.001, escalate: bool = True):
        from ..simple_routers import correctness_classifier

        if mode not in ("separate", "shared"):
            raise ValueError(f"mode {mode!r}: 'separate' or 'shared'")
        X = np.asarray(X, dtype=np.float32)
        if len(X) != len(questions) or not len(X):
            raise ValueError(f"{len(questions)} questions but {len(X)} embeddings")
        self.offered, self.costs, self.turn_penalty = list(offered), dict(costs), turn_penalty
        self.pairs = [(a, b) for i, a in enumerate(self.offered) for b in self.offered[i + 1 :]
                      if a in pairable and b in pairable]
        self.escalate = escalate
        ok = {m: np.array([q.outcomes[m].correct for q in questions]) for m in self.offered}
        reads = {m: [q.outcomes[m].read for q in questions] for m in self.offered}
        self.keys: list[tuple] = []
        fns = []

        def add(key, fn):
            self.keys.append(key)
            fns.append(fn)

        def const(p):
            return lambda Z: np.full(len(Z), p)

        def cond_fit(y, rows):
            n = int(rows.sum())
            if n < min_rows:
                return const((float(y[rows].sum()) + 1.0) / (n + 2.0))
            return correctness_classifier(X[rows], y[rows], C_cond)

        for m in self.offered:
            add(("root", m), correctness_classifier(X, ok[m], C))
        for a, b in self.pairs:
            agree = np.array([ra is not None and ra == rb for ra, rb in zip(reads[a], reads[b])])
            add(("agree", a, b), correctness_classifier(X, agree, C_cond))
            targets = [("sel", m, ok[m]) for m in (a, b)]
            if escalate:
                for c in self.offered:
                    if c in (a, b):
                        continue
                    maj = np.array([q.outcomes[majority([a, b, c], {m: r[i] for m, r in reads.items()}, self.costs)].correct
                                    for i, q in enumerate(questions)])
                    targets.append(("esc", c, maj))
            for kind, m, y in targets:
                if mode == "separate":
                    for s in (True, False):
                        add((kind, a, b, s, m), cond_fit(y, agree == s))
                else:
                    g = np.where(agree, 1.0, -1.0).astype(np.float32)[:, None]
                    f = correctness_classifier(np.hstack([X, g * X, g]), y, C_cond)
                    for s in (True, False):
                        sign = 1.0 if s else -1.0
                        add((kind, a, b, s, m), lambda Z, f=f, sign=sign: f(np.hstack([Z, sign * Z, np.full((len(Z), 1), sign, np.float32)])))
        self._fns = fns
        self.pair_set = set(self.pairs)
        # the fitted regressions stacked (one matrix product per question); the rest (constants, shared) one by one
        self._lin = [i for i, f in enumerate(fns) if getattr(f, "linear", None) is not None]
        self._W = np.stack([fns[i].linear[0] for i in self._lin], axis=1) if self._lin else None
        self._b = np.array([fns[i].linear[1] for i in self._lin])
        self._other = [i for i in range(len(fns)) if i not in set(self._lin)]
        self.index = {k: i for i, k in enumerate(self.keys)}

    def predict(self, emb) -> np.ndarray:
        """Every state value's probability for each row of ``emb``: [rows, len(keys)]."""
        from scipy.special import expit

        Z = np.atleast_2d(np.asarray(emb, dtype=np.float32))
        out = np.empty((len(Z), len(self._fns)))
        if self._lin:
            out[:, self._lin] = expit(Z.astype(self._W.dtype) @ self._W + self._b.astype(self._W.dtype))
        for i in self._other:
            out[:, i] = self._fns[i](Z)
        return out

    # -- values of one question (p: one row of ``predict``) ------------------------------------------------------

    def _p(self, p, *key) -> float:
        return float(p[self.index[key]])

    def pair_values(self, p, a: str, b: str, s: bool, tau: float) -> dict[str, float]:
        """Action values after calling a and b (s: their read answers agree)."""
        q = {select_key(a): self._p(p, "sel", a, b, s, a), select_key(b): self._p(p, "sel", a, b, s, b)}
        if self.escalate:
            for c in self.offered:
                if c not in (a, b):
                    q[c] = self._p(p, "esc", a, b, s, c) - tau * self.costs[c] - self.turn_penalty
        return q

    def root_values(self, p, tau: float) -> dict[str, float]:
        q = {m: self._p(p, "root", m) - tau * self.costs[m] for m in self.offered}
        for a, b in self.pairs:
            pa = self._p(p, "agree", a, b)
            v = [max(self.pair_values(p, a, b, s, tau).values()) for s in (True, False)]
            q[call_key([a, b])] = pa * v[0] + (1 - pa) * v[1] - tau * (self.costs[a] + self.costs[b])
        return q

    def decide(self, p, reads: Mapping[str, str | None], legal: Sequence[str], tau: float,
               failed: Sequence[str] = ()) -> str:
        """The action for a state: ``p`` the question's row of ``predict``, ``reads`` the answers read so far (model
        -> read answer, successful calls only), ``legal`` the actions the caller allows (budget, failed models, max
        calls), ``failed`` the models whose call failed. Best value among the legal actions; ties to the cheaper, then the first legal."""
        legal = list(legal)
        if not legal:
            raise ValueError("no legal action")
        ok = [m for m in self.offered if m in reads]
        pair = None
        if len(ok) == 2 and tuple(ok) in self.pair_set:
            pair, s = tuple(ok), reads[ok[0]] is not None and reads[ok[0]] == reads[ok[1]]
        elif len(ok) == 1:  # one answer of a pair whose other call failed: no agreement seen
            pair = next((pr for pr in self.pairs if ok[0] in pr and (set(pr) - {ok[0]}) <= set(failed)), None)
            s = False
        if not ok:
            q = self.root_values(p, tau)
        elif pair is not None:
            q = self.pair_values(p, pair[0], pair[1], s, tau)
        else:
            q = {}
        cand = [a for a in legal if a in q]
        if cand:
            return max(cand, key=lambda a: (round(q[a], 12), -self._cost(a)))
        sel = [action_models(a)[0] for a in legal if is_select_key(a)]
        if sel:  # a state this plan never reaches (three answers, a failed call): the majority answer
            return select_key(majority(sel, reads, self.costs))
        return min(legal, key=lambda a: (self._cost(a), a))

    def _cost(self, a: str) -> float:
        return 0.0 if is_select_key(a) else sum(self.costs.get(m, 0.0) for m in action_models(a))

    def policy(self, preds: Mapping[str, np.ndarray], tau: float, max_calls: int = 3):
        """A replay policy (``replay.replay``) over cached questions; ``preds``: prompt_id -> row of ``predict``."""
        from .state import legal_actions

        pairable = {m for pr in self.pairs for m in pr}

        def pol(q: Question, turns):
            called = [m for t in turns for m in t]
            legal = legal_actions(called, self.offered, pairable, max_calls)
            return self.decide(preds[q.prompt_id], {m: q.outcomes[m].read for m in called}, legal, tau)

        return pol


def build_from_logistic_router(router, train_cache, pool, offered: Sequence[str] | None = None, cfg=None, **kw) -> LogisticTable:
    """The policy over a fitted ``LogisticRouter``'s training embeddings (its encoder, its C at the root), its
    training questions read from ``train_cache`` (those with an answer of every offered model); ``kw``: the
    conditional classifiers' settings (``LogisticTable``)."""
    from .evaluate import mean_costs, pairable_of
    from .state import AgenticConfig
    from .table import router_training_questions

    cfg = cfg or AgenticConfig()
    qs, off, X = router_training_questions(router, train_cache, pool, offered, cfg)
    return LogisticTable(qs, X, off, pairable_of(pool, off, cfg), mean_costs(qs, off),
                         C=getattr(router, "C", 1.0), turn_penalty=cfg.turn_penalty, **kw)


__all__ = ["LogisticTable", "build_from_logistic_router", "majority"]
