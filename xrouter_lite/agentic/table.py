"""The agentic policy without a trained LLM: the exact-value table over (cluster of the question, models called,
agreement of their read answers).

The exact-value table (``values.InfoValues``) groups training questions by what a state shows and solves, by
backward induction over every continuation, the action of best mean reward R = R_binary x (K - min(lambda x C_total,
cost_max)). Keyed on the dataset it is the teacher of the agentic DPO pairs; keyed on a k-means cluster of the
question's all-MiniLM-L6-v2 embedding (``simple_routers.ClusterRouter``: the same clusters as the one-shot ``cluster``
router) it needs no dataset label, so it serves live requests. On RouterBench's held-out questions it beat the
trained SmolLM2 agentic policy and the dataset-keyed table (docs/BENCHMARKS.md, "Agentic mode").

Its knob ``tau`` is the lambda of that reward (the table at each tau is solved on first use and kept): 0 buys
accuracy at any price, larger values stop calling sooner. ONE decision function (``decide``) serves the replay
(evaluation) and the live runner (serving)."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from ..prompting import action_models, is_select_key, select_key
from ..reward import RewardConfig
from .state import AgenticConfig, QOutcome, Question
from .values import InfoValues

MAX_TABLES = 32  # solved tables kept (one per tau asked for)


def _label(c: int) -> str:
    return f"cluster{c}"


class ClusterTable:
    """``questions``: the training side (every offered model's recorded answer); ``clusters[i]``: question i's
    cluster. ``decide`` picks the action of best value among the legal ones."""

    def __init__(self, questions: Sequence[Question], clusters: Sequence[int], offered: Sequence[str],
                 pairable: set[str], cfg: AgenticConfig, centroids=None):
        if len(questions) != len(clusters):
            raise ValueError(f"{len(questions)} questions but {len(clusters)} cluster labels")
        if not questions:
            raise ValueError("the agentic table needs training questions; got none")
        self.offered, self.pairable, self.cfg = list(offered), set(pairable), cfg
        self.centroids = centroids  # the clusters' centres, where live questions are assigned (``nearest``)
        self.questions = []
        for q, c in zip(questions, clusters):
            q2 = copy.copy(q)
            q2.dataset = _label(int(c))
            self.questions.append(q2)
        self._tables: OrderedDict[float, InfoValues] = OrderedDict()

    def values(self, tau: float) -> InfoValues:
        tau = float(tau)
        t = self._tables.get(tau)
        if t is None:
            r = self.cfg.reward
            cfg = self.cfg.model_copy(update={"reward": RewardConfig(k=r.k, lam=tau, cost_max=r.cost_max)})
            t = self._tables[tau] = InfoValues(self.questions, self.offered, self.pairable, cfg)
            while len(self._tables) > MAX_TABLES:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(tau)
        return t

    def decide(self, cluster: int, reads: Mapping[str, str | None], legal: Sequence[str], tau: float) -> str:
        """The action for a state: ``reads`` the answers read so far (model -> read answer, successful calls only),
        ``legal`` the actions the caller allows (budget, failed models, max calls). Best table value among them;
        a state the training side never showed: the majority answer (ties to the dearer model), or the cheapest
        legal call before any answer."""
        tab = self.values(tau)
        stub = Question("live", _label(int(cluster)), None, "",
                        {m: QOutcome(False, 0.0, None, r) for m, r in reads.items()})
        called = [m for m in self.offered if m in reads]
        legal = list(legal)
        node = tab.node(stub, called) if len(called) == len(reads) else None
        if node is not None:
            ok = [a for a in legal if a in node.q]
            if ok:
                return max(ok, key=lambda a: (round(node.q[a], 12), -tab.action_cost(a)))
        sel = [a for a in legal if is_select_key(a)]
        if sel:
            names = [action_models(a)[0] for a in sel]
            votes = {m: sum(1 for r in reads.values() if r is not None and r == reads.get(m)) for m in names}
            return select_key(max(names, key=lambda m: (votes[m], tab.mean_cost.get(m, 0.0))))
        calls = [a for a in legal if not is_select_key(a)]
        if not calls:
            raise ValueError("no legal action")
        return min(calls, key=lambda a: (sum(tab.mean_cost.get(m, float("inf")) for m in action_models(a)), a))

    def policy(self, cluster_of: Mapping[str, int], tau: float):
        """A replay policy (``replay.replay``) over cached questions; ``cluster_of``: prompt_id -> cluster."""
        from .state import legal_actions

        def pol(q: Question, turns):
            called = [m for t in turns for m in t]
            legal = legal_actions(called, self.offered, self.pairable, self.cfg.max_calls)
            return self.decide(cluster_of[q.prompt_id], {m: q.outcomes[m].read for m in called}, legal, tau)

        return pol


def default_clusters(n: int) -> int:
    """Clusters of the agentic table for n training questions: round(sqrt(n / 8)), between 2 and 32 (fewer than the
    one-shot cluster rule's sqrt(n / 2): each cluster estimates a whole tree of state values, not one row)."""
    return max(2, min(32, round(math.sqrt(n / 8))))


def fit_clusters(emb, k: int | None = None, seed: int = 0):
    """k-means (k default ``default_clusters``) on normalised embeddings: (centroids, labels)."""
    import numpy as np
    from sklearn.cluster import KMeans

    emb = np.asarray(emb, dtype=np.float32)
    k = max(1, min(k or default_clusters(len(emb)), len(emb)))
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(emb)
    return km.cluster_centers_.astype(np.float32), [int(c) for c in km.labels_]


def nearest(centroids, emb) -> list[int]:
    import numpy as np

    e = np.asarray(emb, dtype=np.float32)
    return [int(i) for i in np.argmin(((e[:, None, :] - centroids[None, :, :]) ** 2).sum(-1), axis=1)]


def router_training_questions(router, train_cache, pool, offered: Sequence[str] | None, cfg: AgenticConfig):
    """(questions, offered models, their embeddings) of a fitted embedding router (``train_ids`` / ``train_emb``):
    its training questions read from ``train_cache``, those with an answer of every offered model (``offered``, or
    the agentic default set of the cache)."""
    from .pairs import default_offered
    from .state import load_questions

    row = {pid: i for i, pid in enumerate(router.train_ids)}
    allq = [q for q in load_questions(train_cache, pool) if q.prompt_id in row]
    off = list(offered) if offered else default_offered(pool, allq, cfg)
    qs = [q for q in load_questions(train_cache, pool, off) if q.prompt_id in row]
    if not qs:
        raise ValueError(f"{train_cache}: no training question with an answer of every offered model ({', '.join(off)})")
    return qs, off, router.train_emb[[row[q.prompt_id] for q in qs]]


def build_from_cluster_router(router, train_cache, pool, offered: Sequence[str] | None = None,
                              cfg: AgenticConfig | None = None, n_clusters: int | None = None, seed: int = 0):
    """The table over k-means clusters of a fitted ``ClusterRouter``'s training embeddings (its encoder, its
    training questions read from ``train_cache``); ``table.centroids`` assign live questions (``nearest``)."""
    from .evaluate import pairable_of

    cfg = cfg or AgenticConfig()
    qs, off, X = router_training_questions(router, train_cache, pool, offered, cfg)
    centroids, labels = fit_clusters(X, n_clusters, seed)
    return ClusterTable(qs, labels, off, pairable_of(pool, off, cfg), cfg, centroids)


__all__ = ["ClusterTable", "build_from_cluster_router", "router_training_questions"]
