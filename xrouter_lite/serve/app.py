"""The server: ``RouterServer`` (plan a route, then execute the calls with fallback), the FastAPI app and the
streaming response, the one function that builds the router (``load_router``) and ``run_server``.
The manual is docs/SERVING.md."""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request  # module level: FastAPI resolves the handlers' annotations here

from ..pool import ModelSpec, Pool, load_pool
from ..prompting import conversation_to_query
from ..router import BaseRouter, Decision
from .batcher import DecisionBatcher, QueueFullError
from .budget import BudgetLedger, estimate_costs, estimate_prompt_tokens
from ..agentic.serve_hook import agentic_chat, is_agentic_model
from .decision_log import DecisionLog
from .protocol import (
    ROUTER_MODEL,
    TOOL_CAPABILITY,
    ApiError,
    ChatRequest,
    decode_json_body,
    finite_or_none,
    parse_chat_request,
    usage,
)
from .settings import ServeSettings
from .upstream import CallRecord, Scrubber, UpstreamStream, call_once, warm_litellm

log = logging.getLogger("xrouter_lite.serve")

_TAU_RE = re.compile(r"^router-(.+)$")
_CLIENT_ERRORS = {400, 413, 422}  # an upstream that refuses the request itself: the client's request is at fault


@dataclass
class Plan:
    """What a chat request resolved to: the models to try in order, and what the router said."""

    request_id: str
    strategy: str  # "route" | "bypass"
    offered: list[ModelSpec]
    tau: float | None
    budget: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    decision: Decision | None = None
    router_failed: bool = False
    decision_s: float = 0.0


class RouterServer:
    """The state behind the app: router, batcher, pool, settings, budget ledger, decision log, counters.

    A request goes ``plan`` (which models, in which order: the router's decision, or the named model) then
    ``complete`` or ``open_stream`` (the calls, falling back along the plan's order), then ``finish`` (metadata,
    decision log)."""

    def __init__(self, pool: Pool, settings: ServeSettings, router: BaseRouter | None = None,
                 router_factory: Callable[[ServeSettings, Pool], BaseRouter] | None = None):
        if router is None and router_factory is None:
            raise ValueError("create_app needs a router or a router_factory")
        self.pool = pool
        self.settings = settings
        self.router = router
        self.router_factory = router_factory
        self.batcher: DecisionBatcher | None = None
        self.ledger = BudgetLedger(settings.server_budget_usd)
        self.scrub = Scrubber(pool, [settings.api_key.get_secret_value()] if settings.api_key else [])
        self.decision_log: DecisionLog | None = None
        self.inflight = 0
        self.counts = {"requests": 0, "errors": 0, "fallbacks": 0, "router_failures": 0}
        offered = settings.offered or pool.ids
        unknown = [m for m in offered if m not in pool]
        if unknown:
            raise ValueError(f"settings.offered names models not in the pool {pool.source}: {unknown}")
        self.default_offered = [pool.get(m) for m in offered]
        if settings.default_model is not None and settings.default_model not in pool:
            raise ValueError(f"default_model {settings.default_model!r} is not in the pool {pool.source} "
                             f"(known: {', '.join(pool.ids)})")

    # ---- lifecycle
    async def startup(self) -> None:
        from .. import llm

        if any(not llm.uses_direct_transport(m, self.settings.upstream_transport) and not m.hf_model
               for m in self.pool):
            # importing litellm takes seconds: at start-up, not on the first request
            await asyncio.to_thread(warm_litellm, self.pool)
        if self.router is None:
            t0 = time.perf_counter()
            self.router = await asyncio.to_thread(self.router_factory, self.settings, self.pool)
            log.info("router %s loaded in %.1f s", getattr(self.router, "name", "?"), time.perf_counter() - t0)
        s = self.settings
        if s.decision_log is not None:
            self.decision_log = DecisionLog(s.decision_log, s.decision_log_messages)
        self.batcher = DecisionBatcher(self.router, s.max_router_batch, s.batch_window_ms / 1000.0, s.max_router_queue)
        await self.batcher.warm_up(self.default_offered)
        self.batcher.start()
        from ..agentic.serve_hook import warm_tables

        # the agentic table of a cluster / logistic router, built in the background (one-shot requests go on)
        self._agentic_warm = asyncio.create_task(asyncio.to_thread(warm_tables, self))

    async def shutdown(self) -> None:
        from .. import llm

        warm = getattr(self, "_agentic_warm", None)
        if warm is not None and not warm.done():
            warm.cancel()  # the build's thread finishes on its own; nothing waits for it
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decision_log is not None:
            self.decision_log.close()
        await llm.aclose()  # this event loop's session of the direct transport

    # ---- the request
    def check_auth(self, request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        got = request.headers.get("authorization", "")
        token = got[7:].strip() if got[:7].lower() == "bearer " else ""
        if not token or not hmac.compare_digest(token.encode(), key.get_secret_value().encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    async def read_json(self, request) -> dict[str, Any]:
        limit = self.settings.max_body_bytes
        cl = request.headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                raise ApiError(400, "invalid Content-Length header", code="invalid_request") from None
            if n > limit:
                raise ApiError(413, f"request body of {n} bytes is over the limit of {limit} bytes",
                               code="request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
        return decode_json_body(bytes(body))

    def resolve_model(self, req: ChatRequest) -> tuple[str, float | None, ModelSpec | None]:
        """``("route", tau, None)`` or ``("bypass", None, spec)``."""
        name = req.model
        if name == ROUTER_MODEL:
            return "route", self.settings.tau, None
        if name in self.pool:
            return "bypass", None, self.pool.get(name)
        tau = self.tau_of_model_name(name)
        if tau is not None:
            return "route", tau, None
        raise ApiError(404, f"the model {name!r} does not exist: use 'router', 'router-<tau>' or a pool model "
                       f"({', '.join(self.pool.ids)})", param="model", code="model_not_found")

    def tau_of_model_name(self, name: str) -> float | None:
        """The tau of ``router-<tau>``; None for another name; ApiError(400) for a bad one."""
        m = _TAU_RE.match(name)
        if not m:
            return None
        try:
            tau = float(m.group(1))
        except ValueError:
            tau = math.nan
        if not math.isfinite(tau):
            raise ApiError(400, f"model {name!r}: the cost knob after 'router-' must be a finite number, "
                           f"e.g. 'router-0.5'", param="model", code="invalid_model")
        if not getattr(self.router, "takes_tau", True):
            raise ApiError(400, f"model {name!r}: this server's router ({getattr(self.router, 'name', '?')}"
                           f"{', mode generate' if getattr(self.router, 'mode', '') == 'generate' else ''}) "
                           "has no cost knob; use model 'router'", param="model", code="invalid_model")
        return tau

    def offered_for(self, req: ChatRequest) -> list[ModelSpec]:
        if req.models is None:
            offered = list(self.default_offered)
        else:
            if not req.models:
                raise ApiError(400, "'models' must name at least one pool model", param="models", code="invalid_value")
            unknown = [m for m in req.models if m not in self.pool]
            if unknown:
                raise ApiError(400, f"'models' names models not in the pool: {unknown} (known: "
                               f"{', '.join(self.pool.ids)})", param="models", code="invalid_value")
            seen: dict[str, ModelSpec] = {}
            for m in req.models:
                seen.setdefault(m, self.pool.get(m))
            offered = list(seen.values())
        if req.wants_tools:
            able = [s for s in offered if TOOL_CAPABILITY in s.capabilities]
            if not able:
                everywhere = [s.id for s in self.pool if TOOL_CAPABILITY in s.capabilities]
                raise ApiError(400, f"the request has tools, and none of the offered models "
                               f"({', '.join(s.id for s in offered)}) has the '{TOOL_CAPABILITY}' capability in the "
                               f"pool file (pool models with it: {', '.join(everywhere) or 'none'})",
                               param="tools", code="no_tool_capable_model")
            offered = able
        return offered

    def estimates(self, specs: list[ModelSpec], messages, params) -> dict[str, float]:
        return estimate_costs(specs, messages, params, self.settings.expected_output_tokens)

    def budget_filter(self, specs: list[ModelSpec], messages, params, budget: float) -> list[ModelSpec]:
        server_left = self.ledger.remaining()
        est = self.estimates(specs, messages, params)
        ok = [s for s in specs if est[s.id] <= budget and est[s.id] <= server_left]
        cheapest = min(est.values(), default=math.inf)
        if ok:
            return ok
        lg = self.ledger
        if cheapest > server_left:
            if cheapest > lg.limit:
                raise ApiError(402, f"this request's estimated cost (about ${cheapest:.6f} with the cheapest offered "
                               f"model) exceeds the server's whole budget of ${lg.limit:.6f}; set a lower max_tokens "
                               "or raise the server budget", "insufficient_quota", code="server_budget_exceeded")
            raise ApiError(402, f"the server's budget is exhausted: ${max(server_left, 0):.6f} left of "
                           f"${lg.limit:.6f} (${lg.spent:.6f} spent, ${lg.reserved:.6f} reserved by calls in flight); "
                           f"the cheapest offered model needs about ${cheapest:.6f}", "insufficient_quota",
                           code="server_budget_exhausted")
        raise ApiError(402, f"no offered model fits the request budget of ${budget:.6f} (the cheapest needs about "
                       f"${cheapest:.6f}; raise max_cost_usd or set max_tokens)", "insufficient_quota",
                       param="max_cost_usd", code="request_budget_exceeded")

    def default_for(self, offered: list[ModelSpec], messages, params) -> str:
        ids = [s.id for s in offered]
        if self.settings.default_model in ids:
            return self.settings.default_model
        est = self.estimates(offered, messages, params)
        return min(offered, key=lambda s: (est[s.id], ids.index(s.id))).id

    async def plan(self, req: ChatRequest, messages, params, request_id: str) -> Plan:
        """Which models to try, in which order: the named one (bypass), or the router's ranking of the offered
        models that fit the budgets (the default model first when the router fails)."""
        kind, tau, spec = self.resolve_model(req)
        budget = req.max_cost_usd if req.max_cost_usd is not None else (
            self.settings.request_budget_usd if self.settings.request_budget_usd is not None else math.inf)
        if kind == "bypass":
            self.budget_filter([spec], messages, params, budget)
            return Plan(request_id, "bypass", [spec], None, budget, order=[spec.id])
        try:
            query = conversation_to_query(messages)
        except ValueError as e:
            raise ApiError(400, f"{e}: the router needs a user turn", param="messages", code="invalid_value") from None
        offered = self.budget_filter(self.offered_for(req), messages, params, budget)
        plan = Plan(request_id, "route", offered, tau, budget)
        t0 = time.perf_counter()
        decision: Decision | None = None
        reason = None
        try:
            decision = await asyncio.wait_for(self.batcher.decide(query, offered, tau), self.settings.router_timeout_s)
        except QueueFullError:
            raise ApiError(503, "the router is overloaded (queue full); retry shortly", "server_error",
                           code="overloaded", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            reason = f"router time-out ({self.settings.router_timeout_s:g} s)"
        except Exception as e:
            reason = "router error: " + self.scrub(f"{type(e).__name__}: {e}")[:300]
        plan.decision_s = time.perf_counter() - t0
        ids = [s.id for s in offered]
        if decision is not None and (not decision.valid or decision.model_id not in ids):
            reason = f"unusable router answer: {decision.invalid_reason or decision.model_id!r}"
        if reason is None:
            plan.decision = decision
            ranked = [m for m in decision.ranked() if m in ids]
            ranked += [m for m in ids if m not in ranked]
            plan.order = ranked
            plan.candidates = [{"model_id": m, "score": finite_or_none(decision.scores.get(m))} for m in ranked]
            return plan
        self.counts["router_failures"] += 1
        log.warning("router failed, using the default model: %s", reason)
        plan.router_failed = True
        default = self.default_for(offered, messages, params)
        est = self.estimates(offered, messages, params)
        by_cost = sorted(offered, key=lambda s: est[s.id])
        plan.order = [default] + [s.id for s in by_cost if s.id != default]
        return plan

    # ---- executing the plan
    def tries(self, plan: Plan) -> list[ModelSpec]:
        return [self.pool.get(m) for m in plan.order[: self.settings.max_fallback_tries]]

    def affordable(self, spec: ModelSpec, messages, params, plan: Plan, spent: float) -> float | None:
        est = self.estimates([spec], messages, params)[spec.id]
        if est > plan.budget - spent or est > self.ledger.remaining():
            return None
        return est

    async def complete(self, plan: Plan, messages, params) -> tuple[str | None, Any, list[CallRecord]]:
        """Call the plan's models in order until one answers: ``(text, llm.CallMetadata, calls)``, or
        ``(None, None, calls)`` when every try failed."""
        s = self.settings
        calls: list[CallRecord] = []
        spent = 0.0
        for spec in self.tries(plan):
            est = self.affordable(spec, messages, params, plan, spent)
            if est is None:
                continue
            self.ledger.reserve(est)
            rec = CallRecord(spec.id)
            try:
                text, meta = await call_once(spec, messages, params, pool=self.pool, timeout_s=s.upstream_timeout_s,
                                             max_retries=s.upstream_max_retries, transport=s.upstream_transport)
            except asyncio.CancelledError:
                self.ledger.settle(est, 0.0)
                raise
            except Exception as e:
                rec.failed(e, s.upstream_timeout_s, self.scrub)
                self.ledger.settle(est, 0.0)
                calls.append(rec)
                continue
            rec.latency = meta.latency_s
            rec.cost = meta.cost
            rec.prompt_tokens, rec.completion_tokens = meta.input_tokens, meta.output_tokens
            self.ledger.settle(est, meta.cost)
            spent += meta.cost
            calls.append(rec)
            return text, meta, calls
        return None, None, calls

    async def open_stream(self, plan: Plan, messages, params) -> tuple[UpstreamStream | None, float, list[CallRecord]]:
        """Open a stream on the plan's models in order until one sends its first chunk."""
        s = self.settings
        calls: list[CallRecord] = []
        for spec in self.tries(plan):
            est = self.affordable(spec, messages, params, plan, 0.0)
            if est is None:
                continue
            self.ledger.reserve(est)
            rec = CallRecord(spec.id)
            st = UpstreamStream.for_spec(spec, messages, params, s.upstream_timeout_s, s.upstream_transport)
            try:
                await st.open()
            except asyncio.CancelledError:
                self.ledger.settle(est, 0.0)
                await st.aclose()
                raise
            except Exception as e:
                rec.failed(e, s.upstream_timeout_s, self.scrub)
                self.ledger.settle(est, 0.0)
                await st.aclose()
                calls.append(rec)
                continue
            calls.append(rec)
            return st, est, calls
        return None, 0.0, calls

    # ---- after the calls
    def metadata(self, plan: Plan, calls: list[CallRecord], model_used: str | None, t0: float) -> dict[str, Any]:
        target = sum(c.cost for c in calls)
        if plan.strategy == "bypass":
            strategy = "bypass"
        elif plan.router_failed or (model_used is not None and plan.order and model_used != plan.order[0]):
            strategy = "fallback"
        else:
            strategy = "delegate_to_model"
        return {
            "model_used": model_used,
            "total_cost": 0.0 + target,
            "router_cost": 0.0,
            "target_models_cost": target,
            "routing_strategy": strategy,
            "candidates": plan.candidates,
            "call_history": [c.to_dict() for c in calls],
            "total_time": round(time.perf_counter() - t0, 6),
        }

    def finish(self, plan: Plan, calls: list[CallRecord], model_used: str | None, t0: float,
               messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The request's ``router_metadata``; counts a fallback and writes the decision-log line."""
        md = self.metadata(plan, calls, model_used, t0)
        if model_used is not None and md["routing_strategy"] == "fallback":
            self.counts["fallbacks"] += 1
        if self.decision_log is not None and plan.strategy == "route":
            d = plan.decision
            tau = getattr(d, "tau", None)
            if tau is None:
                tau = plan.tau if plan.tau is not None else getattr(self.router, "tau", None)
            self.decision_log.write(
                request_id=plan.request_id, router=getattr(self.router, "name", None), tau=tau,
                offered=[s.id for s in plan.offered],
                scores=(getattr(d, "base_scores", None) or d.scores) if d is not None else {},
                costs=getattr(d, "costs", None) or {}, chosen=plan.order[0] if plan.order else None,
                model_used=model_used, cost_usd=md["total_cost"], messages=messages)
        return md

    def all_failed(self, plan: Plan, calls: list[CallRecord], t0: float, messages) -> ApiError:
        meta = self.finish(plan, calls, None, t0, messages)
        if not calls:
            return ApiError(402, "no candidate fits the remaining budget", "insufficient_quota",
                            code="request_budget_exceeded", extra={"router_metadata": meta})
        tried = "; ".join(f"{c.model_id}: {c.error}" for c in calls)
        if all(c.status in _CLIENT_ERRORS for c in calls):
            return ApiError(400, f"the upstream model(s) refused the request as invalid: {tried}",
                            param=None, code="upstream_rejected_request", extra={"router_metadata": meta})
        timeouts = all(c.timed_out for c in calls)
        return ApiError(504 if timeouts else 502, f"every upstream call failed ({len(calls)} tried): {tried}",
                        "upstream_error", code="upstream_timeout" if timeouts else "upstream_error",
                        extra={"router_metadata": meta})

    def model_card(self, model_id: str) -> dict[str, Any]:
        """The ``/v1/models`` entry of ``model_id`` (``router``, ``router-<tau>`` or a pool model)."""
        if model_id in self.pool:
            m = self.pool.get(model_id)
            return {"id": m.id, "object": "model", "created": 0, "owned_by": m.provider_name, "tier": m.tier,
                    "input_price": m.input_price, "output_price": m.output_price,
                    "capabilities": list(m.capabilities)}
        if model_id == ROUTER_MODEL or self.tau_of_model_name(model_id) is not None:
            return {"id": model_id, "object": "model", "created": 0, "owned_by": "xrouter-lite",
                    "description": "the router picks a pool model; 'router-<tau>' sets the cost knob"}
        raise ApiError(404, f"the model {model_id!r} does not exist: use 'router', 'router-<tau>' or a pool model "
                       f"({', '.join(self.pool.ids)})", param="model", code="model_not_found")


def create_app(
    *,
    pool: Pool,
    settings: ServeSettings | None = None,
    router: BaseRouter | None = None,
    router_factory: Callable[[ServeSettings, Pool], BaseRouter] | None = None,
):
    """The FastAPI app. Give a ready ``router`` or a ``router_factory(settings, pool)`` (called once at start-up,
    in a thread; the server accepts connections only when it has returned)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or ServeSettings()
    srv = RouterServer(pool, settings, router, router_factory)

    @asynccontextmanager
    async def lifespan(app):
        await srv.startup()
        try:
            yield
        finally:
            await srv.shutdown()

    app = FastAPI(title="xrouter-lite", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    def err_response(e: ApiError, request_id: str | None = None) -> JSONResponse:
        headers = dict(e.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return err_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return err_response(ApiError(e.status_code, msg, code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return err_response(ApiError(400, "invalid request", code="invalid_value"))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.error("internal error on %s: %s", request.url.path, srv.scrub(f"{type(e).__name__}: {e}"))
        return err_response(ApiError(500, "internal server error (see the server log)", "server_error",
                                     code="internal_error"))

    @app.get("/health")
    async def health():
        pool_ok = True
        try:
            src = Path(pool.source)
            if pool.source != "<memory>":
                pool_ok = src.is_file() and os.access(src, os.R_OK)
        except OSError:
            pool_ok = False
        loaded = srv.router is not None and srv.batcher is not None
        body = {
            "status": "ok" if (loaded and pool_ok) else "unavailable",
            "router_loaded": loaded,
            "router": getattr(srv.router, "name", None),
            "pool": {"source": pool.source, "readable": pool_ok, "models": len(pool)},
            "budget": {"server_limit_usd": srv.ledger.limit, "spent_usd": srv.ledger.spent,
                       "reserved_usd": srv.ledger.reserved},
            "inflight": srv.inflight,
            "counts": dict(srv.counts),
            "batches": {"count": srv.batcher.batches if srv.batcher else 0,
                        "decisions": srv.batcher.decisions if srv.batcher else 0,
                        "largest": srv.batcher.max_seen_batch if srv.batcher else 0},
            "decision_log": {"path": str(srv.decision_log.path), "lines": srv.decision_log.lines}
            if srv.decision_log else None,
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        srv.check_auth(request)
        return {"object": "list", "data": [srv.model_card(ROUTER_MODEL)] + [srv.model_card(m) for m in pool.ids]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        srv.check_auth(request)
        return srv.model_card(model_id)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        rid = "chatcmpl-xr" + uuid.uuid4().hex[:22]
        srv.counts["requests"] += 1
        try:
            srv.check_auth(request)
            if srv.inflight >= settings.max_inflight:
                raise ApiError(503, "too many requests in flight; retry shortly", "server_error", code="overloaded",
                               headers={"Retry-After": "1"})
            srv.inflight += 1
        except ApiError as e:
            srv.counts["errors"] += 1
            return err_response(e, rid)
        release = True
        try:
            req = parse_chat_request(await srv.read_json(request))
            messages = req.plain_messages()
            params = req.sampling_params()
            if is_agentic_model(req.model):  # agentic mode (issue 16): xrouter_lite/agentic/serve_hook.py
                return await agentic_chat(srv, req, messages, params, rid, t0)
            plan = await srv.plan(req, messages, params, rid)
            headers_base = {"x-request-id": rid, "x-router-decision-ms": f"{plan.decision_s * 1000:.3f}"}
            if req.stream:
                resp = await _stream_response(srv, plan, messages, params, t0, headers_base, req.include_usage)
                release = False  # the stream's generator releases the slot
                return resp
            text, meta, calls = await srv.complete(plan, messages, params)
            if meta is None:
                raise srv.all_failed(plan, calls, t0, messages)
            md = srv.finish(plan, calls, meta.model_id, t0, messages)
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if meta.tool_calls:
                message = {"role": "assistant", "content": text or None, "tool_calls": meta.tool_calls}
            body = {
                "id": rid, "object": "chat.completion", "created": int(time.time()), "model": meta.model_id,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": meta.finish_reason or ("tool_calls" if meta.tool_calls else "stop")}],
                "usage": usage(meta.input_tokens, meta.output_tokens),
                "router_metadata": md,
            }
            log.info("%s model=%s strategy=%s cost=%.6g calls=%d time=%.3fs", rid, meta.model_id,
                     md["routing_strategy"], md["total_cost"], len(calls), md["total_time"])
            return Response(json.dumps(body).encode(), media_type="application/json", headers={
                **headers_base, "x-router-model": meta.model_id, "x-router-cost": repr(float(md["total_cost"])),
                "x-router-strategy": md["routing_strategy"]})
        except ApiError as e:
            srv.counts["errors"] += 1
            log.info("%s error %d %s", rid, e.status, e.code)
            return err_response(e, rid)
        finally:
            if release:
                srv.inflight -= 1

    return app


async def _stream_response(srv: RouterServer, plan: Plan, messages, params, t0: float,
                           headers_base: dict[str, str], include_usage: bool):
    """Server-sent events in OpenAI's chunk format. ``router_metadata`` rides on the last chunk that has choices
    (the one with ``finish_reason``) and, when the client asked for ``stream_options.include_usage``, on the
    usage chunk (``choices: []``) after it, as OpenAI sends it."""
    from fastapi.responses import StreamingResponse

    st, est, calls = await srv.open_stream(plan, messages, params)
    if st is None:
        raise srv.all_failed(plan, calls, t0, messages)
    rec = calls[-1]
    spec = st.spec
    rid = plan.request_id
    created = int(time.time())
    strategy = srv.metadata(plan, calls, spec.id, t0)["routing_strategy"]

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": spec.id,
               "choices": choices, **extra}
        return f"data: {json.dumps(obj)}\n\n"

    async def gen():
        settled = False
        texts: list[str] = []
        tool_chars = 0
        p_tok = c_tok = None
        finish = None
        try:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            try:
                async for p in st.pieces():
                    if p.prompt_tokens is not None or p.completion_tokens is not None:
                        p_tok, c_tok = p.prompt_tokens, p.completion_tokens
                    delta: dict[str, Any] = {}
                    if p.content:
                        texts.append(p.content)
                        delta["content"] = p.content
                    if p.tool_calls:
                        delta["tool_calls"] = p.tool_calls
                        tool_chars += len(json.dumps(p.tool_calls))
                    if delta:
                        yield chunk([{"index": 0, "delta": delta, "finish_reason": None}])
                    if p.finish_reason:
                        finish = p.finish_reason
            except asyncio.CancelledError:
                raise
            except Exception as e:
                rec.failed(e, srv.settings.upstream_timeout_s, srv.scrub)
            text = "".join(texts)
            rec.prompt_tokens = int(p_tok) if p_tok is not None else estimate_prompt_tokens(messages)
            rec.completion_tokens = int(c_tok) if c_tok is not None else max(1, (len(text) + tool_chars) // 4)
            rec.cost = spec.cost(rec.prompt_tokens, rec.completion_tokens)
            rec.latency = time.perf_counter() - rec.t0
            srv.ledger.settle(est, rec.cost)
            settled = True
            if rec.error is not None:
                md = srv.finish(plan, calls, None, t0, messages)
                srv.counts["errors"] += 1
                yield "data: " + json.dumps({"error": {"message": f"upstream {spec.id} failed mid-stream: {rec.error}",
                                                       "type": "upstream_error", "param": None,
                                                       "code": "upstream_error"}, "router_metadata": md}) + "\n\n"
                return
            md = srv.finish(plan, calls, spec.id, t0, messages)
            yield chunk([{"index": 0, "delta": {}, "finish_reason": finish or "stop"}], router_metadata=md)
            if include_usage:
                yield chunk([], usage=usage(rec.prompt_tokens, rec.completion_tokens), router_metadata=md)
            yield "data: [DONE]\n\n"
            log.info("%s stream model=%s strategy=%s cost=%.6g time=%.3fs", rid, spec.id, md["routing_strategy"],
                     md["total_cost"], md["total_time"])
        finally:
            if not settled:  # the client went away mid-stream: account what the upstream was sent and streamed
                srv.ledger.settle(est, spec.cost(estimate_prompt_tokens(messages), (len("".join(texts)) + tool_chars) // 4))
            await st.aclose()
            srv.inflight -= 1

    # no x-router-cost header: a stream's cost is known only at its end (router_metadata of the last chunks)
    headers = {**headers_base, "x-router-model": spec.id, "x-router-strategy": strategy, "cache-control": "no-cache"}
    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


# ---- the router, and running the server ---------------------------------------------------------------------


def load_router(settings: ServeSettings, pool: Pool) -> BaseRouter:
    """The router of ``settings`` (``settings.router``, else the LoRA adapter), built by the one factory
    (``routing.load_router``) with its saved cost vector, as evaluation builds it. The one place the server builds a
    router."""
    from ..routing import load_router as build

    name = settings.router or "lora"
    if name == "lora" and settings.adapter is None:
        raise ValueError("no router: give --router NAME (knn, cluster, logistic, cheapest, strongest) or --adapter DIR")
    return build(
        name, pool=pool, adapter=settings.adapter, train_cache=settings.train_cache, base_model=settings.base_model,
        mode=settings.router_mode, default_model=settings.default_model, device=settings.device,
        quantize=settings.quantize, batch_size=settings.max_router_batch, tau=settings.tau or 0.0,
        log=log.info,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound now (before the router loads), so that a port in use fails at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(f"cannot listen on {host}:{port}: unknown address ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "the port is already in use (choose another with --port)" if e.errno == errno.EADDRINUSE else (
            e.strerror or str(e))
        raise OSError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def run_server(settings: ServeSettings, router: BaseRouter | None = None) -> None:
    """Load the pool, take the port, load the router (so a busy port or a bad adapter fails here, before any
    model loads or after a clear message), then run uvicorn until Ctrl-C."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = load_pool(settings.pool)
    sock = bind_socket(settings.host, settings.port)
    try:
        if router is None:
            t0 = time.perf_counter()
            log.info("loading the router %s ...", settings.router or settings.adapter)
            router = load_router(settings, pool)
            log.info("router %s loaded in %.1f s", getattr(router, "name", "?"), time.perf_counter() - t0)
        app = create_app(pool=pool, settings=settings, router=router)
        log.info("serving %d pool models on http://%s:%d/v1 (auth %s)", len(pool), settings.host, settings.port,
                 "on" if settings.api_key else "off")
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                access_log=False, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
