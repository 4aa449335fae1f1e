"""Routing decisions: one class per routing method, one small interface (in the style of RouteLLM's routers/).

Every router answers ``route(query, offered, tau=None) -> Decision``; ``route_batch`` does many at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .pool import ModelSpec


@dataclass
class Decision:
    """One routing decision.

    model_id: the chosen model. scores: every offered model's score (higher is better; log-probabilities for the
    LoRA router). latency_s: time the decision took. valid: False when the router's own answer was unusable and
    ``model_id`` is the configured default (``invalid_reason`` says why). raw: the generated text, if any.
    """

    model_id: str
    scores: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0
    valid: bool = True
    invalid_reason: str | None = None
    raw: str | None = None

    def ranked(self) -> list[str]:
        """Offered models by descending score, the chosen one first (the fallback order when serving)."""
        rest = sorted((m for m in self.scores if m != self.model_id), key=lambda m: -self.scores[m])
        return [self.model_id, *rest]


class BaseRouter:
    """The interface. ``name`` appears in reports."""

    name: str = "router"

    def route(
        self, query: str | Sequence[dict[str, Any]], offered: Sequence[ModelSpec], tau: float | None = None
    ) -> Decision:
        raise NotImplementedError

    def route_batch(
        self,
        queries: Sequence[str | Sequence[dict[str, Any]]],
        offered: Sequence[Sequence[ModelSpec]],
        tau: float | None = None,
    ) -> list[Decision]:
        return [self.route(q, o, tau) for q, o in zip(queries, offered, strict=True)]
