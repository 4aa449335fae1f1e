"""The one routing interface, the cost vector that ``tau`` multiplies, and the one factory.

Every router (``lora``, ``knn``, ``cluster``, ``logistic``, ``cheapest``, ``strongest``, ``random``, and the evaluation-only
``oracle``/``best_single``/``single``) is a ``Router``: evaluation, the server, the calibration and Python code all
build it with ``Router.load(spec)`` and ask it with the same call::

    from xrouter_lite import Router
    router = Router.load("knn", train_cache="runs/example/offline_cache.jsonl", pool="configs/pool_routerbench.yaml")
    d = router.route([{"role": "user", "content": "What is 17 x 23?"}], tau=0.5)
    d.model_id, d.scores, d.costs       # the choice, every offered model's score and the cost tau multiplied

The protocol (RouteLLM's ``Router`` with one small method, in this project's words):

- ``route_items(items, offered, tau) -> list[Decision]`` is the one method a router implements: a batch of
  conversations (``RouteItem``: the query, and for evaluation its prompt id and dataset) with each one's offered
  models. ``route`` (one conversation, model ids or specs, the router's pool by default) and ``route_batch`` (the
  server's call) are built on it here and are not overridden.
- Declared attributes, read by the server and the calibration instead of guessed: ``takes_tau`` (decisions follow
  ``argmax(score - tau * cost)``; False for the fixed rules and for a LoRA router that decodes its answer),
  ``inline_ok`` (a decision costs microseconds: the server calls it on its event loop, no batching thread),
  ``mode`` (``score`` or, for a LoRA router, ``generate``), ``name``.

The cost vector (``CostVector``): tau multiplies, for every offered model, its expected USD per query divided by
the most expensive offered model's (``normalised_costs``: the dearest offered model has cost 1 whatever the pool
or the currency). The expected USD per query is the model's mean recorded cost per question on the router's
TRAINING cache; a model the cache lacks gets its pool price for the training questions' mean size
(``len(prompt) / 4`` input tokens, ``DEFAULT_EXPECTED_OUTPUT_TOKENS`` output tokens). The vector is saved with the
router (``router.json`` in the router's folder: for a LoRA router, its adapter folder) and the factory gives it
to evaluation and to the server alike, so tau read off an evaluation curve is the tau served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .pool import ModelSpec, Pool, load_pool

DEFAULT_EXPECTED_OUTPUT_TOKENS = 300
ROUTER_FILE = "router.json"
ROUTER_FILE_FORMAT = "xrouter-lite-router/1"
ROUTER_NAMES = ("lora", "knn", "cluster", "logistic", "cheapest", "strongest", "random")


# ---- decisions ------------------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """One routing decision.

    model_id: the chosen model. scores: every offered model's score (higher is better; for a router that takes
    tau, ``base_scores[m] - tau * costs[m]``). costs: every offered model's normalised cost (the ``c`` tau
    multiplies; empty for routers without costs). tau: the knob used (None: not applicable). latency_s: time the
    decision took. valid: False when the router's own answer was unusable and ``model_id`` is the configured
    default (``invalid_reason`` says why). raw: the generated text, if any.
    """

    model_id: str
    scores: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0
    valid: bool = True
    invalid_reason: str | None = None
    raw: str | None = None
    costs: dict[str, float] = field(default_factory=dict)
    tau: float | None = None

    @property
    def model(self) -> str:
        """The chosen model (RouteLLM's name for it)."""
        return self.model_id

    def ranked(self) -> list[str]:
        """Offered models by descending score, the chosen one first (the fallback order when serving)."""
        rest = sorted((m for m in self.scores if m != self.model_id), key=lambda m: -self.scores[m])
        return [self.model_id, *rest]


@dataclass
class ScoredDecision(Decision):
    """A Decision that keeps what it was made from, so another cost knob can re-decide it without the model.

    base_scores: each offered model's score before cost (log-probability of its action for the LoRA router,
    predicted probability of a correct answer for kNN and the cluster rule, training accuracy for best-single).
    costs: each offered model's normalised cost (see ``normalised_costs``). tau: the knob used.
    ``scores`` (inherited) holds ``base_scores[m] - tau * costs[m]``, so ``ranked()`` follows the decision rule.
    """

    base_scores: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    tau: float = 0.0
    router_scores: dict[str, float] = field(default_factory=dict)  # the model's own scores when a head made base_scores

    def with_tau(self, tau: float) -> ScoredDecision:
        """The decision this router makes for the same query under another ``tau`` (no model call)."""
        if not self.valid:  # a fallback stays a fallback
            return ScoredDecision(**{**self.__dict__, "tau": tau})
        model, scores = decide(self.base_scores, self.costs, tau)
        return ScoredDecision(
            model_id=model, scores=scores, latency_s=self.latency_s, valid=True, raw=self.raw,
            base_scores=self.base_scores, costs=self.costs, tau=tau, router_scores=self.router_scores,
        )


def decide(base_scores: Mapping[str, float], costs: Mapping[str, float], tau: float) -> tuple[str, dict[str, float]]:
    """The cost-aware decision rule: ``argmax_m base_scores[m] - tau * costs[m]``.

    Ties go to the cheaper model, then to the earlier one in ``base_scores``' order. Returns the choice and the
    adjusted score of every model."""
    if not base_scores:
        raise ValueError("no candidate to decide between")
    tau = float(tau or 0.0)
    adj = {m: float(s) - tau * float(costs.get(m, 0.0)) for m, s in base_scores.items()}
    order = {m: i for i, m in enumerate(base_scores)}
    best = max(adj, key=lambda m: (adj[m], -float(costs.get(m, 0.0)), -order[m]))
    return best, adj


@dataclass
class RouteItem:
    """A query plus what an evaluation knows about it (the oracle and best-single baselines need the id and
    the dataset; the other routers read only ``query``: a string or an OpenAI-style message list)."""

    query: str | Sequence[dict[str, Any]]
    prompt_id: str | None = None
    dataset: str | None = None


def query_text(query: str | Sequence[dict[str, Any]]) -> str:
    from .prompting import conversation_to_query

    return query if isinstance(query, str) else conversation_to_query(query)


# ---- costs ----------------------------------------------------------------------------------------------------------


def estimated_query_cost(spec: ModelSpec, query: str, expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS) -> float:
    """USD for answering ``query`` with ``spec``, from the pool's prices: input tokens estimated as
    ``len(query) / 4`` (at least 1), output tokens ``expected_output_tokens``. Used only for a model missing from
    a router's cost vector (a router built by ``Router.load`` has every pool model in it)."""
    return spec.cost(max(1, len(query) // 4), expected_output_tokens)


def normalised_costs(
    query: str | Sequence[dict[str, Any]],
    offered: Sequence[ModelSpec],
    cost_per_query: Mapping[str, float] | None = None,
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
) -> dict[str, float]:
    """The cost ``c`` used by every cost knob ``tau``, in [0, 1].

    Each offered model's expected cost of a query (``cost_per_query[m]``: the router's cost vector), divided by
    the largest among the offered models (so the most expensive offered model has c = 1 and ``tau`` has the same
    scale whatever the currency or the pool). A model missing from ``cost_per_query`` gets the pool-price
    estimate ``estimated_query_cost`` of this query."""
    raw = {}
    text = None
    for s in offered:
        if cost_per_query is not None and s.id in cost_per_query:
            raw[s.id] = float(cost_per_query[s.id])
        else:
            if text is None:
                text = query_text(query)
            raw[s.id] = estimated_query_cost(s, text, expected_output_tokens)
    top = max(raw.values()) if raw else 0.0
    return {m: (c / top if top > 0 else 0.0) for m, c in raw.items()}


@dataclass
class CostVector:
    """Expected USD per query of every model: what tau multiplies (after normalisation).

    usd: model -> USD per query. source: model -> ``train`` (mean recorded cost on the training cache), ``pool``
    (pool prices for ``input_tokens`` in / ``output_tokens`` out) or ``given``. origin: where it came from, for
    logs and reports."""

    usd: dict[str, float]
    source: dict[str, str] = field(default_factory=dict)
    input_tokens: float = 0.0
    output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS
    origin: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cost_per_query_usd": self.usd, "cost_source": self.source,
                "fallback_tokens": {"input": self.input_tokens, "output": self.output_tokens}, "origin": self.origin}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], origin: str = "") -> CostVector:
        usd = d.get("cost_per_query_usd")
        if not isinstance(usd, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in usd.values()):
            raise ValueError(f"{origin or 'router file'}: cost_per_query_usd must map model ids to USD amounts >= 0")
        tok = d.get("fallback_tokens") or {}
        return cls({k: float(v) for k, v in usd.items()}, dict(d.get("cost_source") or {}),
                   float(tok.get("input", 0.0)), int(tok.get("output", DEFAULT_EXPECTED_OUTPUT_TOKENS)),
                   origin or str(d.get("origin", "")))

    def filled(self, pool: Pool | None) -> CostVector:
        """This vector with every pool model it lacks priced from the pool (the documented fallback)."""
        if pool is None:
            return self
        usd, src = dict(self.usd), dict(self.source)
        tin = self.input_tokens or DEFAULT_FALLBACK_INPUT_TOKENS
        for s in pool:
            if s.id not in usd:
                usd[s.id] = s.cost(tin, self.output_tokens)
                src[s.id] = "pool"
        return CostVector(usd, src, tin, self.output_tokens, self.origin)


