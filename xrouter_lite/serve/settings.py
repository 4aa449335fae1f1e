"""``ServeSettings``: everything the server is configured with (``configs/serve.yaml`` shows each with its default)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator


class ServeSettings(BaseModel):
    """Everything the server is configured with (``configs/serve.yaml`` shows each with its default)."""

    model_config = ConfigDict(extra="forbid")

    router: str | None = Field(
        None, description="Router: knn, cluster, logistic, cheapest, strongest, random, lora, lora:DIR or a router folder "
        "(default: lora with 'adapter')")
    train_cache: Path | None = Field(None, description="Training cache of knn/cluster/strongest (and the cost vector)")
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
    decision_log: Path | None = Field(
        None, description="Append one JSON line per routed request to this file (docs/SERVING.md; None: no log)")
    decision_log_messages: bool = Field(False, description="Also write each request's messages into the decision log")
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
        """Settings from a YAML file; ``overrides`` that are not None replace its values. Read by the one config
        loader of every stage (``config.load_config``): unknown keys refused, errors as ``FILE: key: problem``."""
        from ..config import load_config

        return load_config(cls, path, overrides, what="serve config")


def validation_text(e: ValidationError) -> str:
    """A pydantic error as one line: ``key.path: problem; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )
