"""Exact values of agentic states from the offline cache (no sampling).

Two exact quantities, both by search over every continuation (pool size x depth <= max_calls):

- ``hindsight_values(q)``: for one question, the value of every reachable set of calls when the grades are known
  (V*(S) = max(select the best called answer, call more)). V*(root) is the oracle's reward; it says how much any
  policy could get, but not what to do: in hindsight the best trajectory never escalates.
- ``InfoValues``: the values a router can act on. A state shows the task's question, the models called and their
  answers; on the cache we group the training questions of one dataset by what a state shows of them (which models
  were called, which of their read answers agree: ``state.signature``) and compute, by backward induction over that
  tree, the exact mean reward of every action and continuation over the questions in each group. The greedy action
  of these values is the table policy (also a baseline: the best cascade on agreement, per task); the DPO pairs
  teach the router these values' preferences at each decision state of its trajectories.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ..prompting import action_models, call_key, is_select_key, select_key
from .state import AgenticConfig, Question, legal_actions, signature


def trajectory_reward(q: Question, called: Sequence[str], final: str | None, cfg: AgenticConfig) -> float:
    """R = R_binary(final answer) x (K - min(lambda x C_total, cost_max)), C_total normalised by the question's
    priciest offered answer."""
    if final is None or not q.outcomes[final].correct:
        return 0.0
    r = cfg.reward
    top = q.top_cost
    c = sum(q.outcomes[m].cost for m in called) / top if top > 0 else 0.0
    return r.k - min(r.lam * c, r.cost_max)


def hindsight_values(q: Question, offered: Sequence[str], cfg: AgenticConfig, pairable: set[str] | None = None) -> dict[frozenset, float]:
    """V*(S) for every reachable set S of called models (grades known). Keys: frozensets of model ids."""
    pairable = pairable if pairable is not None else set(offered)
    memo: dict[frozenset, float] = {}

    def v(S: frozenset) -> float:
        if S in memo:
            return memo[S]
        called = [m for m in offered if m in S]
        best = max((trajectory_reward(q, called, m, cfg) for m in called), default=0.0)
        for a in legal_actions(called, offered, pairable, cfg.max_calls):
            if not is_select_key(a):
                best = max(best, v(S | set(action_models(a))) - (cfg.turn_penalty if called else 0.0))
        memo[S] = best
        return best

    v(frozenset())
    return memo


@dataclass
class Node:
    value: float
    action: str
    n: int
    q: dict[str, float]


class InfoValues:
    """Exact action values over information states (dataset, called models, agreement signature), fitted on the
    training questions. ``act`` is the table policy."""

    def __init__(self, questions: Sequence[Question], offered: Sequence[str], pairable: set[str], cfg: AgenticConfig):
        self.offered = list(offered)
        self.pairable = set(pairable)
        self.cfg = cfg
        self.by_ds: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            self.by_ds[q.dataset].append(q)
        self.nodes: dict[tuple, Node] = {}
        self.mean_cost = {m: sum(q.outcomes[m].cost for q in questions) / max(1, len(questions)) for m in offered}
        for ds, qs in self.by_ds.items():
            self._solve(ds, qs, ())

    @staticmethod
    def sig(q: Question, called: Sequence[str]) -> tuple[int, ...]:
        return signature([q.outcomes[m].read for m in called])

    def _key(self, ds: str, called: Sequence[str], sig: tuple) -> tuple:
        return (ds, tuple(called), sig)

    def _solve(self, ds: str, qs: list[Question], called: tuple[str, ...]) -> float:
        sig = self.sig(qs[0], called) if called else ()
        key = self._key(ds, called, sig)
        if key in self.nodes:
            return self.nodes[key].value
        n = len(qs)
        qv: dict[str, float] = {}
        acts = legal_actions(called, self.offered, self.pairable, self.cfg.max_calls)
        for a in acts:
            if is_select_key(a):
                m = action_models(a)[0]
                qv[a] = sum(trajectory_reward(q, called, m, self.cfg) for q in qs) / n
            elif not called or n >= self.cfg.min_support:
                new = [m for m in self.offered if m in called or m in action_models(a)]
                parts: dict[tuple, list[Question]] = defaultdict(list)
                for q in qs:
                    parts[self.sig(q, new)].append(q)
                qv[a] = sum(len(p) * self._solve(ds, p, tuple(new)) for p in parts.values()) / n
                if called:
                    qv[a] -= self.cfg.turn_penalty
        # ties: the cheaper action (select before call; then by mean cost)
        best = max(qv, key=lambda a: (round(qv[a], 12), -self.action_cost(a)))
        self.nodes[key] = Node(qv[best], best, n, qv)
        return qv[best]

    def action_cost(self, a: str) -> float:
        return 0.0 if is_select_key(a) else sum(self.mean_cost[m] for m in action_models(a))

    def node(self, q: Question, called: Sequence[str]) -> Node | None:
        called = [m for m in self.offered if m in called]
        return self.nodes.get(self._key(q.dataset, called, self.sig(q, called) if called else ()))

    def act(self, q: Question, turns: Sequence[Sequence[str]]) -> str:
        called = [m for t in turns for m in t]
        nd = self.node(q, called)
        if nd is not None:
            return nd.action
        return fallback_select(q, called, self.mean_cost) if called else min(self.offered, key=self.mean_cost.get)


def fallback_select(q: Question, called: Sequence[str], mean_cost: dict[str, float]) -> str:
    """For a state never seen in training: the majority read answer, ties to the dearest (usually strongest) model."""
    reads = [q.outcomes[m].read for m in called]
    def votes(m):
        r = q.outcomes[m].read
        return reads.count(r) if r is not None else 0
    return select_key(max(called, key=lambda m: (votes(m), mean_cost.get(m, 0.0))))
