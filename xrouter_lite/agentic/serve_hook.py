"""The server's hook for ``model="router-agentic"`` / ``"router-agentic-<tau>"`` (issue 16). serve.py calls
``agentic_chat`` for these model names and nothing else changes there; this module adapts the server's pieces
(pool, budgets and ledger, upstream calls, scrubbing, the loaded router) to ``runner.run_agentic``.

The policy: the trained LoRA router scores each state's actions; a server of the cluster router
(``--router cluster --train-cache CACHE``) decides with the exact-value table over its clusters (``table.py``),
where the tau of ``router-agentic-<tau>`` is the table's lambda; a server of the logistic router (``--router logistic
--train-cache CACHE``) with the logistic-valued table (``logistic_table.py``), tau its cost knob.

Request extras (``extra_body``): ``models`` (offered subset), ``max_cost_usd`` (counts every call of the
trajectory), ``max_calls`` (default 3). ``router_metadata``: model_used, total_cost, router_cost,
target_models_cost, routing_strategy (direct | select | escalate), call_history (every call: model_id, cost,
latency, error, turn, answer_read), turns_used, decisions, tau, max_calls, total_time."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from ..prompting import DEFAULT_MAX_CALLS, conversation_to_query
from .runner import AllCallsFailedError, BudgetError, run_agentic

AGENTIC_MODEL = "router-agentic"


def is_agentic_model(name: str) -> bool:
    return name == AGENTIC_MODEL or name.startswith(AGENTIC_MODEL + "-")


def _tau(srv, name: str) -> float:
    from ..serve.protocol import ApiError

    if name == AGENTIC_MODEL:
        return float(srv.settings.tau or 0.0)
    try:
        tau = float(name[len(AGENTIC_MODEL) + 1 :])
    except ValueError:
        tau = math.nan
    if not math.isfinite(tau):
        raise ApiError(400, f"model {name!r}: the cost knob after 'router-agentic-' must be a finite number, e.g. "
                       "'router-agentic-2'", param="model", code="invalid_model")
    return tau


def _built_once(srv, attr: str, build):
    """``srv.<attr>``, built by ``build(router, train_cache, pool)`` on first use (one thread builds, the others wait)."""
    import threading

    lock = srv.__dict__.setdefault(f"_{attr}_lock", threading.Lock())
    with lock:
        t = getattr(srv, attr, None)
        if t is None:
            t = build(srv.router, srv.settings.train_cache, srv.pool)
            setattr(srv, attr, t)
        return t


def cluster_table(srv):
    """The agentic table over the served cluster router's clusters (built once, from --train-cache)."""
    from .table import build_from_cluster_router

    return _built_once(srv, "agentic_table", build_from_cluster_router)


def logistic_table(srv):
    """The logistic-valued agentic table over the served logistic router's training embeddings (built once, from
    --train-cache)."""
    from .logistic_table import build_from_logistic_router

    return _built_once(srv, "agentic_logistic_table", build_from_logistic_router)


def warm_tables(srv) -> None:
    """At start-up, in the background: build the agentic table of a cluster or logistic router served with
    --train-cache (tens of seconds on a full pool), so that the first ``router-agentic`` request does not pay for it
    (one arriving during the build waits for it). A failure is logged here and raised again by the request."""
    if srv.settings.train_cache is None:
        return
    try:
        if hasattr(srv.router, "clusters_of"):
            cluster_table(srv)
        elif getattr(srv.router, "name", None) == "logistic":
            logistic_table(srv)
    except Exception as e:  # noqa: BLE001 - the request path reports it to the client
        import logging

        logging.getLogger(__name__).warning("agentic table not built at start-up: %s", e)


def lora_scorer(router):
    """score(prompt, actions) over a loaded ``LoRARouter`` (the same scorer as ``eval --agentic``)."""
    from .evaluate import lora_score_fn

    fn = lora_score_fn(router)
    return lambda prompt, actions: fn([prompt], [actions])[0]


