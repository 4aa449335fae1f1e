"""An OpenAI-compatible routing server: ``POST /v1/chat/completions`` with ``model="router"``.

Run it::

    xrouter-lite serve --adapter runs/router --pool configs/pool.yaml --port 8800

and point any OpenAI client at it::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8800/v1", api_key="<--api-key, or anything when none is set>")
    r = client.chat.completions.create(model="router", messages=[{"role": "user", "content": "2+2?"}])
    r.model                         # the pool model that answered
    r.router_metadata               # model_used, total_cost, candidates, call_history, ...

In code (tests, embedding): ``create_app(router=..., pool=..., settings=ServeSettings(...))`` returns a FastAPI app.

The ``model`` field
    ``"router"``: the trained router chooses among the offered models with the server's cost knob ``tau``;
    ``"router-<tau>"`` (e.g. ``router-0.5``): the same with that knob; a pool model id: no routing (``bypass``).
    Request-level extras (``extra_body=`` in the openai client): ``models`` (a subset of the pool to offer the
    router; unknown ids give 400 listing the known ones) and ``max_cost_usd`` (this request's budget).

What the router sees
    ``prompting.conversation_to_query``: the last user turn whole, up to 4 earlier user/assistant turns cut to 300
    characters each, no system or tool messages. The chosen model receives the full conversation.

The answer
    The standard chat-completion object (``id``, ``choices``, ``usage``; ``model`` = the model that answered) plus
    ``router_metadata``: ``model_used``, ``total_cost`` (= ``router_cost`` + ``target_models_cost``, USD),
    ``router_cost`` (always 0.0: the router runs locally, its electricity is not priced), ``target_models_cost``
    (sum of the costs in ``call_history``, from the pool's prices and the provider's usage), ``routing_strategy``
    (``delegate_to_model``: the router's first choice answered; ``bypass``: a pool model was named; ``fallback``:
    the router failed, was too slow or unusable so the default model was used, or the first choice failed and a
    later candidate answered), ``candidates`` (the offered models by descending router score:
    ``[{"model_id", "score"}]``; empty for bypass and when the router failed), ``call_history`` (every upstream
    call: ``{model_id, cost, tokens: {prompt_tokens, completion_tokens}, latency, error}``) and ``total_time``
    (seconds in the server). Headers: ``x-router-model``, ``x-router-cost`` (total_cost; for a stream, whose cost
    is known only at its end, a pointer to the last chunk), ``x-router-strategy``, ``x-router-decision-ms``
    (queueing + batching + the router's forward pass) and ``x-request-id``.
    ``stream: true`` gives server-sent events in the OpenAI chunk format, true streaming from the upstream; the
    last chunk (``choices: []``) carries ``usage`` and ``router_metadata``. Fallback happens only before the first
    token; an upstream failure after it ends the stream with an ``{"error": ...}`` event.

Faults
    A provider error or time-out falls back to the next candidate by router score, at most ``max_fallback_tries``
    calls in all, each recorded in ``call_history``. Every upstream call has a time-out (``upstream_timeout_s``;
    for streams: to the first chunk and between chunks). When every try fails: 502 (504 if all timed out), the
    error body still holding ``router_metadata``. A router that raises, times out (``router_timeout_s``) or gives
    an unusable answer means the default model (``default_model``, else the cheapest offered), not a 500.

Budgets (USD)
    Before a call the server estimates its cost: pool prices x (prompt characters / 4 + 16 per message) input
    tokens and ``max_tokens`` (when the request sets it; else ``expected_output_tokens``) output tokens. Models
    whose estimate exceeds the request's budget (``max_cost_usd`` or ``request_budget_usd``) or what is left of
    the server's budget (``server_budget_usd``, a running total of actual costs plus the estimates of calls in
    flight) are not offered. If none is left: HTTP 402 (``type: insufficient_quota``, code
    ``request_budget_exceeded`` or ``server_budget_exhausted``). 402, not 429, so that clients do not retry a
    request that cannot succeed. After each call the actual cost is accounted. The estimate is not a guarantee
    when the request sets no ``max_tokens``: a long answer can cost more than estimated (it is then accounted).

Errors and security
    Every error is OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``: malformed JSON or
    missing messages 400, unknown model 404, body over ``max_body_bytes`` 413 (from Content-Length and while
    reading), bad or missing bearer token 401, router queue full or too many requests in flight 503 with
    ``Retry-After``; never a stack trace. Bearer-token auth is on when ``api_key`` (``--api-key`` or env
    ``XROUTER_API_KEY``) is set (``/health`` stays open). Provider keys are never echoed or logged: every upstream
    error message is scrubbed (the keys of the pool's ``api_key_env`` variables and anything key-like). The CLI
    binds to 127.0.0.1 unless ``--host`` says otherwise.

Upstream calls
    ``llm.acall_model`` with ``max_retries=upstream_max_retries`` (default 0: a failing model is left for the next
    candidate rather than retried) and ``transport=upstream_transport``: ``auto`` (default) sends OpenAI-compatible
    endpoints of your own (``openai/<name>`` + ``api_base``: vLLM, Ollama, llama.cpp) a direct aiohttp POST and
    every other provider goes through litellm, whose ~4 ms of CPU per call would otherwise cap the server at a
    few hundred requests/s (docs/BENCHMARKS.md); ``litellm`` forces litellm. Streams: ``DirectStream`` (direct) or
    ``LiteLLMStream`` (``litellm.acompletion(stream=True)``), both true streaming of the upstream.

Concurrency
    Decisions go through ``DecisionBatcher``: a bounded asyncio queue and one worker that gathers the requests
    arriving within ``batch_window_ms`` (at most ``max_router_batch``) and calls ``router.route_batch`` once per
    cost knob, in a single worker thread, so the event loop never waits for the model and concurrent requests
    share one forward pass (a trivial router with ``inline_ok = True`` runs on the event loop instead). Upstream
    calls are plain async I/O: a slow upstream holds only its own request. Before serving, the router makes one
    warm-up decision, so no request pays for the first forward pass.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from starlette.requests import Request  # module level: FastAPI resolves the handlers' annotations here

from .pool import ModelSpec, Pool, load_pool
from .prompting import conversation_to_query
from .router import BaseRouter, Decision
from .agentic.serve_hook import agentic_chat, is_agentic_model  # agentic mode (issue 16)

log = logging.getLogger("xrouter_lite.serve")

ROUTER_MODEL = "router"
_TAU_RE = re.compile(r"^router-(.+)$")

# sampling knobs passed on to the chosen model; the rest of the request's fields are ignored
_PASS_KNOBS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "response_format", "reasoning_effort", "top_k", "user",
)
# accepted by the OpenAI API but not supported here (the answer is text only): rejected with a clear 400
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call")


# ---- settings --------------------------------------------------------------------------------------------------


class ServeSettings(BaseModel):
    """Everything the server is configured with (``configs/serve.yaml`` shows each with its default)."""

    model_config = ConfigDict(extra="forbid")

    adapter: Path | None = Field(None, description="LoRA adapter folder of the trained router")
    base_model: str | None = Field(None, description="Base model of the adapter (default: the adapter's own record)")
    router_mode: Literal["score", "generate"] = Field(
        "score", description="score: every offered action's log-prob (supports tau); generate: decode the call")
    device: str | None = Field(None, description="Router device (default: cuda when available, else cpu)")
    quantize: Literal["auto", "4bit", "none"] = Field("auto", description="auto: as the adapter was trained (its run card); without one 4-bit NF4 on CUDA, none on CPU")
    pool: Path = Field(Path("configs/pool.yaml"), description="Pool YAML: the models that can answer")
    offered: list[str] | None = Field(None, description="Models offered to the router by default (default: all)")
    default_model: str | None = Field(None, description="Used when the router fails (default: cheapest offered)")
    tau: float | None = Field(None, description="Cost knob of model 'router' (default: the router's own)")
    max_fallback_tries: int = Field(3, ge=1, description="Upstream calls per request at most, fallbacks included")
    request_budget_usd: float | None = Field(None, ge=0, description="Default per-request budget (None: none)")
    server_budget_usd: float | None = Field(None, ge=0, description="Budget of the whole server run (None: none)")
    expected_output_tokens: int = Field(512, ge=1, description="Output tokens assumed when max_tokens is unset")
    upstream_timeout_s: float = Field(60.0, gt=0, description="Time-out of every upstream call (streams: per chunk)")
    upstream_max_retries: int = Field(0, ge=0, description="Retries of one model before falling back to the next")
    upstream_transport: Literal["auto", "litellm"] = Field(
        "auto", description="auto: OpenAI-compatible api_base endpoints direct (aiohttp), the rest via litellm")
    router_timeout_s: float = Field(10.0, gt=0, description="A decision slower than this means the default model")
    api_key: SecretStr | None = Field(None, description="Bearer token clients must send (None: no auth)")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413")
    max_router_batch: int = Field(16, ge=1, description="Decisions per router forward pass at most")
    batch_window_ms: float = Field(2.0, ge=0, description="How long the batcher waits for more requests")
    max_router_queue: int = Field(256, ge=1, description="Decisions waiting at most; beyond: 503")
    max_inflight: int = Field(512, ge=1, description="Requests handled at once at most; beyond: 503")
    host: str = Field("127.0.0.1", description="Bind address (CLI)")
    port: int = Field(8800, ge=1, le=65535, description="Port (CLI)")
    log_level: str = Field("info", description="Server log level")

    @field_validator("tau")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("tau must be a finite number")
        return v

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> ServeSettings:
        """Settings from a YAML file; ``overrides`` that are not None replace its values."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise ValueError(f"serve config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of setting -> value")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except ValidationError as e:
            raise ValueError(f"{path}: " + _validation_text(e)) from None


