"""The live agentic policy: a self-contained async runner (no server code in here).

    result = await run_agentic(messages, offered, call, score, tau=0.0, max_calls=3, max_cost_usd=0.01,
                               estimate=lambda spec: usd)

- ``call(model_id, messages) -> (text, cost_usd, latency_s)`` (async) calls one model; an exception is a failed call.
- ``score(prompt, actions) -> [logp, ...]`` (sync, run in a thread) scores the legal actions of the rendered state
  (``prompting.build_agentic_prompt``); the decision is ``policy.decide_action`` (logp - tau x normalised cost):
  the same rule as the replay. Or ``decide(turns, actions) -> action`` (the cluster table, ``table.py``): the
  same function as its replay.
- Two models chosen at once are called in parallel (``asyncio.gather``).
- Budget: an action whose estimated cost (``estimate(spec)``, USD) would take the spent total over ``max_cost_usd``
  is not legal, so escalation stops before overspending; actual costs are what is counted.
- A failing model is recorded in ``call_history`` with its error, shown to the router as a failed call, never
  re-called and never selected; the trajectory goes on (like a fallback). Failed calls do not use up ``max_calls``.
- The answers are read (``grading.read_answer``) and shown; nothing is graded.
Returns ``AgenticResult``: the chosen answer, ``call_history`` (every call: model, cost, latency, error, turn),
``routing_strategy`` (``direct``: one call answered; ``select``: models called at once, one answer picked;
``escalate``: called again after reading answers), ``turns_used``, ``total_cost``, ``stop_reason`` (``selected``;
``budget``: the router selected while calls it could have made did not fit the budget; ``all_failed``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..grading import read_answer
from ..pool import ModelSpec
from ..prompting import (
    DEFAULT_MAX_CALLS, AgenticCall, RouterPrompt, action_models, build_agentic_prompt, is_select_key,
)
from .policy import decide_action
from .state import legal_actions

CallFn = Callable[[str, list[dict[str, Any]]], Awaitable[tuple[str, float, float]]]
ScoreFn = Callable[[RouterPrompt, list[str]], Sequence[float]]
# decide(turns so far, legal actions) -> action: a policy that decides without scoring prompts (the cluster table,
# ``table.ClusterTable.decide``); ``score`` is then not used
DecideFn = Callable[[list[list[AgenticCall]], list[str]], str]


class AllCallsFailedError(RuntimeError):
    def __init__(self, msg: str, result: AgenticResult):
        super().__init__(msg)
        self.result = result


class BudgetError(RuntimeError):
    """No model fits the budget before the first call."""


@dataclass
class AgenticResult:
    answer: str | None
    model_used: str | None
    call_history: list[dict[str, Any]] = field(default_factory=list)
    routing_strategy: str = "direct"
    turns_used: int = 0
    total_cost: float = 0.0
    stop_reason: str = "selected"
    decisions: list[dict[str, Any]] = field(default_factory=list)


def _fallback_pick(calls: list[AgenticCall]) -> AgenticCall:
    ok = [c for c in calls if c.error is None]
    reads = [c.read for c in ok]
    return max(ok, key=lambda c: ((reads.count(c.read) if c.read is not None else 0), ok.index(c)))


async def run_agentic(
    messages: Sequence[dict[str, Any]],
    offered: Sequence[ModelSpec],
    call: CallFn,
    score: ScoreFn,
    *,
    tau: float = 0.0,
    max_calls: int = DEFAULT_MAX_CALLS,
    max_cost_usd: float | None = None,
    estimate: Callable[[ModelSpec], float] | None = None,
    costs: Mapping[str, float] | None = None,
    pair_tiers: Sequence[str] = ("budget", "standard"),
    decide: DecideFn | None = None,
) -> AgenticResult:
    offered = list(offered)
    ids = [s.id for s in offered]
    est = {s.id: (estimate(s) if estimate else 0.0) for s in offered}
    if costs is None:  # normalised expected cost per model (the tau knob's c)
        top = max(est.values()) or 1.0
        costs = {m: est[m] / top for m in ids}
    pairable = {s.id for s in offered if s.tier in pair_tiers}
    res = AgenticResult(None, None)
    turns: list[list[AgenticCall]] = []
    called: list[str] = []
    failed: list[str] = []
    spent = 0.0
    budget = float("inf") if max_cost_usd is None else float(max_cost_usd)
    for _ in range(2 * max_calls + len(ids) + 1):
        all_calls = [c for t in turns for c in t]
        n_ok = sum(c.error is None for c in all_calls)
        acts = legal_actions(called, ids, pairable, max_calls, failed, calls_counted=n_ok)
        n_legal = len(acts)
        acts = [a for a in acts if is_select_key(a) or spent + sum(est[m] for m in action_models(a)) <= budget + 1e-15]
        blocked = n_legal - len(acts)
        if n_ok == 0:
            acts = [a for a in acts if not is_select_key(a)]
        if not acts:
            res.stop_reason = "budget" if n_ok else ("budget" if not all_calls else "all_failed")
            break
        if len(acts) == 1 and is_select_key(acts[0]):
            a = acts[0]
        elif decide is not None:
            t0 = time.perf_counter()
            a = await asyncio.to_thread(decide, turns, acts)
            if a not in acts:
                raise ValueError(f"the agentic policy chose {a!r}, not among the legal actions {acts}")
            res.decisions.append({"action": a, "legal": len(acts), "latency": round(time.perf_counter() - t0, 6)})
        else:
            prompt = build_agentic_prompt(list(messages), offered, turns, max_calls)
            t0 = time.perf_counter()
            lps = await asyncio.to_thread(score, prompt, acts)
            a = decide_action(dict(zip(acts, map(float, lps))), costs, tau)
            res.decisions.append({"action": a, "legal": len(acts), "latency": round(time.perf_counter() - t0, 6)})
        if is_select_key(a):
            m = action_models(a)[0]
            c = next(c for c in all_calls if c.model_id == m)
            res.answer, res.model_used = c.response, m
            res.stop_reason = "budget" if blocked else "selected"  # "budget": further calls would have overspent
            break
        models = action_models(a)
        called += models

        async def one(m: str) -> AgenticCall:
            t = time.perf_counter()
            try:
                text, cost, lat = await call(m, list(messages))
                return AgenticCall(m, text, float(cost), float(lat), None, read_answer(text))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 (a failing model is skipped like any fallback)
                return AgenticCall(m, None, 0.0, time.perf_counter() - t, f"{type(e).__name__}: {e}"[:300])

        turn = list(await asyncio.gather(*(one(m) for m in models)))
        for c in turn:
            spent += c.cost
            if c.error is not None:
                failed.append(c.model_id)
            res.call_history.append({"model_id": c.model_id, "cost": c.cost, "latency": round(c.latency_s, 6),
                                     "error": c.error, "turn": len(turns) + 1, "answer_read": c.read})
        turns.append(turn)
    all_calls = [c for t in turns for c in t]
    res.total_cost = spent
    res.turns_used = len(turns)
    if res.model_used is None:
        if not any(c.error is None for c in all_calls):
            if not all_calls:
                raise BudgetError("no offered model fits the budget")
            raise AllCallsFailedError("every model call failed: " + "; ".join(f"{c.model_id}: {c.error}" for c in all_calls), res)
        c = _fallback_pick(all_calls)  # stopped by the budget before selecting: the best-supported answer so far
        res.answer, res.model_used = c.response, c.model_id
    ok_turns = [t for t in turns if any(c.error is None for c in t)]
    if len(ok_turns) > 1:
        res.routing_strategy = "escalate"
    elif sum(c.error is None for c in all_calls) > 1:
        res.routing_strategy = "select"
    else:
        res.routing_strategy = "direct"
    return res
