"""Baselines replayed on the same cached questions as the agentic policy. Answers are compared with
``grading.read_answer`` (what the router is shown), never graded."""

from __future__ import annotations

from collections.abc import Sequence

from ..prompting import call_key, select_key
from .state import Question

DEAREST = "gpt-4-1106-preview"


def agree_then_dearest(a: str, b: str, dearest: str = DEAREST, always_dearest: Sequence[str] = ("mbpp",)):
    """Hand-set cascade 1: call two cheap models at once; if their read answers agree take it, else call the dearest
    model (datasets in ``always_dearest``, e.g. code whose answers cannot be read, go straight to it)."""
    def policy(q: Question, turns):
        if not turns:
            return dearest if q.dataset in always_dearest else call_key([a, b])
        called = [m for t in turns for m in t]
        if dearest in called:
            return select_key(dearest)
        ra, rb = q.outcomes[a].read, q.outcomes[b].read
        return select_key(a) if ra is not None and ra == rb else dearest
    policy.__name__ = f"agree({a.split('/')[-1]},{b.split('/')[-1]})->{dearest.split('/')[-1]}"
    return policy


def cheapest_first(chain: Sequence[str], dearest: str = DEAREST, always_dearest: Sequence[str] = ("mbpp",)):
    """Hand-set cascade 2 (FrugalGPT style, one model at a time, cheapest first): the confidence signal of an answer
    is that it agrees with an earlier answer of the chain (the first answer never counts as confident). Stop at the
    first confident answer; when the cheap chain is spent, call the dearest model. Datasets in ``always_dearest``
    go straight to it. Needs up to len(chain) + 1 calls."""
    def policy(q: Question, turns):
        called = [m for t in turns for m in t]
        if not called:
            return dearest if q.dataset in always_dearest else chain[0]
        if called[-1] == dearest:
            return select_key(dearest)
        last = q.outcomes[called[-1]].read
        if last is not None and any(q.outcomes[m].read == last for m in called[:-1]):
            return select_key(called[-1])
        return chain[len(called)] if len(called) < len(chain) else dearest
    policy.__name__ = "cheapest-first(" + ",".join(m.split("/")[-1] for m in chain) + ")"
    return policy


def fixed_single(model_of_dataset: dict[str, str], default: str):
    def policy(q: Question, turns):
        m = model_of_dataset.get(q.dataset, default)
        return select_key(m) if turns else m
    return policy


def per_task_rule(train: Sequence[Question], models: Sequence[str], tau: float):
    """The per-task rule: for each dataset the model maximising training accuracy - tau x normalised mean cost."""
    by: dict[str, list[Question]] = {}
    for q in train:
        by.setdefault(q.dataset, []).append(q)
    choice = {}
    for ds, qs in by.items():
        acc = {m: sum(q.outcomes[m].correct for q in qs) / len(qs) for m in models}
        cost = {m: sum(q.outcomes[m].cost for q in qs) / len(qs) for m in models}
        top = max(cost.values()) or 1.0
        choice[ds] = max(models, key=lambda m: (acc[m] - tau * cost[m] / top, -cost[m]))
    overall = max(models, key=lambda m: sum(q.outcomes[m].correct for q in train))
    return fixed_single(choice, overall)


def oracle(models: Sequence[str]):
    def policy(q: Question, turns):
        if turns:
            return select_key(turns[0][0])
        right = [m for m in models if q.outcomes[m].correct]
        return min(right or models, key=lambda m: q.outcomes[m].cost)
    return policy
