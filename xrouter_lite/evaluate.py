"""Stage 5: evaluate a router (and the baselines) on held-out prompts: accuracy, total cost, curves.

Offline replay (default): for every test prompt the router chooses among the models that have a valid record for
it; the chosen model's cached ``is_correct`` and ``cost`` are looked up. No API call: exact and free. Online mode
(``online=True``) sends the prompt to the chosen model through ``llm.acall_model`` and grades the answer with
``grading.is_correct`` (the baselines stay offline).

Usage::

    xrouter-lite eval --adapter runs/lora --test-cache runs/pairs/test_cache.jsonl \\
        --train-cache runs/cache/offline_cache.jsonl --pool configs/pool_routerbench.yaml --out runs/eval
    xrouter-lite eval --router knn --train-cache ... --test-cache ...     # any router of Router.load: knn,
                                                                          # cluster, cheapest, strongest, lora:DIR

or ``python scripts/evaluate_lora.py ...`` (same options), or ``evaluate(EvalConfig(...))`` from Python.

Writes to ``out_dir``: ``report.json`` (keys ``router``, ``baselines``, ``curves``, ``config``), ``report.md``,
``curve.png`` and ``decisions.jsonl`` (one line per prompt: prompt_id, offered models, chosen model, every
candidate's base score and normalised cost, latency, outcome), from which every figure can be re-derived
(``rederive_from_decisions``). The tau sweep costs no extra model pass: the router scores each prompt once and
``ScoredDecision.with_tau`` re-decides for every tau.

The router under test is built by the one factory (``routing.load_router``, as the server and Python build it).
The cost ``c`` in ``argmax(score - tau * c)`` is the router's cost vector (``routing.CostVector``): the one saved
with the router (``router.json``) when it has one, else the mean recorded cost per query of each model on the
TRAINING cache (``cost_source: train``; pool prices for models the cache lacks), or pool prices for every model
(``cost_source: pool``), divided by the most expensive offered model (``routing.normalised_costs``). Evaluating a
LoRA adapter that has no ``router.json`` yet writes one into its folder with the vector used, so that serving
it multiplies tau by the same costs.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import metrics
from .config import COMMAND_LINE, ConfigError
from .config import load_config as _load_config
from .pool import ModelSpec, Pool, load_pool
from .records import ReadReport, iter_records
from .router import (
    BestSingleRouter,
    Decision,
    LabeledPrompt,
    OracleRouter,
    Outcome,
    RandomRouter,
    RouteItem,
    ScoredDecision,
    SingleModelRouter,
)
from .routing import Router, cost_vector, load_router, read_router_file, write_router_file

DEFAULT_TAUS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0]
ALL_BASELINES = ("single", "random", "oracle", "best_single", "knn")


class EvalConfig(BaseModel):
    """What ``evaluate`` runs. Paths are relative to the working directory."""

    model_config = ConfigDict(extra="forbid")

    test_cache: str = Field(description="held-out prompts' cache rows (test_cache.jsonl from the pairs stage)")
    train_cache: str | None = Field(None, description="training cache: best-single, kNN and the cost vector")
    pool: str = "configs/pool_routerbench.yaml"
    out_dir: str = "runs/eval"
    router: str | None = Field(
        None, description="router under test: knn, cluster, logistic, cheapest, strongest, random, lora:DIR or a router folder "
        "(default: lora when adapter is set; neither: the baselines only)")
    adapter: str | None = Field(None, description="LoRA adapter folder; None evaluates the baselines only")
    extra_adapters: dict[str, str] = Field(
        default_factory=dict, description="label -> adapter folder (e.g. other lambdas): one more curve each"
    )
    base_model: str | None = Field(None, description="default: the adapter's base model")
    mode: Literal["score", "generate"] = "score"
    tau: float = Field(0.0, description="the router's cost knob for the headline figures")
    taus: list[float] = Field(default_factory=lambda: list(DEFAULT_TAUS))
    default_model: str | None = Field(None, description="fallback for invalid actions (default: cheapest offered)")
    offered_models: list[str] | None = Field(None, description="subset of the pool to offer (default: all)")
    require_complete: bool = Field(True, description="keep only prompts with a valid record for every model")
    max_queries: int | None = Field(None, description="evaluate a seeded random sample of this many prompts")
    seed: int = 0
    baselines: list[str] = Field(default_factory=lambda: list(ALL_BASELINES))
    train_overlap: Literal["drop", "error"] = Field(
        "drop", description="test prompts found in train_cache: drop them from training (default) or stop"
    )
    knn_k: int = 10
    n_clusters: int | None = Field(None, description="router 'cluster': k-means clusters (default sqrt(N/2))")
    knn_max_seq_length: int | None = Field(None, description="truncate kNN embeddings' input (default: the model's 256)")
    cost_source: Literal["train", "pool"] = "train"
    batch_size: int = 8
    device: str | None = None
    quantize: Literal["auto", "4bit", "none"] = "auto"
    max_prompt_tokens: int | None = 4096
    use_head: bool = Field(True, description="decide with the adapter's decision head (decision_head.json) when it has one")
    score_tokens: Literal["full", "distinct"] | None = Field(
        None, description="lora: how actions are scored (default: the adapter's own, from its run card)")
    online: bool = False
    online_concurrency: int = 4
    plot: bool = True


class EvalConfigError(ConfigError):
    """A bad evaluation setting (``config.ConfigError``: ``FILE: key: problem``)."""


def load_config(path: str | Path | None, **overrides: Any) -> EvalConfig:
    """An EvalConfig from a YAML file (or none: options only); ``overrides`` that are not None replace file
    values. One line per problem, unknown keys refused (``config.load_config``)."""
    return _load_config(EvalConfig, path, overrides, what="eval config", error=EvalConfigError)


def check_config(cfg: EvalConfig, where: str | Path = COMMAND_LINE) -> None:
    """What can be checked before any work (and before any model loads): adapters exist, the baselines asked for
    are known and have what they need (a baseline given explicitly that needs the training cache is an error
    without one; the default list skips them with a note). ``EvalConfigError`` otherwise."""
    bad = sorted(set(cfg.baselines) - set(ALL_BASELINES))
    if bad:
        raise EvalConfigError(where, f"unknown baseline(s) {bad}; known: {list(ALL_BASELINES)}", key="baselines")
    needs_train = sorted({"knn", "best_single"} & set(cfg.baselines))
    if needs_train and not cfg.train_cache and "baselines" in cfg.model_fields_set:
        raise EvalConfigError(
            where, f"the baseline(s) {needs_train} need the training cache: give --train-cache (train_cache:) "
            "or leave them out of --baselines", key="train_cache")
    if not cfg.adapter and not cfg.extra_adapters and not cfg.baselines:
        raise EvalConfigError(where, "nothing to evaluate: no adapter and no baseline", key="baselines")
    adapters = {"adapter": cfg.adapter} if cfg.adapter else {}
    adapters.update({f"extra_adapters.{k}": v for k, v in cfg.extra_adapters.items()})
    for label, folder in adapters.items():
        p = Path(folder)
        if not p.exists():
            raise EvalConfigError(where, f"adapter folder not found: {folder}", key=label)
        if not (p / "adapter_config.json").is_file():
            raise EvalConfigError(
                where, f"{folder} is not a LoRA adapter folder (no adapter_config.json; "
                "`xrouter-lite train` writes one)", key=label)
    for key in ("test_cache", "train_cache"):
        v = getattr(cfg, key)
        if v is not None and not Path(v).is_file():
            raise EvalConfigError(where, f"file not found: {v}", key=key)


# ---- the per-prompt table -------------------------------------------------------------------------------------------


@dataclass
class LoadStats:
    records: int = 0
    errored: int = 0
    ungraded: int = 0
    duplicates: int = 0
    unknown_models: int = 0  # records of models left out (not in the pool / not offered)
    unknown_model_names: list[str] = field(default_factory=list)
    prompts: int = 0
    incomplete_dropped: int = 0
    overlap_dropped: int = 0
    torn_last_line: bool = False


def load_prompts(
    path: str | Path, models: Sequence[str] | None = None, *, require_complete: bool = False
) -> tuple[list[LabeledPrompt], LoadStats]:
    """The per-prompt table of a cache file, read streaming: each prompt with ``model -> Outcome``.

    Records with an error or without a grade are excluded (counted); for a (prompt, model) seen twice the
    later valid record wins. ``models`` limits the models kept; ``require_complete`` drops prompts lacking any
    of them (the kept models are those of ``models`` that appear in the file at all)."""
    stats = LoadStats()
    report = ReadReport()
    table: dict[str, LabeledPrompt] = {}
    wanted = set(models) if models is not None else None
    for _ln, rec in iter_records(path, report=report):
        stats.records += 1
        if not rec.ok:
            stats.errored += 1
            continue
        if rec.is_correct is None:
            stats.ungraded += 1
            continue
        if wanted is not None and rec.model_name not in wanted:
            stats.unknown_models += 1
            if rec.model_name not in stats.unknown_model_names:
                stats.unknown_model_names.append(rec.model_name)
            continue
        rec.validate_numbers(f"{path}: prompt {rec.prompt_id} model {rec.model_name}")
        p = table.get(rec.prompt_id)
        if p is None:
            p = table[rec.prompt_id] = LabeledPrompt(rec.prompt_id, rec.dataset, rec.prompt, {}, rec.reference, rec.task)
        if rec.model_name in p.outcomes:
            stats.duplicates += 1
        p.outcomes[rec.model_name] = Outcome(bool(rec.is_correct), float(rec.cost))
    stats.torn_last_line = report.torn_last_line
    prompts = list(table.values())
    if require_complete and prompts:
        present = {m for p in prompts for m in p.outcomes}
        need = [m for m in (models or sorted(present)) if m in present]
        kept = [p for p in prompts if all(m in p.outcomes for m in need)]
        stats.incomplete_dropped = len(prompts) - len(kept)
        prompts = kept
    stats.prompts = len(prompts)
    return prompts, stats


def describe_load_stats(st: LoadStats) -> str:
    """One readable line of what ``load_prompts`` kept and left out."""
    parts = [f"{st.records} record(s) read"]
    if st.errored:
        parts.append(f"{st.errored} errored")
    if st.ungraded:
        parts.append(f"{st.ungraded} ungraded")
    if st.unknown_models:
        parts.append(f"{st.unknown_models} of model(s) not in the pool ({', '.join(st.unknown_model_names[:5])})")
    if st.incomplete_dropped:
        parts.append(f"{st.incomplete_dropped} prompt(s) dropped for lacking a model's answer (require_complete)")
    parts.append(f"{st.prompts} prompt(s) kept")
    return ", ".join(parts)


def mean_cost_per_query(prompts: Sequence[LabeledPrompt]) -> dict[str, float]:
    """Each model's mean recorded cost per prompt."""
    tot: dict[str, list[float]] = {}
    for p in prompts:
        for m, o in p.outcomes.items():
            s = tot.setdefault(m, [0.0, 0])
            s[0] += o.cost
            s[1] += 1
    return {m: c / n for m, (c, n) in tot.items() if n}