DEFAULT_FALLBACK_INPUT_TOKENS = 500.0  # when there is no training cache to measure the questions' size


def cost_vector(train: Sequence[Any] | None, pool: Pool | None = None, *, origin: str = "") -> CostVector:
    """The cost vector of a router trained on ``train`` (``LabeledPrompt``s): each model's mean recorded cost per
    question; pool models the training data lacks are priced from the pool for the training questions' mean
    size (``len / 4`` input tokens, ``DEFAULT_EXPECTED_OUTPUT_TOKENS`` output tokens). No training data: pool
    prices for every model (``DEFAULT_FALLBACK_INPUT_TOKENS`` input tokens)."""
    tot: dict[str, list[float]] = {}
    chars = 0
    n = 0
    for p in train or ():
        n += 1
        chars += len(p.prompt)
        for m, o in p.outcomes.items():
            s = tot.setdefault(m, [0.0, 0])
            s[0] += o.cost
            s[1] += 1
    usd = {m: c / k for m, (c, k) in tot.items() if k}
    tin = max(1.0, chars / n / 4) if n else DEFAULT_FALLBACK_INPUT_TOKENS
    vec = CostVector(usd, {m: "train" for m in usd}, tin, DEFAULT_EXPECTED_OUTPUT_TOKENS,
                     origin or ("training cache" if n else "pool prices"))
    return vec.filled(pool)


