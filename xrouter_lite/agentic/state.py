"""Agentic states and actions over the offline cache: the questions (every model's recorded answer, grade, cost and
what the answer reads as), the actions legal in a state, and what a state shows (the agreement signature)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..grading import read_answer
from ..pool import Pool
from ..prompting import DEFAULT_MAX_CALLS, AgenticCall, call_key, select_key
from ..records import iter_records
from ..reward import RewardConfig


class AgenticConfig(BaseModel):
    """The agentic mode's knobs (one meaning in pairs, evaluation and serving).

    max_calls: most model calls per question (a two-at-once call counts 2). pair_tiers: tiers of the models that may
    be called two at once (the cheap ones: calling two premium models at once is never worth it on a price list).
    reward: R = R_binary x (K - min(lambda x C_total, cost_max)), C_total = all calls' cost over the priciest offered
    model's cost for the question (``normalized``). min_support: an information state seen on fewer training
    questions than this stops calling (its value estimate is too noisy to pay for another call). turn_penalty: a small
    price on each turn of calls after the first (the user waits): between equal rewards, calling two models at once
    beats calling them one after the other."""

    model_config = ConfigDict(extra="forbid")
    max_calls: int = Field(DEFAULT_MAX_CALLS, ge=1, le=4)
    pair_tiers: list[str] = Field(default_factory=lambda: ["budget", "standard"])
    reward: RewardConfig = RewardConfig(k=1.0, lam=0.3, cost_max=0.8)
    min_support: int = Field(8, ge=1)
    turn_penalty: float = Field(0.001, ge=0, description="value lost per extra turn of calls (waiting)")


@dataclass
class QOutcome:
    correct: bool
    cost: float
    response: str | None
    read: str | None
    latency_s: float = 0.0


@dataclass
class Question:
    prompt_id: str
    dataset: str
    task: str | None
    prompt: str
    outcomes: dict[str, QOutcome] = field(default_factory=dict)

    @property
    def top_cost(self) -> float:
        return max((o.cost for o in self.outcomes.values()), default=0.0)

    def call(self, model_id: str) -> AgenticCall:
        o = self.outcomes[model_id]
        return AgenticCall(model_id, o.response, o.cost, o.latency_s, None, o.read)


def load_questions(path: str | Path, pool: Pool, models: Sequence[str] | None = None) -> list[Question]:
    """Every question of a cache with every pool model's valid answer (errored and ungraded records left out; the
    later of two answers kept). ``models`` (default: the pool) limits the models; questions lacking any are dropped,
    so every policy is replayed over the same offered models."""
    want = list(models) if models is not None else list(pool.ids)
    table: dict[str, Question] = {}
    for _ln, r in iter_records(path):
        if not r.ok or r.is_correct is None or r.model_name not in want:
            continue
        q = table.get(r.prompt_id)
        if q is None:
            q = table[r.prompt_id] = Question(r.prompt_id, r.dataset, r.task, r.prompt)
        q.outcomes[r.model_name] = QOutcome(bool(r.is_correct), float(r.cost), r.response, read_answer(r.response, r.task), r.latency_s)
    return [q for q in table.values() if all(m in q.outcomes for m in want)]


def signature(reads: Sequence[str | None]) -> tuple[int, ...]:
    """Which answers agree: each answer's label is the index of the first equal read answer; an unread answer is -1."""
    out = []
    for i, r in enumerate(reads):
        out.append(-1 if r is None else next(j for j in range(i + 1) if reads[j] == r))
    return tuple(out)


def legal_actions(called: Sequence[str], offered: Sequence[str], pairable: set[str], max_calls: int,
                  failed: Sequence[str] = (), calls_counted: int | None = None) -> list[str]:
    """Action keys legal after ``called`` (in offered order): select an earlier answer (not a failed call), call one
    model not yet called, call two pairable models at once (when two calls are left). ``calls_counted``: the calls
    that count against ``max_calls`` (default all of ``called``; the live runner does not count failed ones)."""
    left = max_calls - (len(called) if calls_counted is None else calls_counted)
    rest = [m for m in offered if m not in called]
    acts = [select_key(m) for m in offered if m in called and m not in failed]
    if left >= 1:
        acts += rest
    if left >= 2:
        pr = [m for m in rest if m in pairable]
        acts += [call_key([a, b]) for i, a in enumerate(pr) for b in pr[i + 1 :]]
    return acts