def _validation_text(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )


# ---- errors ------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
                **self.extra}


_KEYLIKE_RE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{6,}|(?:api[_-]?key|token|secret)[\"']?\s*[:=]\s*[\"']?"
    r"[A-Za-z0-9._\-]{6,})",
    re.I,
)
_SECRET_ENV_RE = re.compile(r"(_API_KEY|_KEY|_TOKEN|_SECRET)$")


class Scrubber:
    """Removes provider keys from any text that may reach a client or a log: the values of the pool's
    ``api_key_env`` variables, of every environment variable named like a key, and anything key-shaped."""

    def __init__(self, pool: Pool, extra: Sequence[str] = ()):
        names = {m.api_key_env for m in pool if m.api_key_env}
        names |= {k for k in os.environ if _SECRET_ENV_RE.search(k)}
        vals = [os.environ.get(n) or "" for n in names] + [s for s in extra if s]
        self.secrets = sorted({v for v in vals if len(v) >= 8}, key=len, reverse=True)  # short ones: too many false hits

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return _KEYLIKE_RE.sub("***", text)


# ---- the request ------------------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise ValueError(f"unknown role {v!r} (system, developer, user, assistant, tool)")
        return v


class ChatRequest(BaseModel):
    """The fields of a chat-completions request that the server reads; others are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    n: int | None = None
    models: list[str] | None = Field(None, description="router only: offer these pool models")
    max_cost_usd: float | None = Field(None, ge=0, description="this request's budget in USD")

    def sampling_params(self) -> dict[str, Any]:
        extra = self.model_extra or {}
        return {k: extra[k] for k in _PASS_KNOBS if extra.get(k) is not None}

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


# ---- micro-batching of router decisions ---------------------------------------------------------------------------


class QueueFullError(RuntimeError):
    pass


@dataclass
class _Pending:
    query: str
    offered: list[ModelSpec]
    tau: float | None
    future: asyncio.Future
    t0: float


class DecisionBatcher:
    """Gathers concurrent routing requests and decides them with one ``route_batch`` call per cost knob.

    ``decide`` puts the request on a bounded queue (``QueueFullError`` when full) and awaits the decision. One
    worker task takes the first waiting request, then everything that arrives within ``window_s`` (at most
    ``max_batch``), and runs ``router.route_batch`` in a dedicated single thread (one model, one forward pass at a
    time), so the event loop stays free while the model works. A router exception fails that batch's requests
    (their callers fall back to the default model).

    A router whose decisions cost microseconds (a rule, a constant) may set the attribute ``inline_ok = True``:
    it is then called on the event loop with no batch window, which saves the thread hand-off (~0.1-1 ms and
    GIL contention) and the wait."""

    def __init__(self, router: BaseRouter, max_batch: int = 16, window_s: float = 0.002, max_queue: int = 256):
        self.router = router
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrouter-router")
        self.inline = bool(getattr(router, "inline_ok", False))
        if self.inline:
            self.window_s = 0.0  # nothing to gain from batching a rule
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.decisions = 0
        self.max_seen_batch = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="xrouter-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(RuntimeError("server shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self, offered: list[ModelSpec]) -> None:
        """One throw-away decision before serving (the first forward pass of a model is the slowest: lazy CUDA and
        kernel set-up), so that no request pays for it. A failure is logged, not fatal."""
        if self.inline:
            return
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.router.route_batch, ["warm-up: what is 2+2?"], [list(offered)], None)
            log.info("router warm-up decision took %.2f s", time.perf_counter() - t0)
        except Exception as e:
            log.warning("router warm-up failed (%s); requests will fall back if it keeps failing", type(e).__name__)

    async def decide(self, query: str, offered: list[ModelSpec], tau: float | None) -> Decision:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        try:
            self._queue.put_nowait(_Pending(query, offered, tau, fut, time.perf_counter()))
        except asyncio.QueueFull:
            raise QueueFullError("the router queue is full") from None
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [p for p in batch if not p.future.done()]  # callers that timed out are skipped
            groups: dict[float | None, list[_Pending]] = {}
            for p in live:
                groups.setdefault(p.tau, []).append(p)
            for tau, items in groups.items():
                try:
                    args = ([p.query for p in items], [p.offered for p in items], tau)
                    if self.inline:
                        decisions = self.router.route_batch(*args)
                    else:
                        decisions = await loop.run_in_executor(self._executor, self.router.route_batch, *args)
                    if len(decisions) != len(items):
                        raise RuntimeError(f"route_batch returned {len(decisions)} decisions for {len(items)} queries")
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the callers fall back to the default model
                    for p in items:
                        if not p.future.done():
                            p.future.set_exception(e)
                    continue
                self.batches += 1
                self.decisions += len(items)
                self.max_seen_batch = max(self.max_seen_batch, len(items))
                for p, d in zip(items, decisions):
                    if not p.future.done():
                        p.future.set_result(d)


# ---- budgets ---------------------------------------------------------------------------------------------------


class BudgetLedger:
    """The server's running spend: actual costs plus the estimates of calls in flight (reserved)."""

    def __init__(self, limit_usd: float | None):
        self.limit = limit_usd
        self.spent = 0.0
        self.reserved = 0.0

    def remaining(self) -> float:
        if self.limit is None:
            return math.inf
        return self.limit - self.spent - self.reserved

    def reserve(self, amount: float) -> None:
        self.reserved += amount

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


