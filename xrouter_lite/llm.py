"""Calling pool models: one function for every provider (through litellm) and for local Hugging Face models.

    from xrouter_lite.llm import call_model, acall_model, LLMCallError
    text, meta = call_model("gpt-4o-mini", [{"role": "user", "content": "2+2?"}], {"max_tokens": 64}, pool=pool)
    meta.cost, meta.input_tokens, meta.output_tokens, meta.latency_s, meta.attempts
    text, meta = await acall_model(spec, messages, {"temperature": 0.0, "max_tokens": 512})

- Cost is ours, not litellm's: ``ModelSpec.cost(usage.prompt_tokens, usage.completion_tokens)``, i.e. the POOL's
  prices times the provider's reported usage (when a provider reports no usage, the tokens are estimated and
  ``meta.usage_estimated`` is set).
- Retries: exponential back-off with jitter on 429, 408, 5xx, time-outs and dropped connections; a
  ``Retry-After`` header is honoured (capped at ``RetryPolicy.retry_after_cap_s``). Never retried: 400, 401, 403,
  404, 422 and missing credentials. A call that fails raises ``LLMCallError`` (``.retryable``, ``.status``,
  ``.attempts``); an error is never returned as an answer.
- Reasoning models (``spec.reasoning``) accept only temperature 1.0: they get it, no other sampling knobs, and a
  larger output budget passed as ``max_completion_tokens`` (at least ``REASONING_MIN_OUTPUT_TOKENS``, clipped
  to the model's ``max_output_tokens``; the budget covers the hidden reasoning tokens too). Other models get the
  caller's sampling parameters with ``max_tokens`` clipped to their ``max_output_tokens``.
- Keys: ``spec.api_key_env`` names the environment variable holding the key; a ``.env`` file in the working
  directory (or above) is read once with python-dotenv (it never overrides the environment). Keys are never
  logged: litellm's verbose logging and debug banners are switched off and every error message is scrubbed of
  the key and of anything that looks like one. A model with ``api_base`` and no ``api_key_env`` (Ollama, vLLM,
  the fake upstream) is sent a placeholder key, as OpenAI-compatible local servers need none.
- Local members: a ``ModelSpec`` with ``hf_model`` (a folder or a Hub id, loaded offline) runs with transformers
  in this process: loaded once, greedy decoding with the model's chat template, token counts from its
  tokenizer, cost from the pool's prices (usually 0).

Transports: every provider goes through ``litellm.acompletion``, except OpenAI-compatible endpoints of the user's
choosing (``litellm_model: openai/<name>`` with an ``api_base``: vLLM, Ollama's /v1, llama.cpp, LM Studio, the fake
upstream), which by default (``transport="auto"``) take a direct POST to ``<api_base>/chat/completions`` through
one shared aiohttp session per event loop, with the same request rules, retries, errors and cost. Why: litellm
costs ~3-5 ms of CPU per call here against ~0.3 ms for the direct POST (docs/BENCHMARKS.md "Stage 1"), which caps
a cache run at a few hundred calls/s per core. ``transport="litellm"`` forces litellm everywhere. Close the
direct transport's session with ``await llm.aclose()`` before an event loop ends (``call_model`` and the cache
stage do it).

litellm's own per-call overhead is trimmed once per process by ``configure_litellm()``: quiet logging, message
redaction off (it deep-copied every request), its success-logging payload skipped while no litellm callback is
registered, the pool's prices registered for models it does not know (its cost lookup is slow for those).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .pool import ModelSpec, Pool, load_pool

__all__ = [
    "CallMetadata",
    "LLMCallError",
    "RetryPolicy",
    "LocalHFModel",
    "call_model",
    "acall_model",
    "aclose",
    "is_openai_compatible",
    "uses_direct_transport",
    "HTTPStatusError",
    "TRANSPORTS",
    "build_request_params",
    "max_output_budget",
    "estimate_prompt_tokens_upper",
    "configure_litellm",
    "register_prices",
    "classify_exception",
    "api_key_for",
    "scrub_secrets",
    "as_plain_dict",
    "http_session",
    "direct_request",
    "http_status_error",
    "REQUEST_KNOBS",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_MAX_RETRIES",
    "REASONING_MIN_OUTPUT_TOKENS",
]

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 4
REASONING_MIN_OUTPUT_TOKENS = 16384
"""Output budget (reasoning + answer tokens) a reasoning model gets at least, clipped to its max_output_tokens."""
LOCAL_DEFAULT_MAX_NEW_TOKENS = 512
PLACEHOLDER_KEY = "sk-no-key-needed"

_NEVER_RETRY = {400, 401, 403, 404, 405, 409, 413, 422}
_CREDENTIALS_RE = re.compile(r"missing credentials|api[_ ]?key (must|is) (be )?(set|missing|required)|no api key", re.I)
_KEYLIKE_RE = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{6,}|(?:api[_-]?key|token|secret)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9._\-]{6,})",
    re.I,
)
REQUEST_KNOBS = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
    "frequency_penalty", "n", "logit_bias", "response_format", "reasoning_effort", "top_k", "tools", "tool_choice",
    "parallel_tool_calls", "logprobs", "top_logprobs", "user",
})
"""The request fields ``build_request_params`` accepts (sampling knobs and tools): the one list of them."""
_REASONING_KNOBS = {"stop", "seed", "response_format", "reasoning_effort", "tools", "tool_choice",
                    "parallel_tool_calls", "user"}


# ---- results and errors ------------------------------------------------------------------------------------------


@dataclass
class CallMetadata:
    """What a successful call cost and took. ``cost`` is USD from the pool's prices and the reported usage."""

    model_id: str
    input_tokens: int
    output_tokens: int
    cost: float
    latency_s: float
    provider: str
    attempts: int = 1
    finish_reason: str | None = None
    usage_estimated: bool = False
    tool_calls: list[dict[str, Any]] | None = None
    """The answer's ``tool_calls`` exactly as the provider sent them (None for a text answer)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LLMCallError(RuntimeError):
    """A model call failed for good (after the retries it deserved). Its message never holds an API key."""

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
    ):
        super().__init__(message)
        self.model_id = model_id
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with equal jitter: the n-th retry waits ``d/2 + U(0, d/2)`` with
    ``d = min(max_delay_s, base_delay_s * 2**n)``; a ``Retry-After`` from the provider replaces it (capped)."""

    max_retries: int = DEFAULT_MAX_RETRIES
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    retry_after_cap_s: float = 60.0

    def delay(self, retry_index: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.retry_after_cap_s) + random.uniform(0, 0.1)
        d = min(self.max_delay_s, self.base_delay_s * (2**retry_index))
        return d / 2 + random.uniform(0, d / 2)


# ---- litellm set-up --------------------------------------------------------------------------------------------

_litellm_lock = threading.Lock()
_litellm_mod = None
_registered: set[str] = set()
_dotenv_loaded = False


def configure_litellm():
    """Import litellm once with quiet, offline, low-overhead settings; returns the module."""
    global _litellm_mod
    if _litellm_mod is not None:
        return _litellm_mod
    with _litellm_lock:
        if _litellm_mod is not None:
            return _litellm_mod
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        import litellm

        litellm.suppress_debug_info = True  # no "Give Feedback" banners
        litellm.set_verbose = False
        # (turn_off_message_logging stays off: with no callback nothing is logged anyway, and when on, litellm
        # deep-copies every request and response to redact them: ~0.5 ms of CPU per call measured here)
        litellm.logging = False
        litellm.telemetry = False
        litellm.drop_params = True  # a knob a provider does not take is dropped rather than failing the call
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
            lg = logging.getLogger(name)
            lg.setLevel(logging.CRITICAL)  # its warnings/errors may echo request details; ours carry the facts
            lg.propagate = False
        if os.environ.get("XROUTER_LITE_LITELLM_LOGGING", "") not in ("1", "true", "True"):
            _skip_idle_success_logging(litellm)
        _litellm_mod = litellm
        return litellm


SKIP_IDLE_LITELLM_LOGGING = True
"""Module switch read on every call (the benchmark's A/B toggles it); see ``_skip_idle_success_logging``."""
_LOGGING_CALLBACK_LISTS = ("callbacks", "success_callback", "_async_success_callback", "failure_callback",
                           "_async_failure_callback", "input_callback", "service_callback")


