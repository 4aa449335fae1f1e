"""Replay of any agentic policy on cached questions: every call's answer and cost come from the cache, so a
trajectory costs nothing to evaluate and is exact."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..prompting import action_models, is_select_key
from .state import Question

Policy = Callable[[Question, list[list[str]]], str]


@dataclass
class Trajectory:
    prompt_id: str
    dataset: str
    turns: list[list[str]] = field(default_factory=list)
    final: str | None = None
    correct: bool = False
    cost: float = 0.0

    @property
    def n_calls(self) -> int:
        return sum(len(t) for t in self.turns)

    @property
    def strategy(self) -> str:
        """direct: one call, its answer returned; select: two models called at once, one answer picked;
        escalate: called again after reading answers."""
        if len(self.turns) > 1:
            return "escalate"
        return "select" if self.n_calls > 1 else "direct"


def replay(q: Question, policy: Policy, max_calls: int) -> Trajectory:
    t = Trajectory(q.prompt_id, q.dataset)
    for _ in range(max_calls + 1):
        a = policy(q, t.turns)
        if is_select_key(a):
            t.final = action_models(a)[0]
            break
        models = action_models(a)
        if sum(len(x) for x in t.turns) + len(models) > max_calls or any(m in x for x in t.turns for m in models):
            raise ValueError(f"policy chose an illegal action {a!r} after {t.turns}")
        t.turns.append(models)
    if t.final is None:  # a policy that never selects: its last call's answer
        t.final = t.turns[-1][-1]
    t.cost = sum(q.outcomes[m].cost for x in t.turns for m in x)
    t.correct = q.outcomes[t.final].correct
    return t


def summarise(trajs: Sequence[Trajectory]) -> dict:
    """Accuracy, total cost of all calls, calls per question, share escalated: overall and per dataset."""
    def one(ts):
        n = max(1, len(ts))
        strat = defaultdict(int)
        for t in ts:
            strat[t.strategy] += 1
        return {
            "n": len(ts), "accuracy": sum(t.correct for t in ts) / n, "total_cost": sum(t.cost for t in ts),
            "calls_per_question": sum(t.n_calls for t in ts) / n, "share_escalated": strat["escalate"] / n,
            "strategies": {k: v / n for k, v in sorted(strat.items())},
        }
    out = one(trajs)
    by = defaultdict(list)
    for t in trajs:
        by[t.dataset].append(t)
    out["per_dataset"] = {d: one(ts) for d, ts in sorted(by.items())}
    return out