# ---- summaries ------------------------------------------------------------------------------------------------------


def _percentile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarise(
    prompts: Sequence[LabeledPrompt],
    chosen: Sequence[str],
    *,
    decisions: Sequence[Decision] | None = None,
    outcomes: Sequence[Outcome] | None = None,
) -> dict[str, Any]:
    """Accuracy, total cost, cost per query, share of calls per model, per-dataset breakdown, invalid actions and
    latency for one router's choices. ``outcomes`` overrides the cache lookup (online mode)."""
    n = len(prompts)
    if outcomes is None:
        outcomes = [p.outcomes[m] for p, m in zip(prompts, chosen, strict=True)]
    correct = sum(o.correct for o in outcomes)
    cost = sum(o.cost for o in outcomes)
    share: dict[str, int] = {}
    per_ds: dict[str, dict[str, Any]] = {}
    for p, m, o in zip(prompts, chosen, outcomes):
        share[m] = share.get(m, 0) + 1
        d = per_ds.setdefault(p.dataset, {"n": 0, "correct": 0, "total_cost": 0.0, "calls": {}})
        d["n"] += 1
        d["correct"] += int(o.correct)
        d["total_cost"] += o.cost
        d["calls"][m] = d["calls"].get(m, 0) + 1
    for d in per_ds.values():
        d["accuracy"] = d["correct"] / d["n"]
        d["call_share"] = {m: c / d["n"] for m, c in sorted(d.pop("calls").items())}
    out: dict[str, Any] = {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "total_cost": cost,
        "cost_per_query": cost / n if n else 0.0,
        "call_share": {m: c / n for m, c in sorted(share.items(), key=lambda kv: -kv[1])},
        "per_dataset": dict(sorted(per_ds.items())),
    }
    if decisions is not None:
        inv = [d for d in decisions if not d.valid]
        reasons: dict[str, int] = {}
        for d in inv:
            code = (d.invalid_reason or "unknown").split(":", 1)[0]
            reasons[code] = reasons.get(code, 0) + 1
        lat = [d.latency_s * 1000 for d in decisions]
        out["invalid_actions"] = len(inv)
        out["invalid_reasons"] = reasons
        out["latency_ms"] = {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95), "mean": sum(lat) / len(lat) if lat else None}
    return out