def _skip_idle_success_logging(litellm) -> None:
    """After every successful call litellm queues a coroutine that builds its full "standard logging payload"
    (cost lookup, metadata, redaction) for its callbacks, even when no callback is registered: ~0.4 ms of CPU per
    call, measured with bench/cache_throughput.py. When no callback is registered, drop that coroutine unrun.
    Any registered callback (``litellm.callbacks``, ``success_callback``, ...) brings the normal behaviour back at
    once; ``XROUTER_LITE_LITELLM_LOGGING=1`` turns this off. Purely an optimisation: on any surprise, no-op."""
    try:
        from litellm.litellm_core_utils import logging_worker as lw

        worker = lw.GLOBAL_LOGGING_WORKER
        original = worker.ensure_initialized_and_enqueue
    except Exception:
        return
    if getattr(original, "_xrouter_lite_patch", False):
        return

    def enqueue(async_coroutine, *args, **kwargs):
        name = getattr(async_coroutine, "__qualname__", "") or ""
        if SKIP_IDLE_LITELLM_LOGGING and name.endswith("async_success_handler") and not any(
            getattr(litellm, n, None) for n in _LOGGING_CALLBACK_LISTS
        ):
            async_coroutine.close()
            return None
        return original(async_coroutine, *args, **kwargs)

    enqueue._xrouter_lite_patch = True  # type: ignore[attr-defined]
    worker.ensure_initialized_and_enqueue = enqueue


def _load_dotenv_once() -> None:
    global _dotenv_loaded
    if _dotenv_loaded:
        return
    _dotenv_loaded = True
    try:
        from dotenv import find_dotenv, load_dotenv

        path = find_dotenv(usecwd=True)
        if path:
            load_dotenv(path, override=False)
    except ImportError:  # python-dotenv is a dependency; without it only the environment is read
        pass


def register_prices(litellm, spec: ModelSpec) -> None:
    """Tell litellm the pool's prices for a model it does not know (its per-call cost lookup for unknown models is
    slow). Known models are left alone: we never use litellm's cost anyway."""
    if spec.litellm_model in _registered:
        return
    _registered.add(spec.litellm_model)
    name = spec.litellm_model
    bare = name.split("/", 1)[1] if "/" in name else name
    if name in litellm.model_cost or bare in litellm.model_cost:
        return
    try:
        litellm.register_model(
            {
                name: {
                    "input_cost_per_token": spec.input_price / 1e6,
                    "output_cost_per_token": spec.output_price / 1e6,
                    "max_input_tokens": spec.context_window,
                    "max_output_tokens": spec.max_output_tokens,
                    "max_tokens": spec.max_output_tokens,
                    "litellm_provider": spec.provider_name if not spec.api_base else name.split("/", 1)[0],
                    "mode": "chat",
                }
            }
        )
    except Exception:  # purely an optimisation
        pass


# ---- request building ---------------------------------------------------------------------------------------------


def max_output_budget(spec: ModelSpec, sampling_params: dict[str, Any] | None = None,
                      reasoning_min_tokens: int = REASONING_MIN_OUTPUT_TOKENS) -> int:
    """The most output tokens a call may produce (and be billed for) with these sampling parameters."""
    p = sampling_params or {}
    user = p.get("max_completion_tokens") or p.get("max_tokens")
    if spec.reasoning:
        return min(spec.max_output_tokens, max(int(user or 0), reasoning_min_tokens))
    if spec.hf_model and not user:
        return min(spec.max_output_tokens, LOCAL_DEFAULT_MAX_NEW_TOKENS)
    return min(spec.max_output_tokens, int(user)) if user else spec.max_output_tokens


def build_request_params(spec: ModelSpec, sampling_params: dict[str, Any] | None = None,
                         reasoning_min_tokens: int = REASONING_MIN_OUTPUT_TOKENS) -> dict[str, Any]:
    """The sampling part of the request for this model (reasoning rules applied, budgets clipped)."""
    p = dict(sampling_params or {})
    unknown = set(p) - REQUEST_KNOBS
    if unknown:
        raise ValueError(f"unknown sampling parameter(s) {sorted(unknown)} (known: {sorted(REQUEST_KNOBS)})")
    budget = max_output_budget(spec, p, reasoning_min_tokens)
    if spec.reasoning:
        out = {k: v for k, v in p.items() if k in _REASONING_KNOBS}
        out["temperature"] = 1.0
        out["max_completion_tokens"] = budget
        return out
    user_max = p.pop("max_completion_tokens", None) or p.get("max_tokens")
    if user_max:
        p["max_tokens"] = budget
    return p