# ---- the protocol ---------------------------------------------------------------------------------------------------


class Router:
    """The routing interface (see the module docstring). Subclasses implement ``route_items``.

    State every router has: ``tau`` (its default cost knob), ``cost_per_query`` (the cost vector, USD per query per
    model; ``cost_info`` says where it came from), ``default_model`` (used when the router's own answer is
    unusable; default: the cheapest offered model), ``pool`` (for ``route(models=...)`` by id), ``invalid_count``.
    """

    name: str = "router"
    mode: str = "score"
    inline_ok: bool = False
    # defaults, so that a minimal subclass needs no __init__
    tau: float = 0.0
    cost_per_query: dict[str, float] | None = None
    cost_info: CostVector | None = None
    expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS
    default_model: str | None = None
    pool: Pool | None = None
    invalid_count: int = 0
    spec: dict[str, Any] | None = None  # what Router.load built it from (saved by ``save``)

    def __init__(
        self,
        *,
        tau: float = 0.0,
        cost_per_query: Mapping[str, float] | None = None,
        expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
        default_model: str | None = None,
        pool: Pool | None = None,
    ):
        self.tau = float(tau)
        self.cost_per_query = dict(cost_per_query) if cost_per_query else None
        self.expected_output_tokens = expected_output_tokens
        self.default_model = default_model
        self.pool = pool
        self.invalid_count = 0

    @property
    def takes_tau(self) -> bool:
        """Whether decisions follow ``argmax(score - tau * cost)`` (the fixed rules set this False; a LoRA router
        that decodes its answer, ``mode == "generate"``, has no cost knob)."""
        return self.mode == "score"

    # -- the one method a router implements ----------------------------------------------------------------------

    def route_items(
        self, items: Sequence[RouteItem], offered: Sequence[Sequence[ModelSpec]], tau: float | None = None
    ) -> list[Decision]:
        """Decide for a batch: ``items[i]`` among ``offered[i]``, with cost knob ``tau`` (None: the router's own)."""
        if type(self).route_batch is not Router.route_batch:
            # a router written against the older interface (only route_batch over query texts) still works
            return type(self).route_batch(self, [it.query for it in items], offered, tau)
        raise NotImplementedError(f"{type(self).__name__} implements no route_items")

    # -- built on it ---------------------------------------------------------------------------------------------

    def route_batch(
        self,
        queries: Sequence[str | Sequence[dict[str, Any]] | RouteItem],
        offered: Sequence[Sequence[ModelSpec]],
        tau: float | None = None,
    ) -> list[Decision]:
        """Decide for many conversations (strings, message lists or ``RouteItem``s), each with its offered models."""
        if len(queries) != len(offered):
            raise ValueError(f"{len(queries)} queries but {len(offered)} offered lists")
        items = [q if isinstance(q, RouteItem) else RouteItem(q) for q in queries]
        return self.route_items(items, [list(o) for o in offered], tau)

    def warm_up(self, offered: Sequence[ModelSpec]) -> None:
        """Throw-away decisions before serving, so that no request pays for lazy set-up (first forward pass, kernel
        compilation). Default: one decision among ``offered``."""
        self.route_batch(["warm-up: what is 2+2?"], [list(offered)])

    def route(
        self,
        messages: str | Sequence[dict[str, Any]],
        models: Sequence[str | ModelSpec] | None = None,
        tau: float | None = None,
    ) -> Decision:
        """Choose a model for one conversation (a string or OpenAI-style messages) among ``models`` (ids or
        specs; default: ``offered_models()``). Returns the Decision: ``model_id``, ``scores``, ``costs``."""
        return self.route_items([RouteItem(messages)], [self.resolve_models(models)], tau)[0]

    # -- helpers -------------------------------------------------------------------------------------------------

    def known_models(self) -> list[str] | None:
        """The models this router has data for (None: any model)."""
        return None

    def offered_models(self) -> list[str]:
        """The default offered set of ``route``: the pool's models this router knows."""
        if self.pool is None:
            raise ValueError(f"router {self.name!r} has no pool: pass models=[...] specs or load it with a pool")
        known = self.known_models()
        ids = [m for m in self.pool.ids if known is None or m in known]
        return ids or self.pool.ids

    def resolve_models(self, models: Sequence[str | ModelSpec] | None) -> list[ModelSpec]:
        if models is None:
            models = self.offered_models()
        out = []
        for m in models:
            if isinstance(m, ModelSpec):
                out.append(m)
            elif self.pool is None:
                raise ValueError(f"model {m!r} given by id, but router {self.name!r} has no pool to look it up in")
            else:
                out.append(self.pool.get(m))
        if not out:
            raise ValueError("no model offered")
        return out

    def costs_for(self, query, offered: Sequence[ModelSpec]) -> dict[str, float]:
        return normalised_costs(query, offered, self.cost_per_query, self.expected_output_tokens)

    def fallback_model(self, offered: Sequence[ModelSpec], costs: Mapping[str, float]) -> str:
        """The configured default model when it is offered, else the cheapest offered model."""
        ids = [s.id for s in offered]
        if self.default_model in ids:
            return self.default_model
        return min(ids, key=lambda m: (costs.get(m, 0.0), ids.index(m)))

    def _tau(self, tau: float | None) -> float:
        return self.tau if tau is None else float(tau)

    def save(self, folder: str | Path) -> Path:
        """Write ``router.json`` (what the router is, how to build it again, and its cost vector) into ``folder``;
        ``Router.load(folder)`` reads it back. Returns the file's path."""
        spec = dict(self.spec or {"router": self.name})
        spec.pop("cost_per_query", None)
        return write_router_file(folder, spec, self.cost_info or CostVector(dict(self.cost_per_query or {})))

    @classmethod
    def load(cls, spec: str | Path | Mapping[str, Any] | RouterSpec, **overrides: Any) -> Router:
        """Build any router: see ``load_router``."""
        return load_router(spec, **overrides)