async def agentic_chat(srv, req, messages, params, rid: str, t0: float):
    from fastapi.responses import Response, StreamingResponse

    from ..llm import acall_model
    from ..serve.budget import estimate_cost
    from ..serve.protocol import ApiError, usage
    from ..serve.upstream import describe_error as _describe_error

    s = srv.settings
    tau = _tau(srv, req.model)
    extra = req.model_extra or {}
    max_calls = extra.get("max_calls", DEFAULT_MAX_CALLS)
    if not isinstance(max_calls, int) or isinstance(max_calls, bool) or not 1 <= max_calls <= 4:
        raise ApiError(400, "'max_calls' must be an integer from 1 to 4", param="max_calls", code="invalid_value")
    score = None
    if hasattr(srv.router, "clusters_of"):  # the cluster router: the exact-value table over its clusters (table.py)
        if srv.settings.train_cache is None:
            raise ApiError(400, "router-agentic with the cluster router needs the training cache the router was built "
                           "from (serve --train-cache CACHE)", param="model", code="invalid_model")
        table = await asyncio.to_thread(cluster_table, srv)
        from .table import nearest

        e = await asyncio.to_thread(srv.router._embed, [conversation_to_query(list(messages))])
        cl = nearest(table.centroids, e)[0]  # the question's cluster, once per request

        def decide(turns, acts):
            reads = {c.model_id: c.read for t in turns for c in t if c.error is None}
            return table.decide(cl, reads, acts, tau)
    elif getattr(srv.router, "name", None) == "logistic":  # the logistic-valued table (logistic_table.py)
        if srv.settings.train_cache is None:
            raise ApiError(400, "router-agentic with the logistic router needs the training cache the router was built "
                           "from (serve --train-cache CACHE)", param="model", code="invalid_model")
        ltable = await asyncio.to_thread(logistic_table, srv)
        e = await asyncio.to_thread(srv.router._embed, [conversation_to_query(list(messages))])
        p = ltable.predict(e)[0]  # every state value's probability for this question, once per request

        def decide(turns, acts):
            reads = {c.model_id: c.read for t in turns for c in t if c.error is None}
            failed = [c.model_id for t in turns for c in t if c.error is not None]
            return ltable.decide(p, reads, acts, tau, failed)
    else:
        decide = None
        score = getattr(srv, "agentic_score", None)
        if score is None:
            if not hasattr(srv.router, "_score_batch"):
                raise ApiError(400, "this server's router cannot decide agentic states: serve the trained LoRA router, "
                               "the logistic router or the cluster router (--router logistic|cluster --train-cache CACHE)", param="model",
                               code="invalid_model")
            score = srv.agentic_score = lora_scorer(srv.router)
    budget = req.max_cost_usd if req.max_cost_usd is not None else (
        s.request_budget_usd if s.request_budget_usd is not None else math.inf)

    def est(spec) -> float:
        return estimate_cost(spec, messages, params, s.expected_output_tokens)

    offered = srv.budget_filter(srv.offered_for(req), messages, params, budget)

    tokens = [0, 0]  # prompt and completion tokens of every call of the trajectory (the usage reported)

    async def call(model_id: str, msgs):
        spec = srv.pool.get(model_id)
        e = est(spec)
        if e > srv.ledger.remaining():
            raise RuntimeError("the server's budget is exhausted")
        srv.ledger.reserve(e)
        try:
            c = acall_model(spec, msgs, params, pool=srv.pool, timeout_s=s.upstream_timeout_s,
                            max_retries=s.upstream_max_retries, transport=s.upstream_transport)
            text, meta = await asyncio.wait_for(c, (s.upstream_timeout_s + 30.0) * (s.upstream_max_retries + 1))
        except asyncio.CancelledError:
            srv.ledger.settle(e, 0.0)
            raise
        except Exception as ex:  # noqa: BLE001
            srv.ledger.settle(e, 0.0)
            msg, _timed_out = _describe_error(ex, s.upstream_timeout_s, srv.scrub)
            raise RuntimeError(msg) from None
        srv.ledger.settle(e, meta.cost)
        tokens[0] += meta.input_tokens or 0
        tokens[1] += meta.output_tokens or 0
        return text, meta.cost, meta.latency_s

    def metadata(res) -> dict[str, Any]:
        return {
            "model_used": res.model_used, "total_cost": res.total_cost, "router_cost": 0.0,
            "target_models_cost": res.total_cost, "routing_strategy": res.routing_strategy,
            "call_history": res.call_history, "turns_used": res.turns_used, "decisions": res.decisions,
            "stop_reason": res.stop_reason, "tau": tau, "max_calls": max_calls,
            "total_time": round(time.perf_counter() - t0, 6),
        }

    try:
        res = await run_agentic(messages, offered, call, score, tau=tau, max_calls=max_calls,
                                max_cost_usd=None if math.isinf(budget) else budget, estimate=est, decide=decide)
    except BudgetError:
        raise ApiError(402, "no offered model fits the request budget", "insufficient_quota", param="max_cost_usd",
                       code="request_budget_exceeded") from None
    except AllCallsFailedError as e:
        raise ApiError(502, srv.scrub(str(e))[:1000], "upstream_error", code="upstream_error",
                       extra={"router_metadata": metadata(e.result)}) from None
    md = metadata(res)
    headers = {"x-request-id": rid, "x-router-model": res.model_used, "x-router-cost": repr(res.total_cost),
               "x-router-strategy": res.routing_strategy}
    created = int(time.time())
    text = res.answer or ""
    if not req.stream:
        body = {"id": rid, "object": "chat.completion", "created": created, "model": res.model_used,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage(*tokens), "router_metadata": md}
        return Response(json.dumps(body).encode(), media_type="application/json", headers=headers)

    def chunk(choices, **kw) -> str:
        return "data: " + json.dumps({"id": rid, "object": "chat.completion.chunk", "created": created,
                                      "model": res.model_used, "choices": choices, **kw}) + "\n\n"

    async def gen():
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i in range(0, len(text), 64):  # the chosen answer exists only once every call is done
            yield chunk([{"index": 0, "delta": {"content": text[i : i + 64]}, "finish_reason": None}])
        # as the routed stream does (docs/SERVING.md): router_metadata on the last chunk with choices, and a usage
        # chunk (choices: []) only when the client asked for it with stream_options.include_usage
        yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], router_metadata=md)
        if req.include_usage:
            yield chunk([], usage=usage(*tokens), router_metadata=md)
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})
