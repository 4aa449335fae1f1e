"""The OpenAI chat-completions protocol as this server speaks it: the request model, which fields are passed on,
refused or read by the server, and the OpenAI-style error (docs/SERVING.md "Request fields")."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from ..llm import REQUEST_KNOBS
from .settings import validation_text

ROUTER_MODEL = "router"

# Fields the server reads itself (``models`` and ``max_cost_usd`` are its extras: ``extra_body=`` in the client).
SERVER_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "n", "models", "max_cost_usd",
                           "max_calls"})  # max_calls: model "router-agentic" only (xrouter_lite/agentic/serve_hook.py)
# Fields passed on to the chosen model unchanged (llm's list of request knobs, less those the server refuses).
PASS_FIELDS = REQUEST_KNOBS - {"n", "logprobs", "top_logprobs"}
# Fields refused with a reason; any other field not in SERVER_FIELDS or PASS_FIELDS is refused as unknown.
REFUSED_FIELDS = {
    "logprobs": "log-probabilities are not returned by this server",
    "top_logprobs": "log-probabilities are not returned by this server",
    "functions": "the legacy 'functions' field is not supported: send 'tools'",
    "function_call": "the legacy 'function_call' field is not supported: send 'tool_choice'",
}
TOOL_CAPABILITY = "tool_calling"

Finite = Annotated[float, Field(allow_inf_nan=False)]
PositiveInt = Annotated[StrictInt, Field(ge=1)]


class ApiError(Exception):
    """An error answered as OpenAI-style JSON ``{"error": {"message", "type", "param", "code"}}``."""

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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise ValueError(f"unknown role {v!r} (system, developer, user, assistant, tool)")
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    """A chat-completions request as the server validates it. Fields in ``PASS_FIELDS`` go to the chosen model
    unchanged (type-checked here so that a bad value is a 400, not an upstream failure)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    models: list[str] | None = Field(None, description="router only: offer these pool models")
    max_cost_usd: Finite | None = Field(None, ge=0, description="this request's budget in USD")
    # passed on
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Finite | None = None
    top_p: Finite | None = None
    presence_penalty: Finite | None = None
    frequency_penalty: Finite | None = None
    seed: StrictInt | None = None
    top_k: StrictInt | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    logit_bias: dict[str, Finite] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, t in enumerate(v or []):
            fn = t.get("function")
            if t.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        return v

    @property
    def wants_tools(self) -> bool:
        return bool(self.tools) or self.tool_choice is not None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self) -> dict[str, Any]:
        """What the chosen model is sent besides the messages (exactly as the client sent it)."""
        return self.model_dump(exclude_none=True, include=set(PASS_FIELDS))

    def plain_messages(self) -> list[dict[str, Any]]:
        """The messages as the client sent them (what it left out stays out; an explicit null stays null)."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]


def parse_chat_request(data: dict[str, Any]) -> ChatRequest:
    """The validated request, or ``ApiError(400)`` naming the field (OpenAI's error format)."""
    for k in ("messages", "model"):
        if k not in data:
            raise ApiError(400, f"missing required parameter: '{k}'", param=k, code="missing_required_parameter")
    for k, v in data.items():
        if k in SERVER_FIELDS or k in PASS_FIELDS:
            continue
        if k in ("logprobs", "top_logprobs") and not v:
            continue  # logprobs: false asks for nothing
        reason = REFUSED_FIELDS.get(k, "unknown or unsupported parameter")
        raise ApiError(400, f"'{k}' is not supported by this server: {reason} (supported: "
                       f"{', '.join(sorted(SERVER_FIELDS | PASS_FIELDS))}; see docs/SERVING.md)", param=k,
                       code="unsupported_parameter")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise ApiError(400, f"invalid request: {validation_text(e)}", param=param, code="invalid_value") from None
    if req.n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options",
                       code="invalid_value")
    return req


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def decode_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (NaN and Infinity literals are refused), or ``ApiError(400)``."""
    if not body:
        raise ApiError(400, "empty request body: expected a JSON object", code="invalid_json")

    try:
        data = _DECODER.decode(body.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, json.JSONDecodeError):
            msg = f"malformed JSON in the request body: {e.msg} at position {e.pos}"
        elif isinstance(e, UnicodeDecodeError):
            msg = "the request body is not UTF-8 text"
        elif isinstance(e, RecursionError):
            msg = "the request body is nested too deeply"
        else:
            msg = f"malformed JSON in the request body: {e}"
        raise ApiError(400, msg, code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


def finite_or_none(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