def estimate_cost(spec: ModelSpec, messages: Sequence[dict[str, Any]], params: dict[str, Any],
                  expected_output_tokens: int) -> float:
    """The pre-call cost estimate used for budgets (see the module docstring)."""
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else len(json.dumps(c)) if c is not None else 0
    in_tok = chars // 4 + 16 * len(messages)
    user_max = params.get("max_completion_tokens") or params.get("max_tokens")
    out_tok = min(spec.max_output_tokens, int(user_max) if user_max else expected_output_tokens)
    return spec.cost(in_tok, out_tok)


# ---- upstream calls ---------------------------------------------------------------------------------------------


@dataclass
class CallRecord:
    model_id: str
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    error: str | None = None
    timed_out: bool = False
    t0: float = field(default_factory=time.perf_counter)

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "cost": self.cost,
                "tokens": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
                "latency": round(self.latency, 6), "error": self.error}


@dataclass
class StreamPiece:
    content: str | None = None
    role: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class UpstreamStream:
    """One streamed answer, with a time-out on the first chunk and between chunks. ``open()`` waits for the first
    chunk, so a failure before any token can still fall back to another model."""

    def __init__(self, spec: ModelSpec, messages: list[dict[str, Any]], params: dict[str, Any], timeout_s: float):
        self.spec = spec
        self.messages = messages
        self.params = params
        self.timeout_s = timeout_s
        self._first: list[StreamPiece] = []

    async def open(self) -> None:
        raise NotImplementedError

    async def _next(self) -> list[StreamPiece] | None:
        """The pieces of the next chunk; None at the end."""
        raise NotImplementedError

    async def pieces(self) -> AsyncIterator[StreamPiece]:
        for p in self._first:
            yield p
        while True:
            got = await asyncio.wait_for(self._next(), self.timeout_s)
            if got is None:
                return
            for p in got:
                yield p

    async def aclose(self) -> None:
        pass


