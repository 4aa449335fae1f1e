"""Routers that need no GPU training: ``cheapest``, ``strongest``, the per-cluster rule ``cluster`` and the
per-model correctness classifier ``logistic``.

(``knn`` lives in ``router``.) All are ``routing.Router``s, built with ``Router.load("cluster", train_cache=...)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .pool import Pool
from .routing import Decision, Router, ScoredDecision, decide, query_text


class CheapestRouter(Router):
    """Always the offered model with the lowest expected cost (the cost vector); scores are ``-cost``."""

    name = "cheapest"
    takes_tau = False
    inline_ok = True

    def route_items(self, items, offered, tau=None):
        out = []
        for it, off in zip(items, offered, strict=True):
            costs = self.costs_for(it.query, off)
            ids = [s.id for s in off]
            pick = min(ids, key=lambda m: (costs[m], ids.index(m)))
            out.append(Decision(pick, {m: -costs[m] for m in ids}, costs=costs))
        return out


class StrongestRouter(Router):
    """Always the offered model with the best accuracy on the training cache (ties: the cheaper one). Without
    training data, the dearest model by pool price (price as the proxy of strength). Scores: those accuracies."""

    name = "strongest"
    takes_tau = False
    inline_ok = True

    def __init__(self, train: Iterable | None = None, pool: Pool | None = None, **kw):
        super().__init__(pool=pool, **kw)
        stats: dict[str, list[int]] = {}
        for p in train or ():
            for m, o in p.outcomes.items():
                st = stats.setdefault(m, [0, 0])
                st[0] += int(o.correct)
                st[1] += 1
        self.accuracy = {m: c / n for m, (c, n) in stats.items() if n}
        if not self.accuracy and pool is not None:
            top = max((s.input_price + s.output_price for s in pool), default=0.0) or 1.0
            self.strength = {s.id: (s.input_price + s.output_price) / top for s in pool}
        else:
            self.strength = dict(self.accuracy)

    def known_models(self):
        return list(self.accuracy) or None

    def route_items(self, items, offered, tau=None):
        out = []
        for it, off in zip(items, offered, strict=True):
            costs = self.costs_for(it.query, off)
            ids = [s.id for s in off]
            scores = {m: self.strength.get(m, 0.0) for m in ids}
            pick = max(ids, key=lambda m: (scores[m], -costs[m], -ids.index(m)))
            out.append(Decision(pick, scores, costs=costs))
        return out


def load_encoder(device: str | None = None, max_seq_length: int | None = None, path: str | Path | None = None):
    """all-MiniLM-L6-v2 (the bundled copy) as a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer

    from .assets import minilm_path

    enc = SentenceTransformer(str(path or minilm_path()), device=device or "cpu")
    if max_seq_length:
        enc.max_seq_length = max_seq_length
    return enc


def embed_texts(encoder, texts: Sequence[str], batch_size: int = 64):
    """Normalised embeddings (numpy, one row per text): the one way every MiniLM user here encodes."""
    return encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                          show_progress_bar=False)


class EmbeddingRouter(Router):
    """The routers on all-MiniLM-L6-v2 embeddings of the query (``knn``, ``cluster``, ``logistic``): the encoder,
    ``_embed``, and the decision from ``p_correct`` (each model's predicted chance of a right answer on each query):
    ``argmax(p - tau * c)`` over the offered models (0 for a model the router has no data on)."""

    models: list[str]

    def __init__(self, device: str | None = None, max_seq_length: int | None = None, embed_batch_size: int = 64,
                 embedder_path: str | Path | None = None, **kw):
        super().__init__(**kw)
        self.encoder = load_encoder(device, max_seq_length, embedder_path)
        self.embed_batch_size = embed_batch_size

    def known_models(self):
        return list(self.models)

    def _embed(self, texts: Sequence[str]):
        return embed_texts(self.encoder, texts, self.embed_batch_size)

    def p_correct(self, queries: Sequence[str]) -> list[dict[str, float]]:
        raise NotImplementedError

    def route_items(self, items, offered, tau=None):
        tau = self._tau(tau)
        t0 = time.perf_counter()
        preds = self.p_correct([query_text(it.query) for it in items]) if items else []
        per = (time.perf_counter() - t0) / max(1, len(items))
        out = []
        for it, off, p in zip(items, offered, preds, strict=True):
            base = {s.id: p.get(s.id, 0.0) for s in off}
            costs = self.costs_for(it.query, off)
            model, scores = decide(base, costs, tau)
            out.append(ScoredDecision(model, scores, latency_s=per, base_scores=base, costs=costs, tau=tau))
        return out