# ---- running routers ------------------------------------------------------------------------------------------------


def _offered(p: LabeledPrompt, pool: Pool, subset: Sequence[str] | None) -> list[ModelSpec]:
    ids = [m for m in (subset or pool.ids) if m in p.outcomes and m in pool]
    return pool.subset(ids)


def run_router(
    router: Router,
    prompts: Sequence[LabeledPrompt],
    offered: Sequence[Sequence[ModelSpec]],
    tau: float | None = None,
    chunk: int = 64,
    on_chunk=None,
) -> list[Decision]:
    """Route every prompt (in chunks; ``on_chunk(start, decisions)`` after each, e.g. to write them out)."""
    out: list[Decision] = []
    for s in range(0, len(prompts), chunk):
        items = [RouteItem(p.prompt, p.prompt_id, p.dataset) for p in prompts[s : s + chunk]]
        ds = router.route_items(items, offered[s : s + chunk], tau)
        if on_chunk is not None:
            on_chunk(s, ds)
        out.extend(ds)
    return out


def sweep(decisions: Sequence[Decision], prompts: Sequence[LabeledPrompt], taus: Sequence[float]) -> list[dict[str, Any]]:
    """The accuracy/cost point of each tau, re-deciding each ScoredDecision (no model pass)."""
    pts = []
    for tau in taus:
        chosen = [d.with_tau(tau).model_id if isinstance(d, ScoredDecision) else d.model_id for d in decisions]
        s = summarise(prompts, chosen)
        pts.append({"tau": tau, "accuracy": s["accuracy"], "total_cost": s["total_cost"], "call_share": s["call_share"]})
    return pts


def exact_sweep(decisions: Sequence[Decision], prompts: Sequence[LabeledPrompt]) -> list[dict[str, Any]]:
    """EVERY operating point of a scoring router's rule (``decision.exact_curve``: one point per breakpoint tau),
    so that the curve's AIQ/APGR/CPT do not depend on a tau list. A non-scored or invalid decision stays fixed."""
    from .decision import exact_curve

    utils, costs, outs = [], [], []
    for d, p in zip(decisions, prompts, strict=True):
        if isinstance(d, ScoredDecision) and d.valid and d.base_scores:
            utils.append(d.base_scores)
            costs.append(d.costs)
        else:
            utils.append({d.model_id: 0.0})
            costs.append({d.model_id: 0.0})
        outs.append({m: (o.correct, o.cost) for m, o in p.outcomes.items()})
    return exact_curve(utils, costs, outs)


