"""Model pool registry: the single source of truth for model ids, litellm strings and prices.

A pool file is YAML::

    models:
      gpt-4o-mini:
        litellm_model: gpt-4o-mini
        input_price: 0.15        # USD per 1M input tokens
        output_price: 0.60       # USD per 1M output tokens
        context_window: 128000
        max_output_tokens: 16384
        tier: budget
        capabilities: [general, math]
        description: Small, fast, cheap OpenAI model.

Optional per model: ``api_base`` (any OpenAI-compatible server, e.g. Ollama), ``api_key_env`` (name of the
environment variable holding its key), ``reasoning`` (accepts only temperature 1.0), ``hf_model`` (a local
Hugging Face model run with transformers instead of an API), ``provider``; for provider batch jobs
(``xrouter-lite cache --batch``) ``batch_discount`` (fraction off, e.g. 0.5) or ``batch_input_price`` /
``batch_output_price``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import ConfigError, packaged_config, read_yaml, validate_config

Tier = Literal["budget", "standard", "premium", "specialized", "local"]


class PoolError(ConfigError):
    """A pool file is malformed; the message names the file and the key path (``models.ID.field``)."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    litellm_model: str
    input_price: float = Field(ge=0, allow_inf_nan=False, description="USD per 1M input tokens")
    output_price: float = Field(ge=0, allow_inf_nan=False, description="USD per 1M output tokens")
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    tier: Tier = "standard"
    capabilities: list[str] = Field(default_factory=list)
    description: str = ""
    api_base: str | None = None
    api_key_env: str | None = None
    reasoning: bool = False
    provider: str | None = None
    hf_model: str | None = None
    # provider batch API prices (xrouter_lite.batch): explicit batch prices, or a discount off the list prices
    batch_input_price: float | None = Field(None, ge=0, description="USD per 1M input tokens in a batch job")
    batch_output_price: float | None = Field(None, ge=0, description="USD per 1M output tokens in a batch job")
    batch_discount: float | None = Field(None, ge=0, lt=1, description="fraction off the list prices in a batch job (0.5: half price)")

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/\-]*", v):
            raise ValueError(f"model id {v!r} may hold only letters, digits, '.', '_', '-' and '/'")
        return v

    @property
    def tool_name(self) -> str:
        return tool_name(self.id)

    @property
    def provider_name(self) -> str:
        if self.provider:
            return self.provider
        if self.hf_model:
            return "local-hf"
        if "/" in self.litellm_model:
            return self.litellm_model.split("/", 1)[0]
        return "openai"

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one call, from the pool's prices and the provider's token usage."""
        return input_tokens / 1e6 * self.input_price + output_tokens / 1e6 * self.output_price

    @property
    def has_batch_price(self) -> bool:
        return self.batch_discount is not None or (self.batch_input_price is not None and self.batch_output_price is not None)

    def batch_cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for one call made through the provider's batch API (``batch_*_price``, else ``batch_discount``)."""
        if self.batch_input_price is not None and self.batch_output_price is not None:
            return input_tokens / 1e6 * self.batch_input_price + output_tokens / 1e6 * self.batch_output_price
        if self.batch_discount is None:
            raise ValueError(f"model {self.id!r} has no batch price: set batch_discount or batch_input_price and "
                             "batch_output_price in the pool file")
        return self.cost(input_tokens, output_tokens) * (1.0 - self.batch_discount)


def tool_name(model_id: str) -> str:
    """The router's action name for a model: ``call_<id>`` with every non-alphanumeric turned into ``_``.

    ``gpt-4.1`` -> ``call_gpt_4_1`` (the reference system's rule for ``-`` and ``.``; ``/`` is treated alike).
    """
    return "call_" + re.sub(r"[^A-Za-z0-9_]", "_", model_id)


class Pool:
    """An ordered, validated set of models."""

    def __init__(self, models: list[ModelSpec], source: str = "<memory>"):
        self.source = source
        self._models: dict[str, ModelSpec] = {}
        self._by_tool: dict[str, ModelSpec] = {}
        for m in models:
            if m.id in self._models:
                raise PoolError(f"{source}: duplicate model id {m.id!r}")
            if m.tool_name in self._by_tool:
                other = self._by_tool[m.tool_name].id
                raise PoolError(f"{source}: models {other!r} and {m.id!r} map to the same action name {m.tool_name!r}")
            self._models[m.id] = m
            self._by_tool[m.tool_name] = m

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self):
        return iter(self._models.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    @property
    def ids(self) -> list[str]:
        return list(self._models)

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._models[model_id]
        except KeyError:
            raise KeyError(f"model {model_id!r} is not in the pool {self.source} (known: {', '.join(self._models)})") from None

    def by_tool_name(self, name: str) -> ModelSpec | None:
        return self._by_tool.get(name)

    def subset(self, ids: list[str]) -> list[ModelSpec]:
        return [self.get(i) for i in ids]

    def cheapest(self, ids: list[str] | None = None) -> ModelSpec:
        specs = self.subset(ids) if ids else list(self)
        return min(specs, key=lambda m: (m.input_price + m.output_price, m.id))


def load_pool(path: str | Path) -> Pool:
    """Load and validate a pool YAML file. Errors (``PoolError``, a ``config.ConfigError``) name the file and the
    key path, e.g. ``pool.yaml: models.gpt-4o.input_price: ...``; a model id given twice is refused.

    A missing ``configs/NAME.yaml`` is looked up among the configs shipped with the package (an installed wheel
    has no ``configs/`` folder beside it)."""
    path = packaged_config(path)
    data = read_yaml(path, "pool", error=PoolError)
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict) or not data["models"]:
        raise PoolError(path, "expected a top-level 'models:' mapping of model id -> fields")
    extra = set(data) - {"models", "name", "description"}
    if extra:
        raise PoolError(path, f"unknown key(s) {sorted(map(str, extra))} (allowed: models, name, description)",
                        key=str(sorted(map(str, extra))[0]))
    specs = []
    for model_id, fields in data["models"].items():
        where = f"models.{model_id}"
        if not isinstance(fields, dict):
            raise PoolError(path, "expected a mapping of fields", key=where)
        if "id" in fields:
            raise PoolError(path, "the model id is the key above it; no 'id' field", key=f"{where}.id")
        for required in ("input_price", "output_price"):
            if required not in fields:
                raise PoolError(path, "missing price (USD per 1M tokens)", key=f"{where}.{required}")
        specs.append(validate_config(ModelSpec, {"id": str(model_id), **fields}, path, prefix=where, error=PoolError))
    return Pool(specs, source=str(path))