class ClusterRouter(EmbeddingRouter):
    """The per-task rule without task labels: k-means clusters of the training questions' embeddings
    (all-MiniLM-L6-v2, normalised), and per cluster each model's accuracy on the cluster's questions.

    A query goes to its nearest cluster; model m's score is its accuracy there, shrunk towards m's overall
    training accuracy by ``prior_weight`` pseudo-questions (``(right + w * overall) / (n + w)``: small clusters
    lean on the overall figure); the choice is ``argmax(acc - tau * c)``, i.e. each cluster's best trade-off model
    at that tau. ``n_clusters`` default: ``round(sqrt(N / 2))`` for N training questions, between 2 and 64."""

    name = "cluster"

    def __init__(
        self,
        train: Iterable,
        n_clusters: int | None = None,
        seed: int = 0,
        prior_weight: float = 1.0,
        device: str | None = None,
        max_seq_length: int | None = None,
        embed_batch_size: int = 64,
        **kw,
    ):
        import numpy as np
        from sklearn.cluster import KMeans

        train = list(train)
        if not train:
            raise ValueError("ClusterRouter needs training prompts; got none")
        super().__init__(device=device, max_seq_length=max_seq_length, embed_batch_size=embed_batch_size, **kw)
        emb = self._embed([p.prompt for p in train])
        n = len(train)
        k = n_clusters or max(2, min(64, round(math.sqrt(n / 2))))
        self.n_clusters = k = max(1, min(k, n))
        km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(emb)
        self.centroids = km.cluster_centers_.astype(np.float32)
        labels = km.labels_
        self.train_ids = [p.prompt_id for p in train]  # with the embeddings: the agentic table's own clusters
        self.train_emb = emb.astype(np.float32)  # (agentic/table.py)
        self.models = sorted({m for p in train for m in p.outcomes})
        overall: dict[str, list[int]] = {}
        per: list[dict[str, list[int]]] = [{} for _ in range(k)]
        for p, c in zip(train, labels):
            for m, o in p.outcomes.items():
                for table in (overall, per[c]):
                    st = table.setdefault(m, [0, 0])
                    st[0] += int(o.correct)
                    st[1] += 1
        self.overall = {m: r / t for m, (r, t) in overall.items() if t}
        self.sizes = [int((labels == c).sum()) for c in range(k)]
        self.accuracy: list[dict[str, float]] = []
        for c in range(k):
            row = {}
            for m in self.models:
                r, t = per[c].get(m, (0, 0))
                row[m] = (r + prior_weight * self.overall.get(m, 0.0)) / (t + prior_weight)
            self.accuracy.append(row)

    def clusters_of(self, queries: Sequence[str]) -> list[int]:
        import numpy as np

        q = self._embed(queries)
        d = ((q[:, None, :] - self.centroids[None, :, :]) ** 2).sum(-1)
        return [int(i) for i in np.argmin(d, axis=1)]

    def table(self, tau: float = 0.0, models: Sequence[str] | None = None,
              costs: dict[str, float] | None = None) -> list[dict]:
        """Per cluster: its size and the model chosen at ``tau`` (for reports)."""
        ids = list(models or self.models)
        costs = costs or {}
        return [{"cluster": c, "n": self.sizes[c], "choice": decide({m: self.accuracy[c].get(m, 0.0) for m in ids},
                                                                     costs, tau)[0]} for c in range(self.n_clusters)]

    def p_correct(self, queries: Sequence[str]) -> list[dict[str, float]]:
        return [self.accuracy[c] for c in self.clusters_of(queries)]