# ---- the factory ----------------------------------------------------------------------------------------------------


class RouterSpec(BaseModel):
    """What ``Router.load`` builds. ``router``: a name (``lora``, ``knn``, ``cluster``, ``logistic``, ``cheapest``,
    ``strongest``, ``random``), ``lora:PATH``, or a folder (a LoRA adapter, or one holding ``router.json``)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    router: str = Field("lora", description="router name, lora:PATH, or a router/adapter folder")
    pool: str | Path | Pool | None = Field(None, description="pool YAML (or Pool); default configs/pool.yaml")
    train_cache: str | Path | None = Field(None, description="training cache: kNN/cluster/logistic data, the cost vector")
    adapter: str | Path | None = Field(None, description="LoRA adapter folder (router 'lora')")
    base_model: str | None = None
    mode: Literal["score", "generate"] = "score"
    device: str | None = None
    quantize: Literal["auto", "4bit", "none"] = "auto"
    batch_size: int = 8
    max_prompt_tokens: int | None = 4096
    use_head: bool = True  # lora: decide with the adapter's decision head (decision_head.json) when it has one
    score_tokens: Literal["full", "distinct"] | None = None  # lora: None = the adapter's own (its run card)
    tau: float = 0.0
    default_model: str | None = None
    cost_per_query: dict[str, float] | None = Field(None, description="USD per query per model (overrides all)")
    cost_source: Literal["saved", "train", "pool"] = Field(
        "saved", description="saved: router.json when there is one, else the training cache; train; pool prices")
    k: int = Field(10, ge=1, description="kNN neighbours")
    knn_max_seq_length: int | None = None
    n_clusters: int | None = Field(None, ge=1, description="cluster rule: k-means clusters (default sqrt(N/2))")
    logistic_c: float = Field(1.0, gt=0, description="logistic router: inverse L2 strength of each model's classifier")
    seed: int = 0


def _as_spec(spec: Any, overrides: Mapping[str, Any]) -> RouterSpec:
    over = {k: v for k, v in overrides.items() if v is not None}
    try:
        if isinstance(spec, RouterSpec):
            return spec.model_copy(update=over) if over else spec
        if isinstance(spec, Mapping):
            return RouterSpec(**{**dict(spec), **over})
        if isinstance(spec, (str, Path)):
            return RouterSpec(router=str(spec), **over)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"router spec: {problems}") from None
    raise TypeError(f"a router spec is a name, a folder, a mapping or a RouterSpec, not {type(spec).__name__}")


def read_router_file(folder: str | Path) -> dict[str, Any] | None:
    """``folder/router.json`` as a dict, None when there is none. A malformed file is an error naming it."""
    path = Path(folder) / ROUTER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != ROUTER_FILE_FORMAT:
        raise ValueError(f"{path}: not a router file (expected \"format\": \"{ROUTER_FILE_FORMAT}\")")
    return data


def write_router_file(folder: str | Path, spec: Mapping[str, Any], costs: CostVector) -> Path:
    """Write ``folder/router.json`` atomically: the router's spec (paths made absolute) and its cost vector."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean: dict[str, Any] = {}
    for k, v in spec.items():
        if isinstance(v, Pool):
            v = v.source
        if k in ("pool", "train_cache", "adapter") and v is not None and not str(v).startswith("<"):
            v = str(Path(v).resolve())
        clean[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    data = {"format": ROUTER_FILE_FORMAT, "spec": clean, **costs.to_json()}
    path = folder / ROUTER_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _resolve_name(s: RouterSpec) -> tuple[str, dict[str, Any] | None, RouterSpec]:
    """(router name, router.json content or None, the spec with the adapter filled in)."""
    name = s.router
    if name.startswith("lora:"):
        return "lora", read_router_file(name[5:]), s.model_copy(update={"adapter": name[5:]})
    if name in ROUTER_NAMES:
        saved = read_router_file(s.adapter) if name == "lora" and s.adapter else None
        return name, saved, s
    p = Path(name)
    if p.is_dir():
        saved = read_router_file(p)
        if (p / "adapter_config.json").exists():
            return "lora", saved, s.model_copy(update={"adapter": str(p)})
        if saved is not None:
            inner = dict(saved.get("spec") or {})
            kind = inner.pop("router", None)
            if kind not in ROUTER_NAMES:
                raise ValueError(f"{p / ROUTER_FILE}: unknown router {kind!r} (known: {', '.join(ROUTER_NAMES)})")
            given = {k: v for k, v in s.model_dump().items() if k in s.model_fields_set and k != "router"}
            base = {k: v for k, v in inner.items() if k in RouterSpec.model_fields}
            return kind, saved, _as_spec({**base, **given, "router": kind}, {})
        raise ValueError(f"{p}: neither a LoRA adapter folder (adapter_config.json) nor a router folder ({ROUTER_FILE})")
    raise ValueError(
        f"unknown router {name!r}: use one of {', '.join(ROUTER_NAMES)}, lora:ADAPTER_DIR, or a router/adapter folder"
    )


def load_router(spec: str | Path | Mapping[str, Any] | RouterSpec, *, train: Sequence[Any] | None = None,
                log=None, **overrides: Any) -> Router:
    """THE factory: build the router ``spec`` describes, with its pool and its cost vector.

    ``spec``: a name (``knn``, ``cluster``, ``cheapest``, ``strongest``, ``random``, ``lora``), ``lora:PATH``, a
    folder (a LoRA adapter folder, or a folder with ``router.json`` written by ``Router.save``), a mapping or a
    ``RouterSpec``; ``overrides`` (keyword arguments) replace its fields. ``train``: training prompts already
    loaded (evaluation passes them; otherwise ``train_cache`` is read, keeping the pool's models).

    The cost vector: ``cost_per_query`` when given; else (``cost_source: saved``) the one saved in the router's
    ``router.json``; else the training cache's mean recorded costs (``cost_vector``); pool models still missing
    are priced from the pool. ``cost_source: pool`` prices every model from the pool."""
    s = _as_spec(spec, overrides)
    kind, saved, s = _resolve_name(s)
    say = log or (lambda m: None)
    pool = s.pool if isinstance(s.pool, Pool) else load_pool(s.pool or "configs/pool.yaml")
    needs_train = kind in ("knn", "cluster", "logistic")
    if train is None and s.train_cache is not None:
        from .evaluate import load_prompts

        if not Path(s.train_cache).is_file():
            raise FileNotFoundError(f"training cache not found: {s.train_cache}")
        train, _ = load_prompts(s.train_cache, pool.ids)
        if not train:
            raise ValueError(f"{s.train_cache}: no graded record of any model of the pool {pool.source}")
    if needs_train and not train:
        raise ValueError(f"router {kind!r} needs a training cache: give train_cache (--train-cache CACHE)")

    # the cost vector
    if s.cost_per_query:
        costs = CostVector(dict(s.cost_per_query), {m: "given" for m in s.cost_per_query}, origin="given").filled(pool)
    elif s.cost_source == "saved" and saved is not None and "cost_per_query_usd" in saved:
        costs = CostVector.from_json(saved, origin=f"saved with the router ({saved.get('origin') or ROUTER_FILE})")
        costs = costs.filled(pool)
    elif s.cost_source != "pool" and train:
        costs = cost_vector(train, pool, origin=f"training cache {s.train_cache or '(given prompts)'}")
    else:
        costs = cost_vector(None, pool, origin="pool prices")
    say(f"router {kind}: cost vector from {costs.origin}")
    common = dict(tau=s.tau, cost_per_query=costs.usd, default_model=s.default_model)

    if kind == "lora":
        from .router import LoRARouter

        if not s.adapter:
            raise ValueError("router 'lora' needs an adapter folder: lora:PATH, adapter=PATH (--adapter DIR)")
        ad = Path(s.adapter)
        if not ad.is_dir():
            raise ValueError(f"adapter folder not found: {ad}")
        if not (ad / "adapter_config.json").exists():
            raise ValueError(f"{ad}: no adapter_config.json (not a LoRA adapter folder)")
        r: Router = LoRARouter(
            s.base_model, ad, mode=s.mode, device=s.device, quantize=s.quantize, batch_size=s.batch_size,
            max_prompt_tokens=s.max_prompt_tokens, use_head=s.use_head, score_tokens=s.score_tokens, **common,
        )
    elif kind == "knn":
        from .router import KNNRouter

        r = KNNRouter(train, k=s.k, device=s.device, max_seq_length=s.knn_max_seq_length, **common)
    elif kind == "cluster":
        from .simple_routers import ClusterRouter

        r = ClusterRouter(train, n_clusters=s.n_clusters, seed=s.seed, device=s.device,
                          max_seq_length=s.knn_max_seq_length, **common)
    elif kind == "logistic":
        from .simple_routers import LogisticRouter

        from .traversal import explored_ids

        r = LogisticRouter(train, C=s.logistic_c, device=s.device, max_seq_length=s.knn_max_seq_length,
                           explored=explored_ids(s.train_cache) if s.train_cache is not None else None, **common)
    elif kind == "cheapest":
        from .simple_routers import CheapestRouter

        r = CheapestRouter(**common)
    elif kind == "strongest":
        from .simple_routers import StrongestRouter

        r = StrongestRouter(train, pool=pool, **common)
    else:  # random
        from .router import RandomRouter

        r = RandomRouter(s.seed, **common)
    r.pool = pool
    r.cost_info = costs
    r.spec = {k: v for k, v in s.model_dump().items() if v is not None and k != "pool"} | {
        "router": kind, "pool": pool.source}
    return r
