"""Budgets: the pre-call cost estimate and the server's running ledger (docs/SERVING.md "Budgets")."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..pool import ModelSpec


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
        self.reserved += max(0.0, amount)

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - max(0.0, reserved))
        self.spent += max(0.0, actual)


def output_tokens_asked(params: dict[str, Any]) -> int | None:
    """The request's ``max_completion_tokens`` (or else ``max_tokens``) when it is a positive integer, else None."""
    for k in ("max_completion_tokens", "max_tokens"):
        v = params.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def estimate_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Prompt tokens assumed for budgets: characters / 4 + 16 per message (text contents, other contents and tool
    calls as their JSON)."""
    chars = 0
    for m in messages:
        c = m.get("content")
        chars += len(c) if isinstance(c, str) else len(json.dumps(c, default=str)) if c is not None else 0
        if m.get("tool_calls"):
            chars += len(json.dumps(m["tool_calls"], default=str))
    return max(1, chars // 4 + 16 * len(messages))


def estimate_costs(specs: Sequence[ModelSpec], messages: Sequence[dict[str, Any]], params: dict[str, Any],
                   expected_output_tokens: int) -> dict[str, float]:
    """The pre-call cost estimate of each model, used for budgets: pool prices x (``estimate_prompt_tokens`` input
    tokens, tool definitions included; the request's output-token cap or else ``expected_output_tokens``, at most
    the model's ``max_output_tokens``). Never negative."""
    tools = params.get("tools")
    in_tok = estimate_prompt_tokens(messages) + (len(json.dumps(tools, default=str)) // 4 if tools else 0)
    out_tok = output_tokens_asked(params) or expected_output_tokens
    return {s.id: max(0.0, s.cost(in_tok, max(0, min(s.max_output_tokens, out_tok)))) for s in specs}


def estimate_cost(spec: ModelSpec, messages: Sequence[dict[str, Any]], params: dict[str, Any],
                  expected_output_tokens: int) -> float:
    """``estimate_costs`` of one model."""
    return estimate_costs([spec], messages, params, expected_output_tokens)[spec.id]