def correctness_classifier(X, y, C: float = 1.0, sample_weight=None):
    """P(correct | features) of one model: an L2-penalised logistic regression (``C``, sklearn) of its labels ``y`` on
    the rows ``X``; a model with one class only (or no row) gets that constant (0.0 without rows). Returns a function
    of a feature matrix giving one probability per row (a fitted regression's has ``.linear = (w, b)``)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y).astype(int)
    if len(set(y.tolist())) < 2:
        const = float(y[0]) if len(y) else 0.0
        return lambda Z: np.full(len(Z), const)
    clf = LogisticRegression(C=C, max_iter=3000).fit(X, y, sample_weight=sample_weight)

    def p(Z):
        return clf.predict_proba(Z)[:, 1]

    p.linear = (clf.coef_[0], float(clf.intercept_[0]))  # P = sigmoid(Z @ w + b): lets callers stack many classifiers
    return p


def explored_share(train: Sequence, explored: Iterable[str] | None) -> float | None:
    """The share of ``train`` in a cost-ordered cache's exploration sample (None for a full cache); an error when
    a cost-ordered cache has no explored question (the dearer models' labels would be biased)."""
    if explored is None:
        return None
    exp = set(explored)
    share = sum(p.prompt_id in exp for p in train) / len(train)
    if share <= 0:
        raise ValueError("logistic router: the cost-ordered training cache has no explored question "
                         "(cache --explore F): the dearer models' labels are biased without them")
    return share


def labelled_rows(train: Sequence, model: str, explored: Iterable[str] | None = None, share: float | None = None):
    """(row indices, labels, weights) of ``model``'s classifier: the questions whose answer by ``model`` is known.
    On a cost-ordered cache an explored question on which a cheaper model was right stands for the unexplored ones
    the traversal stopped on before ``model``: weight 1 / ``share``; every other row weighs 1."""
    import numpy as np

    exp = None if explored is None else set(explored)
    rows = [i for i, p in enumerate(train) if model in p.outcomes]
    y = np.array([int(train[i].outcomes[model].correct) for i in rows])
    w = np.ones(len(rows))
    if exp is not None:
        share = explored_share(train, exp) if share is None else share
        for j, i in enumerate(rows):
            p = train[i]
            c = p.outcomes[model].cost
            if p.prompt_id in exp and any(o.correct for o in p.outcomes.values() if o.cost < c):
                w[j] = 1.0 / share
    return rows, y, w


class LogisticRouter(EmbeddingRouter):
    """A per-model correctness classifier on sentence embeddings (all-MiniLM-L6-v2, normalised): for each model an
    L2-penalised logistic regression (``C``, sklearn) of "answered correctly" on the training questions' embeddings;
    the choice is ``argmax(P(correct) - tau * c)``. No task label is used. On three seeded RouterBench splits it was the
    best one-shot router measured (AIQ 0.843 against 0.836 for the per-task rule, which needs the task label, 0.838 for
    the SmolLM2 LoRA router with its decision head and 0.759 for kNN; docs/BENCHMARKS.md, issue 14). A model with one
    class only on the training side gets that constant.

    A cost-ordered cache (``explored``: its exploration sample's question ids) knows a model's label only where the
    traversal reached it (every cheaper model wrong) or explored the question. Each classifier then learns from the
    rows it has, with inverse-propensity weights: an explored question on which a cheaper model was right stands for
    the unexplored ones the traversal stopped on before this model, weight 1 / (explored share); every other row
    weighs 1. (Unweighted, the classifiers of dear models see only hard questions: -0.024 AIQ on RouterBench.)"""

    name = "logistic"

    def __init__(self, train: Iterable, C: float = 1.0, device: str | None = None, max_seq_length: int | None = None,
                 embed_batch_size: int = 64, explored: Iterable[str] | None = None, **kw):
        import numpy as np

        train = list(train)
        if not train:
            raise ValueError("LogisticRouter needs training prompts; got none")
        super().__init__(device=device, max_seq_length=max_seq_length, embed_batch_size=embed_batch_size, **kw)
        emb = self._embed([p.prompt for p in train])
        self.models = sorted({m for p in train for m in p.outcomes})
        self.C = C
        self.train_ids = [p.prompt_id for p in train]  # with the embeddings: the agentic logistic-valued table's rows
        self.train_emb = emb.astype(np.float32)  # (agentic/logistic_table.py)
        self.clf: dict[str, Any] = {}
        self.explored_share = explored_share(train, explored)
        for m in self.models:
            rows, y, w = labelled_rows(train, m, explored, self.explored_share)
            self.clf[m] = correctness_classifier(emb[rows], y, C, sample_weight=w)

    def p_correct(self, queries: Sequence[str]) -> list[dict[str, float]]:
        q = self._embed(queries)
        cols = {m: c(q) for m, c in self.clf.items()}
        return [{m: float(cols[m][i]) for m in self.models} for i in range(len(queries))]
