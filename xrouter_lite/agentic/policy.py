"""The learned agentic policy: the router scores every legal action of a state (log-probability of the action's
tokens after the rendered state, ``prompting.build_agentic_prompt``) and takes ``argmax logp(a) - tau x c(a)``,
c(a) the normalised expected cost of the models the action calls (0 for select_response). ONE rule, used by the
replay (from stored scores) and by the live runner (scores computed on the spot)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..pool import Pool
from ..prompting import RouterPrompt, action_models, build_agentic_prompt, build_router_prompt, is_select_key
from .state import AgenticConfig, Question, legal_actions

# score_fn(prompts, actions per prompt) -> log-probabilities per prompt and action
ScoreFn = Callable[[Sequence[RouterPrompt], Sequence[Sequence[str]]], list[list[float]]]


def state_key(turns: Sequence[Sequence[str]]) -> str:
    return "|".join(" + ".join(t) for t in turns)


def action_cost(a: str, costs: Mapping[str, float]) -> float:
    return 0.0 if is_select_key(a) else sum(float(costs.get(m, 0.0)) for m in action_models(a))


def decide_action(logps: Mapping[str, float], costs: Mapping[str, float], tau: float) -> str:
    """argmax_a logp(a) - tau x c(a); ties to the cheaper action, then the earlier one."""
    order = {a: i for i, a in enumerate(logps)}
    return max(logps, key=lambda a: (logps[a] - tau * action_cost(a, costs), -action_cost(a, costs), -order[a]))


class ScoredPolicy:
    """Replays the router's decisions from stored scores ``{prompt_id: {state_key: {action: logp}}}``."""

    def __init__(self, scores: Mapping[str, Mapping[str, Mapping[str, float]]], costs: Mapping[str, float], tau: float):
        self.scores, self.costs, self.tau = scores, costs, tau

    def __call__(self, q: Question, turns):
        return decide_action(self.scores[q.prompt_id][state_key(turns)], self.costs, self.tau)


def state_prompt(q: Question, pool: Pool, offered: Sequence[str], turns, cfg: AgenticConfig) -> RouterPrompt:
    return build_agentic_prompt(q.prompt, pool.subset(list(offered)), [[q.call(m) for m in t] for t in turns], cfg.max_calls)


def score_states(
    questions: Sequence[Question], pool: Pool, offered: Sequence[str], cfg: AgenticConfig, score_fn: ScoreFn,
    costs: Mapping[str, float], taus: Sequence[float], batch: int = 64, log=print,
) -> dict[str, dict[str, dict[str, float]]]:
    """Score every state the policy reaches on ``questions`` under any tau of ``taus`` (level by level: the states
    reached at one depth under some tau are scored, then the next depth), plus the one-shot prompt (key
    ``"oneshot"``) so the same adapter also gives the one-shot router. No sampling: what is stored replays exactly."""
    pairable = {m for m in offered if pool.get(m).tier in cfg.pair_tiers}
    out: dict[str, dict[str, dict[str, float]]] = {q.prompt_id: {} for q in questions}

    def run(jobs):  # jobs: (q, key, prompt, actions)
        for s in range(0, len(jobs), batch):
            chunk = jobs[s : s + batch]
            lps = score_fn([j[2] for j in chunk], [j[3] for j in chunk])
            for (q, key, _p, acts), lp in zip(chunk, lps):
                out[q.prompt_id][key] = dict(zip(acts, map(float, lp)))

    run([(q, "oneshot", build_router_prompt(q.prompt, pool.subset(list(offered))), list(offered)) for q in questions])
    frontier = {(q.prompt_id, ()): (q, []) for q in questions}
    byid = {q.prompt_id: q for q in questions}
    depth = 0
    while frontier:
        jobs = []
        for (pid, _), (q, turns) in frontier.items():
            called = [m for t in turns for m in t]
            acts = legal_actions(called, offered, pairable, cfg.max_calls)
            jobs.append((q, state_key(turns), state_prompt(q, pool, offered, turns, cfg), acts))
        log(f"agentic scoring: depth {depth}, {len(jobs)} states")
        run(jobs)
        nxt = {}
        for (pid, _), (q, turns) in frontier.items():
            lp = out[pid][state_key(turns)]
            for tau in taus:
                a = decide_action(lp, costs, tau)
                if is_select_key(a):
                    continue
                t2 = [list(t) for t in turns] + [action_models(a)]
                k = state_key(t2)
                if k not in out[pid] and (pid, k) not in nxt:
                    nxt[(pid, k)] = (byid[pid], t2)
        frontier = nxt
        depth += 1
    return out


def save_scores(scores, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for pid, st in scores.items():
            f.write(json.dumps({"prompt_id": pid, "states": st}) + "\n")
    tmp.replace(path)


def load_scores(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    out = {}
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out[d["prompt_id"]] = d["states"]
    return out