async def _online_outcomes(
    prompts: Sequence[LabeledPrompt], chosen: Sequence[str], pool: Pool, concurrency: int
) -> tuple[list[Outcome], list[dict[str, Any]]]:
    import asyncio

    from .grading import can_grade, is_correct
    from .llm import LLMCallError, acall_model

    ungradable = sorted({p.task or p.dataset for p in prompts if not can_grade(p.task)})
    if ungradable:
        raise ValueError(f"online mode needs gradable tasks; these cannot be graded: {ungradable}")
    sem = asyncio.Semaphore(max(1, concurrency))
    results: list[Outcome | None] = [None] * len(prompts)
    extra: list[dict[str, Any]] = [{} for _ in prompts]

    async def one(i: int) -> None:
        p, m = prompts[i], chosen[i]
        async with sem:
            try:
                text, meta = await acall_model(pool.get(m), [{"role": "user", "content": p.prompt}])
            except LLMCallError as e:
                results[i] = Outcome(False, 0.0)
                extra[i] = {"error": str(e)[:500]}
                return
        ok = bool(is_correct(p.task, text, p.reference))
        cost = float(meta.cost)
        results[i] = Outcome(ok, cost)
        extra[i] = {"response": text}

    try:
        await asyncio.gather(*(one(i) for i in range(len(prompts))))
    finally:
        from .llm import aclose

        await aclose()
    return results, extra  # type: ignore[return-value]


# ---- the whole evaluation -------------------------------------------------------------------------------------------


def _strong_weak(singles: dict[str, dict[str, Any]]) -> tuple[str, str]:
    strong = max(singles, key=lambda m: (singles[m]["accuracy"], -singles[m]["total_cost"]))
    weak = min(singles, key=lambda m: (singles[m]["total_cost"], -singles[m]["accuracy"]))
    return strong, weak