def estimate_prompt_tokens_upper(messages: Sequence[dict[str, Any]]) -> int:
    """An upper bound of the prompt tokens of a chat request: UTF-8 bytes of the contents (a byte-level BPE token
    is at least one byte) plus a generous per-message template overhead."""
    n = 16
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            n += len(c.encode("utf-8"))
        elif c is not None:
            n += len(str(c).encode("utf-8"))
        n += 16
    return n


def scrub_secrets(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without the given secret values (those of 4 characters or more) and without anything key-shaped
    (``sk-...``, ``Bearer ...``, ``api_key=...``): the one scrubber of provider keys, used here and by the server."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return _KEYLIKE_RE.sub("***", text)


_scrub = scrub_secrets  # the old private name (tests/test_llm.py imports it)


def api_key_for(spec: ModelSpec) -> str | None:
    """The key to send for ``spec``: its ``api_key_env`` variable (a ``.env`` file is read once), a placeholder for
    an ``api_base`` without one, None when litellm reads the provider's usual variable. Raises ``LLMCallError``
    when the named variable is unset."""
    _load_dotenv_once()
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise LLMCallError(
                f"model {spec.id!r}: environment variable {spec.api_key_env} (its api_key_env) is not set; "
                "export it or put it in a .env file",
                model_id=spec.id, status=401, retryable=False, attempts=0,
            )
        return key
    if spec.api_base:
        return PLACEHOLDER_KEY
    return None  # litellm reads the provider's usual variable (OPENAI_API_KEY, TOGETHERAI_API_KEY, ...)


# ---- error classification --------------------------------------------------------------------------------------


def _retry_after(exc: BaseException) -> float | None:
    headers = None
    for attr in ("litellm_response_headers", "headers"):
        h = getattr(exc, attr, None)
        if h:
            headers = h
            break
    if headers is None:
        resp = getattr(exc, "response", None)
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return float(ms) / 1000.0
        ra = headers.get("retry-after")
    except Exception:
        return None
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(str(ra))
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None


def classify_exception(exc: BaseException) -> tuple[bool, int | None, float | None]:
    """``(retryable, http_status_or_None, retry_after_s_or_None)`` for an exception raised by a call."""
    if isinstance(exc, LLMCallError):
        return exc.retryable, exc.status, None
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True, 408, None
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(exc, "status", None)
        status = status if isinstance(status, int) else None
    msg = str(exc)
    if _CREDENTIALS_RE.search(msg):
        return False, 401, None
    name = type(exc).__name__
    if status == 429 or name == "RateLimitError":
        return True, 429, _retry_after(exc)
    if status in _NEVER_RETRY:
        return False, status, None
    if name in ("Timeout", "APITimeoutError") or status == 408:
        return True, 408, None
    if status is not None and status >= 500:
        return True, status, _retry_after(exc)
    if name in ("APIConnectionError", "ServiceUnavailableError", "InternalServerError", "APIError"):
        return True, status, None
    if isinstance(exc, (ConnectionError, OSError)):
        return True, None, None
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError):
            return True, None, None
    except ImportError:
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True, None, None
    except ImportError:
        pass
    return False, status, None


# ---- the calls ---------------------------------------------------------------------------------------------------

_default_pool: Pool | None = None


def _resolve(spec_or_id: ModelSpec | str, pool: Pool | None) -> ModelSpec:
    global _default_pool
    if isinstance(spec_or_id, ModelSpec):
        return spec_or_id
    if pool is None:
        if _default_pool is None:
            _default_pool = load_pool(Path(__file__).resolve().parent.parent / "configs" / "pool.yaml")
        pool = _default_pool
    return pool.get(spec_or_id)


def _usage_of(resp: Any) -> tuple[int | None, int | None]:
    usage = getattr(resp, "usage", None)
    if usage is None and isinstance(resp, dict):
        usage = resp.get("usage")
    if usage is None:
        return None, None
    get = usage.get if isinstance(usage, dict) else (lambda k, d=None: getattr(usage, k, d))
    return get("prompt_tokens", None), get("completion_tokens", None)


async def _one_litellm_attempt(litellm, spec: ModelSpec, messages, params: dict[str, Any], key: str | None,
                               timeout_s: float) -> tuple[str, int, int, str | None, bool, list | None]:
    kwargs: dict[str, Any] = dict(params)
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
    if key is not None:
        kwargs["api_key"] = key
    # max_retries=0: the OpenAI SDK under litellm must not retry on its own; the loop below does.
    coro = litellm.acompletion(model=spec.litellm_model, messages=messages, timeout=timeout_s, max_retries=0, **kwargs)
    # a hard guard in case a transport ignores its time-out
    resp = await asyncio.wait_for(coro, timeout_s + 5.0)
    choices = getattr(resp, "choices", None) or []
    if not choices:
        raise LLMCallError(f"model {spec.id!r}: the provider returned no choices", model_id=spec.id, status=502,
                           retryable=True)
    msg = choices[0].message
    text = getattr(msg, "content", None) or ""
    tool_calls = [as_plain_dict(t) for t in getattr(msg, "tool_calls", None) or []] or None
    finish = getattr(choices[0], "finish_reason", None)
    in_tok, out_tok = _usage_of(resp)
    estimated = False
    if in_tok is None or out_tok is None:
        estimated = True
        in_tok = in_tok if in_tok is not None else estimate_prompt_tokens_upper(messages) // 4
        out_tok = out_tok if out_tok is not None else max(1, len(text) // 4)
    return text, int(in_tok), int(out_tok), finish, estimated, tool_calls


def as_plain_dict(obj: Any) -> Any:
    """A litellm/pydantic response object (a tool call, a delta) as plain JSON data."""
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(exclude_none=True)
    return json.loads(json.dumps(obj, default=lambda o: getattr(o, "__dict__", str(o))))


class HTTPStatusError(Exception):
    """A non-200 answer of an OpenAI-compatible endpoint on the direct path (classified like litellm's errors)."""

    def __init__(self, status_code: int, message: str, headers: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers


Transport = Literal["auto", "litellm", "direct"]
TRANSPORTS = ("auto", "litellm", "direct")


def is_openai_compatible(spec: ModelSpec) -> bool:
    """``openai/<name>`` with an ``api_base`` of the user's choosing (vLLM, Ollama's /v1, llama.cpp, LM Studio, the
    fake upstream): plain OpenAI chat-completions protocol, which the direct transport speaks."""
    return bool(spec.api_base) and spec.litellm_model.startswith("openai/") and not spec.hf_model


def uses_direct_transport(spec: ModelSpec, transport: str = "auto") -> bool:
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r} (choose from {', '.join(TRANSPORTS)})")
    if transport == "litellm" or spec.hf_model:
        return False
    if transport == "direct" and not is_openai_compatible(spec):
        raise ValueError(f"model {spec.id!r}: the direct transport needs an `openai/<name>` model with an api_base")
    return is_openai_compatible(spec)


_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def http_session():
    """One aiohttp session (keep-alive connection pool) per event loop, for the direct transport."""
    import aiohttp

    loop = asyncio.get_running_loop()
    sess = _sessions.get(loop)
    if sess is None or sess.closed:
        sess = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30), json_serialize=json.dumps
        )
        _sessions[loop] = sess
    return sess


async def aclose() -> None:
    """Close this event loop's HTTP session of the direct transport (call it before the loop ends)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    sess = _sessions.pop(loop, None)
    if sess is not None and not sess.closed:
        await sess.close()


def direct_request(spec: ModelSpec, messages, params: dict[str, Any], key: str | None
                   ) -> tuple[str, dict[str, Any], dict[str, str] | None]:
    """URL, JSON body and headers of a chat-completions POST to an OpenAI-compatible endpoint (``params`` already
    built by ``build_request_params``; ``key`` from ``api_key_for``)."""
    body = {"model": spec.litellm_model.split("/", 1)[1], "messages": messages, **params}
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return spec.api_base.rstrip("/") + "/chat/completions", body, headers  # type: ignore[union-attr]


def http_status_error(status: int, raw: bytes, headers: Any = None) -> HTTPStatusError:
    """The ``HTTPStatusError`` for a non-200 answer (or an error event) of an OpenAI-compatible endpoint, with the
    provider's own message when its body is OpenAI-style JSON."""
    try:
        err = json.loads(raw).get("error")
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except Exception:
        msg = raw[:300].decode("utf-8", "replace")
    return HTTPStatusError(status, f"HTTP {status}: {msg}", headers)


