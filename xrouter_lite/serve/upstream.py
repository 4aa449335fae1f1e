"""Calls to the chosen pool models, through ``llm``'s public functions only: ``llm.acall_model`` for a whole
answer, and the two streaming twins of its transports (``DirectStream`` for OpenAI-compatible endpoints, on
``llm``'s request builder, HTTP session and error parsing; ``LiteLLMStream`` for every other provider).
Every error text that may reach a client or a log goes through ``Scrubber`` (``llm.scrub_secrets``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import llm
from ..pool import ModelSpec, Pool

_SECRET_ENV_RE = re.compile(r"(_API_KEY|_KEY|_TOKEN|_SECRET)$")


class Scrubber:
    """Removes provider keys from any text that may reach a client or a log: the values of the pool's
    ``api_key_env`` variables, of every environment variable named like a key, and anything key-shaped
    (``llm.scrub_secrets``)."""

    def __init__(self, pool: Pool, extra: Sequence[str] = ()):
        names = {m.api_key_env for m in pool if m.api_key_env}
        names |= {k for k in os.environ if _SECRET_ENV_RE.search(k)}
        vals = [os.environ.get(n) or "" for n in names] + [s for s in extra if s]
        self.secrets = sorted({v for v in vals if len(v) >= 8}, key=len, reverse=True)  # short ones: too many false hits

    def __call__(self, text: str) -> str:
        return llm.scrub_secrets(text, self.secrets)


@dataclass
class CallRecord:
    """One upstream call, as ``router_metadata.call_history`` shows it."""

    model_id: str
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    error: str | None = None
    timed_out: bool = False
    status: int | None = None  # the provider's HTTP status of a failure, when known
    t0: float = field(default_factory=time.perf_counter)

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "cost": self.cost,
                "tokens": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
                "latency": round(self.latency, 6), "error": self.error}

    def failed(self, e: BaseException, timeout_s: float, scrub: Scrubber) -> None:
        self.latency = time.perf_counter() - self.t0
        self.error, self.timed_out = describe_error(e, timeout_s, scrub)
        self.status = llm.classify_exception(e)[1]


def describe_error(e: BaseException, timeout_s: float, scrub: Scrubber) -> tuple[str, bool]:
    """A client-safe one-line description and whether it was a time-out."""
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return f"time-out: no answer within {timeout_s:g} s", True
    msg = f"{type(e).__name__}: {e}"
    timed_out = type(e).__name__ in ("Timeout", "APITimeoutError") or " 408" in msg or "no answer within" in msg
    return scrub(msg)[:1000], timed_out


async def call_once(spec: ModelSpec, messages, params: dict[str, Any], *, pool: Pool, timeout_s: float,
                    max_retries: int, transport: str) -> tuple[str, llm.CallMetadata]:
    """One whole answer (``llm.acall_model``), under a hard guard over its per-attempt time-outs."""
    call = llm.acall_model(spec, messages, params, pool=pool, timeout_s=timeout_s, max_retries=max_retries,
                           transport=transport)
    return await asyncio.wait_for(call, (timeout_s + 30.0) * (max_retries + 1))


def warm_litellm(pool: Pool) -> None:
    litellm = llm.configure_litellm()
    for spec in pool:
        if not spec.hf_model:
            llm.register_prices(litellm, spec)


# ---- streams --------------------------------------------------------------------------------------------------


@dataclass
class StreamPiece:
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # the delta's tool_calls, exactly as the provider sent them
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

    @staticmethod
    def for_spec(spec: ModelSpec, messages, params, timeout_s: float, transport: str) -> UpstreamStream:
        cls = DirectStream if llm.uses_direct_transport(spec, transport) else LiteLLMStream
        return cls(spec, messages, params, timeout_s)

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
        litellm = llm.configure_litellm()
        llm.register_prices(litellm, self.spec)
        kwargs: dict[str, Any] = dict(llm.build_request_params(self.spec, self.params))
        key = llm.api_key_for(self.spec)
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
            calls = getattr(delta, "tool_calls", None) if delta is not None else None
            out.append(StreamPiece(content=getattr(delta, "content", None) if delta is not None else None,
                                   tool_calls=[llm.as_plain_dict(c) for c in calls] if calls else None,
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


class DirectStream(UpstreamStream):
    """Server-sent events from an OpenAI-compatible endpoint (``llm.is_openai_compatible``), read line by line
    through ``llm``'s shared aiohttp session: the streaming twin of ``llm``'s direct transport."""

    _resp = None

    async def open(self) -> None:
        import aiohttp

        params = llm.build_request_params(self.spec, self.params)
        url, body, headers = llm.direct_request(self.spec, self.messages, params, llm.api_key_for(self.spec))
        body.update(stream=True, stream_options={"include_usage": True})
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        self._resp = await asyncio.wait_for(
            llm.http_session().post(url, json=body, headers=headers, timeout=timeout), self.timeout_s)
        if self._resp.status != 200:
            raw = await asyncio.wait_for(self._resp.read(), self.timeout_s)
            raise llm.http_status_error(self._resp.status, raw, self._resp.headers)
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
                raise llm.http_status_error(502, payload)
            out = []
            for c in obj.get("choices") or []:
                delta = c.get("delta") or {}
                out.append(StreamPiece(content=delta.get("content"), tool_calls=delta.get("tool_calls") or None,
                                       finish_reason=c.get("finish_reason")))
            u = obj.get("usage")
            if u:
                out.append(StreamPiece(prompt_tokens=u.get("prompt_tokens"), completion_tokens=u.get("completion_tokens")))
            if out:
                return out

    async def aclose(self) -> None:
        if self._resp is not None:
            self._resp.release()