def curve_metrics(points: Sequence[dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any]:
    """AIQ, APGR and CPT(50/80/95%) of one curve's points against the reference (see ``metrics``)."""
    pts = [(p["total_cost"], p["accuracy"]) for p in points]
    weak, strong = tuple(ref["weak_point"]), tuple(ref["strong_point"])
    out: dict[str, Any] = {"aiq": metrics.aiq(pts, ref["c_min"], ref["c_max"])}
    if strong[1] != weak[1] and strong[0] > weak[0]:
        out["apgr"] = metrics.apgr(pts, weak, strong)
        for f in (0.5, 0.8, 0.95):
            out[f"cpt{int(f * 100)}"] = metrics.cpt(pts, f, weak, strong)
    hull = [tuple(h) for h in ref["single_hull"]]
    pos = [metrics.dominates(p, hull) for p in pts]
    out["points_above_single_hull"] = pos.count("above")
    out["points_on_single_hull"] = pos.count("on")
    # the bar: more accurate than every single model at no more cost, or as accurate at lower cost
    beats = []
    for c, q in pts:
        for m, (mc, mq) in ref["single_points"].items():
            if (q > mq and c <= mc) or (q >= mq and c < mc):
                beats.append(m)
    out["beats_single_models"] = sorted(set(beats))
    # the issue-14 checks: near the strong model's accuracy for how much of its cost; holes in the cost range
    near = metrics.cheapest_reaching(pts, strong[1] - 0.01)
    out["cost_share_within_1pt_of_strong"] = near[0] / strong[0] if near and strong[0] > 0 else None
    fifths = metrics.cost_fifths_covered(pts)
    out["cost_fifths_covered"] = fifths
    out["no_hole"] = all(fifths)
    out["n_points"] = len(pts)
    return out


def _router_specs(cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """label -> factory spec of every router under test: ``router`` (``cfg.router``, or the adapter) and one per
    extra adapter."""
    out: dict[str, dict[str, Any]] = {}
    if cfg.router is not None:
        if cfg.adapter and cfg.router not in ("lora",):
            raise ValueError(f"give either router ({cfg.router!r}) or adapter ({cfg.adapter!r}), not both")
        out["router"] = {"router": cfg.router, "adapter": cfg.adapter} if cfg.adapter else {"router": cfg.router}
    elif cfg.adapter:
        out["router"] = {"router": "lora", "adapter": cfg.adapter}
    for label, ad in cfg.extra_adapters.items():
        out[label] = {"router": "lora", "adapter": ad}
    for spec in out.values():
        if spec["router"] == "lora" and not spec.get("adapter"):
            raise ValueError("router 'lora' needs adapter (--adapter DIR)")
    return out


def evaluate(cfg: EvalConfig, log=print) -> dict[str, Any]:
    """Run the evaluation described by ``cfg``; write the report files; return report.json's content."""
    t_start = time.perf_counter()
    check_config(cfg)
    pool = load_pool(cfg.pool)
    models = cfg.offered_models or pool.ids
    unknown = [m for m in models if m not in pool]
    if unknown:
        raise ValueError(f"offered_models not in the pool {cfg.pool}: {unknown}")
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    test, test_stats = load_prompts(cfg.test_cache, models, require_complete=cfg.require_complete)
    held_out_ids = {p.prompt_id for p in test}
    if cfg.max_queries is not None and cfg.max_queries < len(test):
        keep = set(random.Random(cfg.seed).sample(range(len(test)), cfg.max_queries))
        test = [p for i, p in enumerate(test) if i in keep]
    if test_stats.unknown_models:
        log(f"warning: {test_stats.unknown_models} record(s) of {len(test_stats.unknown_model_names)} model(s) in "
            f"{cfg.test_cache} left out: not in the pool {cfg.pool}"
            + (" or not offered" if cfg.offered_models else "")
            + f" ({', '.join(test_stats.unknown_model_names[:5])}{', ...' if len(test_stats.unknown_model_names) > 5 else ''})")
    if not test:
        raise ValueError(f"{cfg.test_cache}: no usable prompt: {describe_load_stats(test_stats)}")
    train: list[LabeledPrompt] = []
    train_stats = None
    if cfg.train_cache:
        train, train_stats = load_prompts(cfg.train_cache, models, require_complete=False)
        # the whole held-out set counts here, not only the --max-queries sample
        overlap = {p.prompt_id for p in train} & held_out_ids
        if overlap and cfg.train_overlap == "error":
            raise ValueError(
                f"{len(overlap)} prompt(s) are in both the training and the test cache (e.g. {sorted(overlap)[:3]}): "
                "the evaluation would not be held out"
            )
        if overlap:
            train = [p for p in train if p.prompt_id not in overlap]
            log(f"{len(overlap)} test prompt(s) found in the training cache were left out of training")
        train_stats.overlap_dropped = len(overlap)
    costs = cost_vector(train if cfg.cost_source == "train" else None, pool,
                        origin=f"training cache {cfg.train_cache}" if (cfg.cost_source == "train" and train) else "pool prices")
    cost_vec = costs.usd
    # a cost-ordered cache (xrouter_lite.traversal) skips dearer models: the baselines that learn from every model's
    # label (best-single, kNN) use only its complete rows, the explored questions; the cost vector uses every row
    from .traversal import complete_rows

    train_full = complete_rows(train)
    if len(train_full) < len(train):
        log(f"training cache: {len(train) - len(train_full)} of {len(train)} questions lack some models' labels "
            f"(a cost-ordered cache); best_single and kNN use the {len(train_full)} complete (explored) questions only")
    offered = [_offered(p, pool, models) for p in test]
    log(f"evaluating on {len(test)} prompts ({', '.join(sorted({p.dataset for p in test}))}); "
        f"{len(train)} training prompts; cost vector: {costs.origin}")

    report: dict[str, Any] = {"router": None, "baselines": {}, "curves": {}, "config": cfg.model_dump()}

    # ---- the router(s) under test, built by the one factory
    specs = _router_specs(cfg)
    adapters: dict[str, str | None] = {}
    router_decisions: dict[str, list[Decision]] = {}
    router_objs: dict[str, Router] = {}
    takes_tau: dict[str, bool] = {}
    cost_origin: dict[str, str] = {}
    dec_path = out_dir / "decisions.jsonl"
    if dec_path.exists():
        dec_path.unlink()
    for label, spec in specs.items():
        log(f"[{label}] loading {spec['router']}" + (f" ({cfg.mode} mode)" if spec["router"] == "lora" else ""))
        r = load_router(
            {**spec, "pool": pool, "train_cache": cfg.train_cache, "base_model": cfg.base_model, "mode": cfg.mode,
             "device": cfg.device, "quantize": cfg.quantize, "batch_size": cfg.batch_size,
             "max_prompt_tokens": cfg.max_prompt_tokens, "use_head": cfg.use_head, "score_tokens": cfg.score_tokens, "tau": cfg.tau, "default_model": cfg.default_model,
             "cost_source": "pool" if cfg.cost_source == "pool" else "saved", "k": cfg.knn_k,
             "knn_max_seq_length": cfg.knn_max_seq_length, "n_clusters": cfg.n_clusters, "seed": cfg.seed},
            train=train, log=lambda m, label=label: log(f"[{label}] {m}"),
        )
        adapters[label] = getattr(r, "adapter_dir", None)
        router_objs[label] = r
        takes_tau[label] = r.takes_tau
        cost_origin[label] = r.cost_info.origin if r.cost_info else ""
        if (getattr(r, "adapter_dir", None) and cfg.cost_source == "train" and train
                and read_router_file(r.adapter_dir) is None):
            path = write_router_file(r.adapter_dir, r.spec or {"router": "lora"}, r.cost_info)
            log(f"[{label}] saved its cost vector with the adapter: {path} (serving reads it: the same tau)")
        if label == "router" and r.cost_info is not None and r.cost_info.origin.startswith("saved"):
            cost_vec = r.cost_per_query  # the baselines weigh cost as the router under test does
        if spec["router"] == "lora":
            log(f"[{label}] decision rule: " + ("the decision head next to the adapter (P(correct) - tau x c)"
                                                if getattr(r, "head", None) else "raw scores (logp - tau x c): no decision_head.json"))
        if hasattr(r, "model") and hasattr(r.model, "modules"):
            four_bit = any(type(m).__name__ == "Linear4bit" for m in r.model.modules())
            log(f"[{label}] base weights {'4-bit NF4' if four_bit else 'unquantised'} on {r.device} (quantize={cfg.quantize})")
        f = dec_path.open("a", encoding="utf-8") if label == "router" else None

        def write_chunk(start: int, ds: list[Decision], f=f, label=label, r=r) -> None:
            if f is None:
                return
            for p, off, d in zip(test[start : start + len(ds)], offered[start : start + len(ds)], ds):
                o = p.outcomes[d.model_id]
                f.write(json.dumps({
                    "prompt_id": p.prompt_id, "dataset": p.dataset, "offered": [s.id for s in off],
                    "router": r.name, "chosen": d.model_id, "tau": cfg.tau, "valid": d.valid,
                    **({"score_tokens": r.score_tokens} if hasattr(r, "score_tokens") else {}),
                    "invalid_reason": d.invalid_reason,
                    "base_scores": getattr(d, "base_scores", d.scores), "costs": getattr(d, "costs", {}),
                    "router_scores": getattr(d, "router_scores", {}) or getattr(d, "base_scores", d.scores),
                    "scores": d.scores, "latency_s": d.latency_s, "is_correct": o.correct, "cost": o.cost,
                    "raw": d.raw if cfg.mode == "generate" else None,
                }, ensure_ascii=False) + "\n")
            f.flush()
            log(f"[{label}] {start + len(ds)}/{len(test)} routed")

        try:
            router_decisions[label] = run_router(r, test, offered, cfg.tau, chunk=max(cfg.batch_size, 16), on_chunk=write_chunk)
        finally:
            if f is not None:
                f.close()
        del r
        if router_objs[label].name == "lora":
            router_objs[label] = None  # type: ignore[assignment]  (frees the model; its flags are read below)
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # ---- baselines (always offline)
    common = {"cost_per_query": cost_vec, "default_model": cfg.default_model}
    wanted = set(cfg.baselines)
    bad = wanted - set(ALL_BASELINES)
    if bad:
        raise ValueError(f"unknown baseline(s) {sorted(bad)}; known: {list(ALL_BASELINES)}")
    singles: dict[str, dict[str, Any]] = {}
    for m in models:
        if all(m in p.outcomes for p in test):
            singles[m] = summarise(test, [m] * len(test))
    if "single" in wanted:
        for m, s in singles.items():
            report["baselines"][f"single:{m}"] = s
    baseline_decisions: dict[str, list[Decision]] = {}
    if "random" in wanted:
        ds = run_router(RandomRouter(cfg.seed, **common), test, offered)
        report["baselines"]["random"] = summarise(test, [d.model_id for d in ds], decisions=ds)
    if "oracle" in wanted:
        oracle = OracleRouter({p.prompt_id: p.outcomes for p in test}, **common)
        ds = run_router(oracle, test, offered)
        report["baselines"]["oracle"] = summarise(test, [d.model_id for d in ds], decisions=ds)
    if "best_single" in wanted:
        if not train_full:
            log("best_single skipped: no train_cache (or no complete row in it)")
        else:
            bs = BestSingleRouter(train_full, **common)
            ds = run_router(bs, test, offered, 0.0)
            s = summarise(test, [d.model_id for d in ds], decisions=ds)
            s["choice_per_dataset"] = bs.choice_per_dataset(models=models)
            report["baselines"]["best_single_per_dataset"] = s
            baseline_decisions["best_single_per_dataset"] = ds
    if "knn" in wanted:
        if not train_full:
            log("knn skipped: no train_cache (or no complete row in it)")
        else:
            r0 = router_objs.get("router")
            if r0 is not None and r0.name == "knn" and r0.cost_per_query == cost_vec:
                ds = [d.with_tau(0.0) for d in router_decisions["router"]]  # the router under test is this baseline
            else:
                log(f"kNN baseline: embedding {len(train_full)} training prompts")
                knn = load_router("knn", pool=pool, train=train_full, k=cfg.knn_k, knn_max_seq_length=cfg.knn_max_seq_length,
                                  cost_per_query=cost_vec, default_model=cfg.default_model)
                ds = run_router(knn, test, offered, 0.0)
            s = summarise(test, [d.with_tau(cfg.tau).model_id for d in ds], decisions=ds)  # type: ignore[union-attr]
            s["tau"] = cfg.tau
            report["baselines"]["knn"] = s
            baseline_decisions["knn"] = ds

    # ---- the router's headline figures
    for label, ds in router_decisions.items():
        chosen = [d.model_id for d in ds]
        outcomes = None
        if cfg.online and label == "router":
            import asyncio

            log(f"online mode: calling {len(chosen)} chosen models")
            outcomes, extra = asyncio.run(_online_outcomes(test, chosen, pool, cfg.online_concurrency))
            with (out_dir / "online_answers.jsonl").open("w", encoding="utf-8") as f:
                for p, m, o, e in zip(test, chosen, outcomes, extra):
                    f.write(json.dumps({"prompt_id": p.prompt_id, "model": m, "is_correct": o.correct, "cost": o.cost, **e}) + "\n")
        s = summarise(test, chosen, decisions=ds, outcomes=outcomes)
        s.update({"name": label, "router": specs[label]["router"], "adapter": adapters[label],
                  "mode": cfg.mode if specs[label]["router"] == "lora" else "score", "takes_tau": takes_tau[label],
                  "tau": cfg.tau, "batch_size": cfg.batch_size, "online": bool(cfg.online and label == "router"),
                  "cost_vector": cost_origin[label]})
        if label == "router":
            report["router"] = s
        else:
            report.setdefault("extra_routers", {})[label] = s

    # ---- curves and their numbers
    if singles:
        single_pts = {m: (s["total_cost"], s["accuracy"]) for m, s in singles.items()}
        strong, weak = _strong_weak(singles)
        costs = [c for c, _ in single_pts.values()]
        ref = {
            "strong_model": strong, "weak_model": weak,
            "strong_point": single_pts[strong], "weak_point": single_pts[weak],
            "c_min": min(costs), "c_max": max(costs),
            "single_points": single_pts,
            "single_hull": metrics.ndch(single_pts.values()),
        }
        curves: dict[str, Any] = {"reference": ref, "points": {}, "metrics": {}}
        curves["metrics"]["single_models_hull"] = {"aiq": metrics.aiq(single_pts.values(), ref["c_min"], ref["c_max"])}
        curves["tau_table"] = {}
        for label, ds in router_decisions.items():
            if takes_tau[label]:
                curves["points"][label] = exact_sweep(ds, test)
                curves["tau_table"][label] = sweep(ds, test, cfg.taus)
                if any(getattr(d, "router_scores", None) and d.router_scores != d.base_scores for d in ds):
                    # a decision head decided: the raw rule (logp - tau x c) on the same scores, for comparison
                    raw = [ScoredDecision(d.model_id, d.scores, valid=d.valid, base_scores=d.router_scores or d.base_scores,
                                          costs=d.costs) if isinstance(d, ScoredDecision) else d for d in ds]
                    curves["points"][f"{label}_raw_scores"] = exact_sweep(raw, test)
            else:
                s = summarise(test, [d.model_id for d in ds])
                curves["points"][label] = [{"tau": None, "accuracy": s["accuracy"], "total_cost": s["total_cost"], "call_share": s["call_share"]}]
        if len(router_decisions) > 1:
            curves["points"]["routers_all_adapters"] = [p for label in router_decisions for p in curves["points"][label]]
        for name in ("knn", "best_single_per_dataset"):
            if name in baseline_decisions:
                curves["points"][name] = exact_sweep(baseline_decisions[name], test)
                curves["tau_table"][name] = sweep(baseline_decisions[name], test, cfg.taus)
        for label, pts in curves["points"].items():
            curves["metrics"][label] = curve_metrics(pts, ref)
        for name in ("random", "oracle"):
            if name in report["baselines"]:
                b = report["baselines"][name]
                curves["metrics"][name] = curve_metrics([b], ref)
        report["curves"] = curves
        if cfg.plot:
            try:
                plot_curves(report, out_dir / "curve.png")
            except Exception as e:  # the plot is a convenience; the numbers are in report.json
                log(f"plot failed: {e}")

    report["data"] = {
        "test": test_stats.__dict__, "train": train_stats.__dict__ if train_stats else None,
        "n_test_prompts": len(test), "models": [m for m in models if m in singles] or list(models),
        "cost_vector": cost_vec, "seconds": time.perf_counter() - t_start,
        "train_complete_prompts": len(train_full),  # what best_single / kNN learned from (explored rows only)
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    log(f"wrote {out_dir / 'report.json'}, report.md, decisions.jsonl" + (", curve.png" if cfg.plot else ""))
    return report


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "__dict__"):
        return o.__dict__
    return str(o)


# ---- outputs --------------------------------------------------------------------------------------------------------


def plot_curves(report: dict[str, Any], path: str | Path) -> None:
    """The accuracy/cost plot: single models, their hull, the oracle, random, the router's (and kNN's) curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report["curves"]
    ref = curves["reference"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for m, (c, q) in ref["single_points"].items():
        ax.scatter([c], [q], color="grey", zorder=3)
        ax.annotate(m.split("/")[-1], (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    hull = ref["single_hull"]
    if hull:
        # drawn densely so that the hull's straight (linear-cost) segments show right on a log axis
        xs = [hull[0][0] + (ref["c_max"] - hull[0][0]) * i / 400 for i in range(401)]
        ax.plot(xs, [metrics.hull_value(hull, x) for x in xs], "--", color="grey", label="single models' hull")
    styles = {"router": ("tab:red", "o-"), "knn": ("tab:blue", "s-"), "best_single_per_dataset": ("tab:green", "^-")}
    for label, pts in curves["points"].items():
        if label == "routers_all_adapters":
            continue
        color, fmt = styles.get(label, (None, "o-"))
        srt = sorted(pts, key=lambda p: p["total_cost"])
        ax.plot([p["total_cost"] for p in srt], [p["accuracy"] for p in srt], fmt, color=color, ms=4,
                label=f"{label} (AIQ {curves['metrics'][label]['aiq']:.3f})")
    b = report["baselines"]
    if "oracle" in b:
        ax.scatter([b["oracle"]["total_cost"]], [b["oracle"]["accuracy"]], marker="*", s=180, color="gold",
                   edgecolor="k", zorder=4, label="oracle")
    if "random" in b:
        ax.scatter([b["random"]["total_cost"]], [b["random"]["accuracy"]], marker="x", s=60, color="k", label="random")
    allc = [c for c, _ in ref["single_points"].values()] + [p["total_cost"] for pts in curves["points"].values() for p in pts]
    if "oracle" in b:
        allc.append(b["oracle"]["total_cost"])
    if min(allc) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("total cost of the test set (USD)")
    ax.set_ylabel("accuracy")
    n = report["router"]["n"] if report.get("router") else next(iter(report["baselines"].values()))["n"]
    ax.set_title(f"accuracy vs cost on {n} held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_cpt(v: dict[str, float] | None) -> str:
    return "not reached" if v is None else f"${v['cost']:.4g} ({100 * v['cost_share']:.1f}% of strong)"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the headline table, baselines, curve numbers, per-dataset breakdown."""
    lines = ["# Router evaluation", ""]
    r = report.get("router")
    rows = []
    if r:
        rows.append(("router (" + r["mode"] + f", tau={r['tau']})", r))
    for label, s in (report.get("extra_routers") or {}).items():
        rows.append((label, s))
    rows += list(report["baselines"].items())
    n = rows[0][1]["n"] if rows else 0
    lines += [f"{n} held-out prompts. Cost: total recorded USD of answering them all.", "",
              "| router | accuracy | total cost | cost/query | top models (share of calls) |", "|---|---:|---:|---:|---|"]
    for name, s in rows:
        top = ", ".join(f"{m.split('/')[-1]} {100 * v:.0f}%" for m, v in list(s["call_share"].items())[:3])
        lines.append(f"| {name} | {100 * s['accuracy']:.1f}% | ${s['total_cost']:.4f} | ${s['cost_per_query']:.6f} | {top} |")
    if r:
        lat = r.get("latency_ms") or {}
        lines += ["", f"Router: {r.get('invalid_actions', 0)} invalid action(s) {r.get('invalid_reasons') or ''}; "
                  f"decision latency p50 {lat.get('p50') or 0:.1f} ms, p95 {lat.get('p95') or 0:.1f} ms "
                  f"(batch size {r.get('batch_size')}; per-query time = batch time / batch size)."]
    c = report.get("curves") or {}
    if c:
        ref = c["reference"]
        lines += ["", "## Curves", "",
                  f"Reference: strong = {ref['strong_model']} ({100 * ref['strong_point'][1]:.1f}%, ${ref['strong_point'][0]:.4f}), "
                  f"weak = {ref['weak_model']} ({100 * ref['weak_point'][1]:.1f}%, ${ref['weak_point'][0]:.4f}). "
                  "AIQ over cost normalised between the cheapest and the dearest single model; APGR/CPT over "
                  "cost between weak and strong (see xrouter_lite/metrics.py).", "",
                  "| curve | AIQ | APGR | CPT(50%) | CPT(80%) | CPT(95%) | points above single hull | beats |",
                  "|---|---:|---:|---|---|---|---:|---|"]
        for label, m in c["metrics"].items():
            apgr = f"{m['apgr']:.3f}" if "apgr" in m else "-"
            lines.append(
                f"| {label} | {m['aiq']:.3f} | {apgr} | {_fmt_cpt(m.get('cpt50'))} | {_fmt_cpt(m.get('cpt80'))} | "
                f"{_fmt_cpt(m.get('cpt95'))} | {m.get('points_above_single_hull', '-')} | "
                f"{', '.join(x.split('/')[-1] for x in m.get('beats_single_models', [])) or '-'} |"
            )
        lines += ["", "Curves are exact: every breakpoint of each rule's tau (report.json keeps the points). "
                  "Within 1 pt of strong: the cheapest point at most 1 point below the strong model's accuracy, as a "
                  "share of its cost. Fifths: which fifths of the curve's own cost range hold a point (a gap is a hole).",
                  "", "| curve | points | within 1 pt of strong | fifths covered |", "|---|---:|---:|---|"]
        for label, m in c["metrics"].items():
            if "n_points" not in m:
                continue
            share = m.get("cost_share_within_1pt_of_strong")
            lines.append(f"| {label} | {m['n_points']} | {'not reached' if share is None else f'{100 * share:.1f}%'} | "
                         + "".join("x" if f else "." for f in m["cost_fifths_covered"]) + " |")
        table = (c.get("tau_table") or {}).get("router")
        if table:
            lines += ["", "Router at the configured taus:", "", "| tau | accuracy | total cost |", "|---:|---:|---:|"]
            for p in table:
                lines.append(f"| {p['tau']} | {100 * p['accuracy']:.1f}% | ${p['total_cost']:.4f} |")
    if r:
        lines += ["", "## Per dataset (router)", "", "| dataset | n | accuracy | total cost |", "|---|---:|---:|---:|"]
        for ds, d in r["per_dataset"].items():
            lines.append(f"| {ds} | {d['n']} | {100 * d['accuracy']:.1f}% | ${d['total_cost']:.4f} |")
    lines.append("")
    return "\n".join(lines)


def rederive_from_decisions(
    decisions_path: str | Path, cache_path: str | Path, tau: float | None = None
) -> dict[str, Any]:
    """Recompute the router's accuracy, total cost and call shares from decisions.jsonl and the cache alone
    (at the logged tau, or re-deciding at ``tau`` from the logged base scores and costs)."""
    from .router import decide

    prompts, _ = load_prompts(cache_path)
    by_id = {p.prompt_id: p for p in prompts}
    used, chosen = [], []
    with Path(decisions_path).open(encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            p = by_id.get(d["prompt_id"])
            if p is None:
                raise KeyError(f"{decisions_path}:{ln}: prompt {d['prompt_id']!r} is not in {cache_path}")
            m = d["chosen"]
            if tau is not None and d["valid"] and d["base_scores"]:
                m = decide(d["base_scores"], d["costs"], tau)[0]
            used.append(p)
            chosen.append(m)
    return summarise(used, chosen)
