"""Route and call in-process, no server (RouteLLM's ``Controller``)::

    from xrouter_lite import Controller
    client = Controller(router="knn", pool="configs/pool_routerbench.yaml", train_cache="runs/example/offline_cache.jsonl")
    r = client.chat.completions.create(model="router-0.5", messages=[{"role": "user", "content": "2+2?"}])
    r.choices[0].message.content, r.router_metadata["model_used"]

``model``: ``"router"`` (the router's own tau, or ``Controller(tau=...)``), ``"router-<tau>"`` (that tau), or a
pool model id (no routing). ``models=[...]`` offers a subset of the pool. The chosen model is called through
litellm (``litellm.completion`` / ``acompletion``) with its pool entry's ``litellm_model``, ``api_base`` and key
(``api_key_env``); every other keyword (``temperature``, ``max_tokens``, ``tools``, ``stream`` ...) goes to
litellm unchanged. The answer is litellm's ``ModelResponse`` with ``router_metadata`` added: ``model_used``,
``tau``, ``candidates`` (offered models by descending score), ``scores`` and ``costs`` (what tau multiplied),
``routing_strategy`` (``delegate_to_model`` or ``bypass``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

from .pool import ModelSpec, Pool, load_pool
from .routing import Decision, Router

_TAU_RE = re.compile(r"^router-(.+)$")


class _Completions:
    def __init__(self, ctl: Controller):
        self._ctl = ctl

    def create(self, *, model: str, messages: Sequence[dict[str, Any]], models: Sequence[str] | None = None,
               **kwargs: Any):
        spec, meta = self._ctl.choose(model, messages, models)
        litellm = self._ctl._litellm()
        resp = litellm.completion(model=spec.litellm_model, messages=list(messages), **self._ctl.call_kwargs(spec),
                                  **kwargs)
        return self._ctl._attach(resp, meta)

    async def acreate(self, *, model: str, messages: Sequence[dict[str, Any]], models: Sequence[str] | None = None,
                      **kwargs: Any):
        import asyncio

        spec, meta = await asyncio.to_thread(self._ctl.choose, model, messages, models)
        litellm = self._ctl._litellm()
        resp = await litellm.acompletion(model=spec.litellm_model, messages=list(messages),
                                         **self._ctl.call_kwargs(spec), **kwargs)
        return self._ctl._attach(resp, meta)


class _Chat:
    def __init__(self, ctl: Controller):
        self.completions = _Completions(ctl)


class Controller:
    """A router plus its pool, with an OpenAI-style ``chat.completions.create`` that routes, then calls.

    router: a ``Router`` or anything ``Router.load`` takes (name, ``lora:DIR``, folder, mapping); ``pool``: a
    pool YAML or ``Pool`` (default: the router's); ``tau``: the knob of model ``"router"`` (default: the
    router's own); other keywords go to ``Router.load`` (``train_cache=``, ``device=`` ...)."""

    def __init__(self, router: Router | Any, pool: str | Pool | None = None, tau: float | None = None, **load: Any):
        if isinstance(router, Router):
            self.router = router
            if pool is not None:
                self.router.pool = pool if isinstance(pool, Pool) else load_pool(pool)
        else:
            self.router = Router.load(router, pool=pool, **load)
        if self.router.pool is None:
            raise ValueError("the Controller needs a pool: Controller(router, pool='configs/pool.yaml')")
        self.pool: Pool = self.router.pool
        self.tau = tau
        self.chat = _Chat(self)

    def route(self, messages: Sequence[dict[str, Any]] | str, models: Sequence[str] | None = None,
              tau: float | None = None) -> Decision:
        """The routing decision alone (no call)."""
        return self.router.route(messages, models, self.tau if tau is None else tau)

    def choose(self, model: str, messages, models: Sequence[str] | None) -> tuple[ModelSpec, dict[str, Any]]:
        if model in self.pool:
            return self.pool.get(model), {"model_used": model, "routing_strategy": "bypass", "tau": None,
                                          "candidates": [], "scores": {}, "costs": {}}
        if model == "router":
            tau = self.tau
        else:
            m = _TAU_RE.match(model)
            if not m:
                raise ValueError(f"model {model!r}: use 'router', 'router-<tau>' or a pool model ({', '.join(self.pool.ids)})")
            try:
                tau = float(m.group(1))
            except ValueError:
                tau = math.nan
            if not math.isfinite(tau):
                raise ValueError(f"model {model!r}: the cost knob after 'router-' must be a finite number")
            if not self.router.takes_tau:
                raise ValueError(f"model {model!r}: router {self.router.name!r} has no cost knob; use model 'router'")
        d = self.router.route(messages, models, tau)
        if not d.valid:
            raise RuntimeError(f"router {self.router.name!r} gave no usable decision: {d.invalid_reason}")
        used_tau = self.router.tau if tau is None else tau
        return self.pool.get(d.model_id), {
            "model_used": d.model_id, "routing_strategy": "delegate_to_model", "tau": used_tau,
            "candidates": [{"model_id": m, "score": d.scores.get(m)} for m in d.ranked()],
            "scores": dict(getattr(d, "base_scores", None) or d.scores), "costs": dict(d.costs),
        }

    @staticmethod
    def call_kwargs(spec: ModelSpec) -> dict[str, Any]:
        """litellm's connection arguments for a pool model: its ``api_base`` and key."""
        from .llm import PLACEHOLDER_KEY

        out: dict[str, Any] = {}
        if spec.api_base:
            out["api_base"] = spec.api_base
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise RuntimeError(f"model {spec.id!r}: environment variable {spec.api_key_env} (its api_key_env) is not set")
            out["api_key"] = key
        elif spec.api_base:
            out["api_key"] = PLACEHOLDER_KEY
        return out

    @staticmethod
    def _litellm():
        from .llm import configure_litellm

        return configure_litellm()

    @staticmethod
    def _attach(resp, meta: dict[str, Any]):
        try:
            resp.router_metadata = meta
        except (AttributeError, TypeError, ValueError):  # a stream wrapper: metadata on the side
            setattr(resp, "_router_metadata", meta)
        return resp