class LiteLLMStream(UpstreamStream):
    """A stream through ``litellm.acompletion(stream=True)`` (any provider litellm knows)."""

    _resp = None
    _it = None

    async def open(self) -> None:
        from . import llm

        litellm = llm.configure_litellm()
        llm._register_prices(litellm, self.spec)
        kwargs: dict[str, Any] = dict(llm.build_request_params(self.spec, self.params))
        key = llm._api_key(self.spec)
        if self.spec.api_base:
            kwargs["api_base"] = self.spec.api_base
        if key is not None:
            kwargs["api_key"] = key
        coro = litellm.acompletion(
            model=self.spec.litellm_model, messages=self.messages, stream=True,
            stream_options={"include_usage": True}, timeout=self.timeout_s, max_retries=0, **kwargs,
        )
        self._resp = await asyncio.wait_for(coro, self.timeout_s)
        self._it = self._resp.__aiter__()
        self._first = await asyncio.wait_for(self._next(), self.timeout_s) or []

    async def _next(self) -> list[StreamPiece] | None:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            return None
        out = []
        for ch in getattr(chunk, "choices", None) or []:
            delta = getattr(ch, "delta", None)
            out.append(StreamPiece(content=getattr(delta, "content", None) if delta is not None else None,
                                   finish_reason=getattr(ch, "finish_reason", None)))
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            out.append(StreamPiece(prompt_tokens=getattr(usage, "prompt_tokens", None),
                                   completion_tokens=getattr(usage, "completion_tokens", None)))
        return out

    async def aclose(self) -> None:
        close = getattr(self._resp, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:
                pass


# ---- the direct path for OpenAI-compatible endpoints ------------------------------------------------------------


def _direct_request(spec: ModelSpec, messages, params: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """URL, body and headers of a direct chat-completions POST (``llm``'s request rules and key handling)."""
    from . import llm

    body = {"model": spec.litellm_model.split("/", 1)[1], "messages": messages,
            **llm.build_request_params(spec, params)}
    key = llm._api_key(spec)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return spec.api_base.rstrip("/") + "/chat/completions", body, headers


def _http_error(status: int, raw: bytes) -> Exception:
    from .llm import HTTPStatusError

    try:
        err = json.loads(raw).get("error")
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except Exception:
        msg = raw[:300].decode("utf-8", "replace")
    return HTTPStatusError(status, f"HTTP {status}: {msg}")


class DirectStream(UpstreamStream):
    """Server-sent events from an OpenAI-compatible endpoint (``llm.is_openai_compatible``), read line by line
    through ``llm``'s shared aiohttp session: the streaming twin of ``llm``'s direct transport."""

    _resp = None

    async def open(self) -> None:
        import aiohttp

        from . import llm

        url, body, headers = _direct_request(self.spec, self.messages, self.params)
        body.update(stream=True, stream_options={"include_usage": True})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        self._resp = await asyncio.wait_for(
            llm._http_session().post(url, json=body, headers=headers, timeout=timeout), self.timeout_s)
        if self._resp.status != 200:
            raw = await asyncio.wait_for(self._resp.read(), self.timeout_s)
            raise _http_error(self._resp.status, raw)
        self._first = await asyncio.wait_for(self._next(), self.timeout_s) or []

    async def _next(self) -> list[StreamPiece] | None:
        while True:
            line = await self._resp.content.readline()
            if not line:
                return None
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return None
            try:
                obj = json.loads(payload)
            except json.JSONDecodeError:
                raise RuntimeError(f"model {self.spec.id!r}: malformed stream chunk") from None
            if "error" in obj:
                raise _http_error(502, payload)
            out = [StreamPiece(content=(c.get("delta") or {}).get("content"), finish_reason=c.get("finish_reason"))
                   for c in obj.get("choices") or []]
            u = obj.get("usage")
            if u:
                out.append(StreamPiece(prompt_tokens=u.get("prompt_tokens"), completion_tokens=u.get("completion_tokens")))
            if out:
                return out

    async def aclose(self) -> None:
        if self._resp is not None:
            self._resp.release()


def _describe_error(e: BaseException, timeout_s: float, scrub: Scrubber) -> tuple[str, bool]:
    """A client-safe one-line description and whether it was a time-out."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return f"time-out: no answer within {timeout_s:g} s", True
    msg = f"{type(e).__name__}: {e}"
    timed_out = type(e).__name__ in ("Timeout", "APITimeoutError") or " 408" in msg or "no answer within" in msg
    return scrub(msg)[:1000], timed_out


# ---- the app ----------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """What a chat request resolved to."""

    strategy: str  # "route" | "bypass"
    offered: list[ModelSpec]
    tau: float | None
    budget: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    router_failed: bool = False
    decision_s: float = 0.0


class RouterServer:
    """The state behind the app: router, batcher, pool, settings, budget ledger, counters."""

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

    # lifecycle
    async def startup(self) -> None:
        if any(not self.use_direct(m) and not m.hf_model for m in self.pool):
            # importing litellm takes seconds: at start-up, not on the first request
            await asyncio.to_thread(_warm_litellm, self.pool)
        if self.router is None:
            t0 = time.perf_counter()
            self.router = await asyncio.to_thread(self.router_factory, self.settings, self.pool)
            log.info("router %s loaded in %.1f s", getattr(self.router, "name", "?"), time.perf_counter() - t0)
        s = self.settings
        self.batcher = DecisionBatcher(self.router, s.max_router_batch, s.batch_window_ms / 1000.0, s.max_router_queue)
        await self.batcher.warm_up(self.default_offered)
        self.batcher.start()

    async def shutdown(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        from . import llm

        await llm.aclose()  # this event loop's session of the direct transport

    def use_direct(self, spec: ModelSpec) -> bool:
        from . import llm

        return llm.uses_direct_transport(spec, self.settings.upstream_transport)

    # helpers
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
        if not body:
            raise ApiError(400, "empty request body: expected a JSON object", code="invalid_json")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            msg = f"malformed JSON in the request body: {e.msg} at position {e.pos}" if isinstance(
                e, json.JSONDecodeError) else "the request body is not UTF-8 text"
            raise ApiError(400, msg, code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}",
                           code="invalid_json")
        return data

    def parse_request(self, data: dict[str, Any]) -> ChatRequest:
        if "messages" not in data:
            raise ApiError(400, "missing required parameter: 'messages'", param="messages", code="missing_required_parameter")
        if "model" not in data:
            raise ApiError(400, "missing required parameter: 'model'", param="model", code="missing_required_parameter")
        try:
            req = ChatRequest.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise ApiError(400, f"invalid request: {_validation_text(e)}", param=param, code="invalid_value") from None
        if req.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")
        for k in _UNSUPPORTED:
            if (req.model_extra or {}).get(k):
                raise ApiError(400, f"'{k}' is not supported by this server (answers are plain text)", param=k,
                               code="unsupported_parameter")
        return req

    def resolve_model(self, req: ChatRequest) -> tuple[str, float | None, ModelSpec | None]:
        """``("route", tau, None)`` or ``("bypass", None, spec)``."""
        name = req.model
        if name == ROUTER_MODEL:
            return "route", self.settings.tau, None
        m = _TAU_RE.match(name)
        if m and name not in self.pool:
            try:
                tau = float(m.group(1))
            except ValueError:
                tau = math.nan
            if not math.isfinite(tau):
                raise ApiError(400, f"model {name!r}: the cost knob after 'router-' must be a finite number, "
                               f"e.g. 'router-0.5'", param="model", code="invalid_model")
            if getattr(self.router, "mode", "score") == "generate":
                raise ApiError(400, f"model {name!r}: this server's router decodes its answer (mode 'generate'), "
                               "which has no cost knob; use model 'router' (or serve with router_mode 'score')",
                               param="model", code="invalid_model")
            return "route", tau, None
        if name in self.pool:
            return "bypass", None, self.pool.get(name)
        raise ApiError(404, f"the model {name!r} does not exist: use 'router', 'router-<tau>' or a pool model "
                       f"({', '.join(self.pool.ids)})", param="model", code="model_not_found")

    def offered_for(self, req: ChatRequest) -> list[ModelSpec]:
        if req.models is None:
            return list(self.default_offered)
        if not req.models:
            raise ApiError(400, "'models' must name at least one pool model", param="models", code="invalid_value")
        unknown = [m for m in req.models if m not in self.pool]
        if unknown:
            raise ApiError(400, f"'models' names models not in the pool: {unknown} (known: {', '.join(self.pool.ids)})",
                           param="models", code="invalid_value")
        seen: dict[str, ModelSpec] = {}
        for m in req.models:
            seen.setdefault(m, self.pool.get(m))
        return list(seen.values())

    def budget_filter(self, specs: list[ModelSpec], messages, params, budget: float) -> list[ModelSpec]:
        ok = []
        server_left = self.ledger.remaining()
        cheapest = math.inf
        for s in specs:
            est = estimate_cost(s, messages, params, self.settings.expected_output_tokens)
            cheapest = min(cheapest, est)
            if est <= budget and est <= server_left:
                ok.append(s)
        if not ok:
            if cheapest > server_left:
                raise ApiError(402, f"the server's budget is exhausted: ${max(server_left, 0):.6f} left of "
                               f"${self.ledger.limit:.6f}, the cheapest offered model needs about ${cheapest:.6f}",
                               "insufficient_quota", code="server_budget_exhausted")
            raise ApiError(402, f"no offered model fits the request budget of ${budget:.6f} (the cheapest needs about "
                           f"${cheapest:.6f}; raise max_cost_usd or set max_tokens)", "insufficient_quota",
                           param="max_cost_usd", code="request_budget_exceeded")
        return ok

    def default_for(self, offered: list[ModelSpec], messages, params) -> str:
        ids = [s.id for s in offered]
        if self.settings.default_model in ids:
            return self.settings.default_model
        return min(offered, key=lambda s: (estimate_cost(s, messages, params, self.settings.expected_output_tokens),
                                           ids.index(s.id))).id

    async def plan(self, req: ChatRequest, messages, params) -> _Plan:
        kind, tau, spec = self.resolve_model(req)
        budget = req.max_cost_usd if req.max_cost_usd is not None else (
            self.settings.request_budget_usd if self.settings.request_budget_usd is not None else math.inf)
        if kind == "bypass":
            self.budget_filter([spec], messages, params, budget)
            return _Plan("bypass", [spec], None, budget, order=[spec.id])
        try:
            query = conversation_to_query(messages)
        except ValueError as e:
            raise ApiError(400, f"{e}: the router needs a user turn", param="messages", code="invalid_value") from None
        offered = self.budget_filter(self.offered_for(req), messages, params, budget)
        plan = _Plan("route", offered, tau, budget)
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
            ranked = [m for m in decision.ranked() if m in ids]
            ranked += [m for m in ids if m not in ranked]
            plan.order = ranked
            plan.candidates = [{"model_id": m, "score": _num(decision.scores.get(m))} for m in ranked]
            return plan
        self.counts["router_failures"] += 1
        log.warning("router failed, using the default model: %s", reason)
        plan.router_failed = True
        default = self.default_for(offered, messages, params)
        by_cost = sorted(offered, key=lambda s: estimate_cost(s, messages, params, self.settings.expected_output_tokens))
        plan.order = [default] + [s.id for s in by_cost if s.id != default]
        return plan

    def metadata(self, plan: _Plan, calls: list[CallRecord], model_used: str | None, t0: float) -> dict[str, Any]:
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

    def tries(self, plan: _Plan) -> list[ModelSpec]:
        return [self.pool.get(m) for m in plan.order[: self.settings.max_fallback_tries]]

    def affordable(self, spec: ModelSpec, messages, params, plan: _Plan, spent: float) -> float | None:
        est = estimate_cost(spec, messages, params, self.settings.expected_output_tokens)
        if est > plan.budget - spent or est > self.ledger.remaining():
            return None
        return est

    async def complete(self, plan: _Plan, messages, params) -> tuple[str, Any, list[CallRecord]]:
        from .llm import acall_model

        s = self.settings
        calls: list[CallRecord] = []
        spent = 0.0
        for spec in self.tries(plan):
            est = self.affordable(spec, messages, params, plan, spent)
            if est is None:
                continue
            self.ledger.reserve(est)
            rec = CallRecord(spec.id)
            t = time.perf_counter()
            try:
                call = acall_model(spec, messages, params, pool=self.pool, timeout_s=s.upstream_timeout_s,
                                   max_retries=s.upstream_max_retries, transport=s.upstream_transport)
                # a hard guard over the per-attempt time-outs (retry back-off included)
                text, meta = await asyncio.wait_for(call, (s.upstream_timeout_s + 30.0) * (s.upstream_max_retries + 1))
            except asyncio.CancelledError:
                self.ledger.settle(est, 0.0)
                raise
            except Exception as e:
                rec.latency = time.perf_counter() - t
                rec.error, rec.timed_out = _describe_error(e, s.upstream_timeout_s, self.scrub)
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

    def all_failed(self, plan: _Plan, calls: list[CallRecord], t0: float) -> ApiError:
        meta = self.metadata(plan, calls, None, t0)
        if not calls:
            return ApiError(402, "no candidate fits the remaining budget", "insufficient_quota",
                            code="request_budget_exceeded", extra={"router_metadata": meta})
        timeouts = all(c.timed_out for c in calls)
        tried = "; ".join(f"{c.model_id}: {c.error}" for c in calls)
        return ApiError(504 if timeouts else 502, f"every upstream call failed ({len(calls)} tried): {tried}",
                        "upstream_error", code="upstream_timeout" if timeouts else "upstream_error",
                        extra={"router_metadata": meta})

    async def open_stream(self, plan: _Plan, messages, params) -> tuple[UpstreamStream | None, float, list[CallRecord]]:
        s = self.settings
        calls: list[CallRecord] = []
        for spec in self.tries(plan):
            est = self.affordable(spec, messages, params, plan, 0.0)
            if est is None:
                continue
            self.ledger.reserve(est)
            rec = CallRecord(spec.id)
            if self.use_direct(spec):
                st = DirectStream(spec, messages, params, s.upstream_timeout_s)
            else:
                st = LiteLLMStream(spec, messages, params, s.upstream_timeout_s)
            try:
                await st.open()
            except asyncio.CancelledError:
                self.ledger.settle(est, 0.0)
                await st.aclose()
                raise
            except Exception as e:
                rec.latency = time.perf_counter() - rec.t0
                rec.error, rec.timed_out = _describe_error(e, s.upstream_timeout_s, self.scrub)
                self.ledger.settle(est, 0.0)
                await st.aclose()
                calls.append(rec)
                continue
            calls.append(rec)
            return st, est, calls
        return None, 0.0, calls


def _warm_litellm(pool: Pool) -> None:
    from . import llm

    litellm = llm.configure_litellm()
    for spec in pool:
        if not spec.hf_model:
            llm._register_prices(litellm, spec)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
    from fastapi.responses import JSONResponse, Response, StreamingResponse
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
        }
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/v1/models")
    async def models(request: Request):
        srv.check_auth(request)
        data = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "xrouter-lite",
                 "description": "the trained router picks a pool model; 'router-<tau>' sets the cost knob"}]
        data += [{"id": m.id, "object": "model", "created": 0, "owned_by": m.provider_name, "tier": m.tier,
                  "input_price": m.input_price, "output_price": m.output_price} for m in pool]
        return {"object": "list", "data": data}

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
            data = await srv.read_json(request)
            req = srv.parse_request(data)
            messages = req.plain_messages()
            params = req.sampling_params()
            if is_agentic_model(req.model):  # agentic mode (issue 16): xrouter_lite/agentic/serve_hook.py
                return await agentic_chat(srv, req, messages, params, rid, t0)
            plan = await srv.plan(req, messages, params)
            headers_base = {"x-request-id": rid, "x-router-decision-ms": f"{plan.decision_s * 1000:.3f}"}
            if req.stream:
                resp = await _stream_response(srv, plan, messages, params, rid, t0, headers_base, StreamingResponse)
                release = False  # the stream's generator releases the slot
                return resp
            text, meta, calls = await srv.complete(plan, messages, params)
            if meta is None:
                raise srv.all_failed(plan, calls, t0)
            md = srv.metadata(plan, calls, meta.model_id, t0)
            if md["routing_strategy"] == "fallback":
                srv.counts["fallbacks"] += 1
            body = {
                "id": rid, "object": "chat.completion", "created": int(time.time()), "model": meta.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": meta.finish_reason or "stop"}],
                "usage": _usage(meta.input_tokens, meta.output_tokens),
                "router_metadata": md,
            }
            log.info("%s model=%s strategy=%s cost=%.6g calls=%d time=%.3fs", rid, meta.model_id,
                     md["routing_strategy"], md["total_cost"], len(calls), md["total_time"])
            return Response(json.dumps(body).encode(), media_type="application/json", headers={
                **headers_base, "x-router-model": meta.model_id, "x-router-cost": repr(md["total_cost"]),
                "x-router-strategy": md["routing_strategy"]})
        except ApiError as e:
            srv.counts["errors"] += 1
            log.info("%s error %d %s", rid, e.status, e.code)
            return err_response(e, rid)
        finally:
            if release:
                srv.inflight -= 1

    return app


async def _stream_response(srv: RouterServer, plan: _Plan, messages, params, rid: str, t0: float,
                           headers_base: dict[str, str], StreamingResponse):
    st, est, calls = await srv.open_stream(plan, messages, params)
    if st is None:
        raise srv.all_failed(plan, calls, t0)
    rec = calls[-1]
    spec = st.spec
    created = int(time.time())
    strategy = srv.metadata(plan, calls, spec.id, t0)["routing_strategy"]
    if strategy == "fallback":
        srv.counts["fallbacks"] += 1

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": spec.id,
               "choices": choices, **extra}
        return f"data: {json.dumps(obj)}\n\n"

    async def gen():
        settled = False
        texts: list[str] = []
        p_tok = c_tok = None
        finish = None
        try:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            try:
                async for p in st.pieces():
                    if p.prompt_tokens is not None or p.completion_tokens is not None:
                        p_tok, c_tok = p.prompt_tokens, p.completion_tokens
                    if p.content:
                        texts.append(p.content)
                        yield chunk([{"index": 0, "delta": {"content": p.content}, "finish_reason": None}])
                    if p.finish_reason:
                        finish = p.finish_reason
            except asyncio.CancelledError:
                raise
            except Exception as e:
                rec.error, rec.timed_out = _describe_error(e, srv.settings.upstream_timeout_s, srv.scrub)
            text = "".join(texts)
            rec.prompt_tokens = int(p_tok) if p_tok is not None else estimate_prompt_tokens(messages)
            rec.completion_tokens = int(c_tok) if c_tok is not None else max(1, len(text) // 4)
            rec.cost = spec.cost(rec.prompt_tokens, rec.completion_tokens)
            rec.latency = time.perf_counter() - rec.t0
            srv.ledger.settle(est, rec.cost)
            settled = True
            md = srv.metadata(plan, calls, spec.id, t0)
            if rec.error is not None:
                srv.counts["errors"] += 1
                yield "data: " + json.dumps({"error": {"message": f"upstream {spec.id} failed mid-stream: {rec.error}",
                                                       "type": "upstream_error", "param": None,
                                                       "code": "upstream_error"}, "router_metadata": md}) + "\n\n"
                return
            yield chunk([{"index": 0, "delta": {}, "finish_reason": finish or "stop"}])
            yield chunk([], usage=_usage(rec.prompt_tokens, rec.completion_tokens), router_metadata=md)
            yield "data: [DONE]\n\n"
            log.info("%s stream model=%s strategy=%s cost=%.6g time=%.3fs", rid, spec.id, md["routing_strategy"],
                     md["total_cost"], md["total_time"])
        finally:
            if not settled:  # the client went away mid-stream: account what the upstream was sent and streamed
                srv.ledger.settle(est, spec.cost(estimate_prompt_tokens(messages), len("".join(texts)) // 4))
            await st.aclose()
            srv.inflight -= 1

    headers = {**headers_base, "x-router-model": spec.id, "x-router-strategy": strategy,
               "x-router-cost": "streamed: see router_metadata in the last chunk", "cache-control": "no-cache"}
    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    chars = sum(len(m["content"]) if isinstance(m.get("content"), str) else 0 for m in messages)
    return max(1, chars // 4 + 16 * len(messages))


# ---- loading the trained router -----------------------------------------------------------------------------


def load_router(settings: ServeSettings, pool: Pool) -> BaseRouter:
    """The trained LoRA router (``router.LoRARouter``) from ``settings.adapter``, loaded once."""
    if settings.adapter is None:
        raise ValueError("no --adapter given: the server needs a trained router adapter folder")
    if not Path(settings.adapter).is_dir():
        raise ValueError(f"adapter folder not found: {settings.adapter}")
    if not (Path(settings.adapter) / "adapter_config.json").exists():
        raise ValueError(f"{settings.adapter}: no adapter_config.json (not a LoRA adapter folder)")
    from .router import LoRARouter

    return LoRARouter(
        base_model=settings.base_model, adapter_dir=settings.adapter, mode=settings.router_mode,
        default_model=settings.default_model, device=settings.device, quantize=settings.quantize,
        batch_size=settings.max_router_batch, tau=settings.tau or 0.0,
    )


def run_server(settings: ServeSettings, router: BaseRouter | None = None) -> None:
    """Load the pool and the router (before listening, so a bad adapter fails here with a clear message), then run
    uvicorn until Ctrl-C."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = load_pool(settings.pool)
    if router is None:
        t0 = time.perf_counter()
        log.info("loading the router from %s ...", settings.adapter)
        router = load_router(settings, pool)
        log.info("router %s loaded in %.1f s", getattr(router, "name", "?"), time.perf_counter() - t0)
    app = create_app(pool=pool, settings=settings, router=router)
    log.info("serving %d pool models on http://%s:%d/v1 (auth %s)", len(pool), settings.host, settings.port,
             "on" if settings.api_key else "off")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
                timeout_graceful_shutdown=5)