async def _one_direct_attempt(spec: ModelSpec, messages, params: dict[str, Any], key: str | None,
                              timeout_s: float) -> tuple[str, int, int, str | None, bool, list | None]:
    """One POST to ``<api_base>/chat/completions`` through the shared aiohttp session."""
    import aiohttp

    url, body, headers = direct_request(spec, messages, params, key)
    async with http_session().post(url, json=body, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        raw = await r.read()
        if r.status != 200:
            raise http_status_error(r.status, raw, r.headers)
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        tool_calls = message.get("tool_calls") or None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise HTTPStatusError(502, f"the provider returned no usable choice: {raw[:200]!r}") from None
    usage = data.get("usage") or {}
    in_tok, out_tok = usage.get("prompt_tokens"), usage.get("completion_tokens")
    estimated = in_tok is None or out_tok is None
    if in_tok is None:
        in_tok = estimate_prompt_tokens_upper(messages) // 4
    if out_tok is None:
        out_tok = max(1, len(text) // 4)
    return text, int(in_tok), int(out_tok), choice.get("finish_reason"), estimated, tool_calls


async def acall_model(
    spec_or_id: ModelSpec | str,
    messages: Sequence[dict[str, Any]],
    sampling_params: dict[str, Any] | None = None,
    *,
    pool: Pool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_policy: RetryPolicy | None = None,  # overrides max_retries when given
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    reasoning_min_tokens: int = REASONING_MIN_OUTPUT_TOKENS,
    transport: str = "auto",
) -> tuple[str, CallMetadata]:
    """Call one pool model; return ``(text, CallMetadata)`` or raise ``LLMCallError``.

    ``before_attempt`` (e.g. a rate limiter's ``acquire``) is awaited before every attempt, retries included.
    Cancelling the task cancels the HTTP request. ``transport``: ``"auto"`` (the direct transport for
    OpenAI-compatible endpoints, litellm for every other provider), ``"litellm"`` (always litellm) or ``"direct"``.
    """
    spec = _resolve(spec_or_id, pool)
    policy = retry_policy if retry_policy is not None else RetryPolicy(max_retries=max_retries)
    messages = list(messages)
    if spec.hf_model:
        return await asyncio.to_thread(_call_local, spec, messages, sampling_params)
    direct = uses_direct_transport(spec, transport)
    litellm = None
    if not direct:
        litellm = configure_litellm()
        register_prices(litellm, spec)
    params = build_request_params(spec, sampling_params, reasoning_min_tokens)
    key = api_key_for(spec)
    secrets = [key] if key and key != PLACEHOLDER_KEY else []
    attempts = 0
    t0 = time.perf_counter()
    while True:
        attempts += 1
        if before_attempt is not None:
            await before_attempt()
        try:
            if direct:
                text, in_tok, out_tok, finish, estimated, tool_calls = await _one_direct_attempt(
                    spec, messages, params, key, timeout_s
                )
            else:
                text, in_tok, out_tok, finish, estimated, tool_calls = await _one_litellm_attempt(
                    litellm, spec, messages, params, key, timeout_s
                )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # classified below; never returned as an answer
            retryable, status, retry_after = classify_exception(e)
            timed_out = isinstance(e, (asyncio.TimeoutError, TimeoutError)) or type(e).__name__ in (
                "Timeout", "APITimeoutError")
            if timed_out:
                label, detail = "time-out", f"no answer within the {timeout_s:g} s time-out"
            else:
                label = f"HTTP {status}" if status else "call failed"
                detail = f"{type(e).__name__}: {e}"
            if retryable and attempts <= policy.max_retries:
                await asyncio.sleep(policy.delay(attempts - 1, retry_after))
                continue
            what = "gave up after" if retryable else "not retried;"
            raise LLMCallError(
                scrub_secrets(
                    f"model {spec.id!r} ({spec.litellm_model}): {label}, {what} {attempts} attempt(s): "
                    f"{detail}"[:2000],
                    secrets,
                ),
                model_id=spec.id, status=status, retryable=retryable, attempts=attempts,
            ) from None
        latency = time.perf_counter() - t0
        return text, CallMetadata(
            model_id=spec.id, input_tokens=in_tok, output_tokens=out_tok, cost=spec.cost(in_tok, out_tok),
            latency_s=latency, provider=spec.provider_name, attempts=attempts, finish_reason=finish,
            usage_estimated=estimated, tool_calls=tool_calls,
        )


def call_model(
    spec_or_id: ModelSpec | str,
    messages: Sequence[dict[str, Any]],
    sampling_params: dict[str, Any] | None = None,
    *,
    pool: Pool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_policy: RetryPolicy | None = None,
    reasoning_min_tokens: int = REASONING_MIN_OUTPUT_TOKENS,
    transport: str = "auto",
) -> tuple[str, CallMetadata]:
    """Blocking ``acall_model``. Inside a running event loop, use ``await acall_model(...)`` instead."""
    spec = _resolve(spec_or_id, pool)
    if spec.hf_model:
        return _call_local(spec, list(messages), sampling_params)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        async def once() -> tuple[str, CallMetadata]:
            try:
                return await acall_model(spec, messages, sampling_params, timeout_s=timeout_s,
                                         max_retries=max_retries, retry_policy=retry_policy,
                                         reasoning_min_tokens=reasoning_min_tokens, transport=transport)
            finally:
                await aclose()

        return asyncio.run(once())
    raise RuntimeError("call_model() was called inside a running event loop; use `await acall_model(...)`")


# ---- local Hugging Face members -------------------------------------------------------------------------------


class LocalHFModel:
    """A causal LM run with transformers in this process: greedy decoding through the model's chat template.

    Loaded once per ``hf_model`` (see ``LocalHFModel.get``); calls are serialised by a lock (one model, one
    forward pass at a time). GPU when available (fp16), else CPU (fp32).
    """

    _instances: dict[str, LocalHFModel] = {}
    _instances_lock = threading.Lock()

    def __init__(self, name_or_path: str, device: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name_or_path
        p = Path(name_or_path).expanduser()
        src = str(p) if p.exists() else name_or_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src)
            self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype).to(self.device)
        except OSError as e:
            raise LLMCallError(f"local model {name_or_path!r} could not be loaded (offline; give a folder): {e}",
                               status=None, retryable=False) from None
        self.model.eval()
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 0) or 0) or None
        self._lock = threading.Lock()

    @classmethod
    def get(cls, name_or_path: str) -> LocalHFModel:
        with cls._instances_lock:
            m = cls._instances.get(name_or_path)
            if m is None:
                m = cls(name_or_path)
                cls._instances[name_or_path] = m
            return m

    def generate(self, messages: Sequence[dict[str, Any]], max_new_tokens: int = LOCAL_DEFAULT_MAX_NEW_TOKENS
                 ) -> tuple[str, int, int, str]:
        """``(text, prompt_tokens, completion_tokens, finish_reason)``; completion tokens count the eos if made."""
        import torch

        enc = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        input_ids = enc["input_ids"].to(self.device)
        attn = enc.get("attention_mask")
        attn = attn.to(self.device) if attn is not None else torch.ones_like(input_ids)
        n_in = int(input_ids.shape[1])
        if self.context_window and n_in >= self.context_window:
            raise LLMCallError(f"local model {self.name!r}: prompt of {n_in} tokens does not fit its context of "
                               f"{self.context_window}", status=400, retryable=False)
        if self.context_window:
            max_new_tokens = max(1, min(max_new_tokens, self.context_window - n_in))
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=pad, eos_token_id=eos, temperature=None, top_p=None, top_k=None,
            )
        new = out[0, n_in:].tolist()
        finish = "length"
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        for i, t in enumerate(new):
            if t in eos_ids:
                new = new[: i + 1]
                finish = "stop"
                break
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return text, n_in, len(new), finish


def _call_local(spec: ModelSpec, messages: list[dict[str, Any]], sampling_params: dict[str, Any] | None
                ) -> tuple[str, CallMetadata]:
    t0 = time.perf_counter()
    try:
        model = LocalHFModel.get(spec.hf_model)  # type: ignore[arg-type]
        text, n_in, n_out, finish = model.generate(messages, max_output_budget(spec, sampling_params))
    except LLMCallError as e:
        e.model_id = spec.id
        raise
    except Exception as e:  # a local failure is not transient
        raise LLMCallError(f"local model {spec.id!r} failed: {type(e).__name__}: {e}"[:2000], model_id=spec.id,
                           retryable=False) from None
    return text, CallMetadata(
        model_id=spec.id, input_tokens=n_in, output_tokens=n_out, cost=spec.cost(n_in, n_out),
        latency_s=time.perf_counter() - t0, provider=spec.provider_name, attempts=1, finish_reason=finish,
    )
