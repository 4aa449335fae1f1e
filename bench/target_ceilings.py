"""How far the accuracy-at-a-budget targets of issues 14 and 16 are from what the task label can give, even in hindsight.

    python bench/target_ceilings.py CACHE [--seeds 0 1 2] [--caps 0.25 0.40]

CACHE: RouterBench's three training files imported (`xrouter-lite import routerbench ...`; every model's answer).
Per split seed s (the pairs stage's split, eval_fraction 0.2: the 441 held-out questions of every quality bench), this
picks, **on the held-out questions themselves** (hindsight: an upper bound, not a router), the best policy per dataset
under a total budget of a share of GPT-4's cost on those questions, for two families:

- *single*: one model per dataset (what a one-shot router that only knows the task can do);
- *cascade*: per dataset one model, or two models called at once whose read answers (`grading.read_answer`, as
  everywhere) are taken when they agree, else a third model, answering with it or with the majority of the three
  (what the agentic mode's policies do with at most 3 calls, knowing the task and the agreement);

each over the six models the agentic mode is offered and over all eleven. Also the AIQ of each family's hindsight
curve (the best mix at every budget from the cheapest single model's cost to GPT-4's, 201 budgets): the most a policy
of that family can score on these questions. Policies may also be mixed within a
dataset (a random share of its questions each way): the best mix under the budget is the greedy fill of every
dataset's upper concave hull of (cost, correct answers), exact for this piecewise-linear problem.

A router that reaches a target above these figures must know, question by question, more than the task and the
agreement of answers: the held-out gain of every such signal measured so far is under 1 point (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEAREST = "gpt-4-1106-preview"
AGENTIC_SIX = ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat",
               "gpt-3.5-turbo-1106", "claude-instant-v1", DEAREST]


def policies(qs, models, cascades: bool):
    """(correct answers, total cost, name) of every policy of the family on the questions ``qs``."""
    out = [(sum(q.outcomes[m].correct for q in qs), sum(q.outcomes[m].cost for q in qs), m.split("/")[-1]) for m in models]
    if not cascades:
        return out
    for a, b in itertools.combinations(models, 2):
        for c in models:
            if c in (a, b):
                continue
            for mode in ("third", "majority"):
                corr, cost = 0, 0.0
                for q in qs:
                    oa, ob, oc = q.outcomes[a], q.outcomes[b], q.outcomes[c]
                    cost += oa.cost + ob.cost
                    if oa.read is not None and oa.read == ob.read:
                        corr += oa.correct
                        continue
                    cost += oc.cost
                    if mode == "majority" and oc.read is not None and oc.read in (oa.read, ob.read):
                        corr += oa.correct if oc.read == oa.read else ob.correct
                    else:
                        corr += oc.correct
                out.append((corr, cost, f"{a.split('/')[-1]}+{b.split('/')[-1]} else {c.split('/')[-1]} ({mode})"))
    return out


def concave_hull(points):
    """Upper concave hull of (correct, cost, name) points, cheapest first, starting at the cheapest point."""
    pts = sorted(points, key=lambda t: (t[1], -t[0]))
    hull = []
    for p in pts:
        if hull and p[0] <= hull[-1][0]:
            continue
        while len(hull) >= 2:
            (n1, c1, _), (n2, c2, _) = hull[-2], hull[-1]  # (correct, cost)
            if (n2 - n1) * (p[1] - c1) <= (p[0] - n1) * (c2 - c1):  # the middle point is on or under the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def best_mix(per_dataset: dict, budget: float):
    """Most correct answers under ``budget`` with a mix of hull policies per dataset (greedy by marginal rate)."""
    hulls = {d: concave_hull(p) for d, p in per_dataset.items()}
    correct = sum(h[0][0] for h in hulls.values())
    cost = sum(h[0][1] for h in hulls.values())
    used = {d: [h[0][2]] for d, h in hulls.items()}
    if cost > budget:
        return None
    segs = sorted(((h[i + 1][0] - h[i][0]) / max(h[i + 1][1] - h[i][1], 1e-12), d, h[i], h[i + 1])
                  for d, h in hulls.items() for i in range(len(h) - 1))
    for rate, d, lo, hi in reversed(segs):  # concave: a dataset's segments come in their own order
        step = hi[1] - lo[1]
        if cost + step <= budget:
            cost, correct = cost + step, correct + (hi[0] - lo[0])
            used[d] = [hi[2]]
        else:
            f = (budget - cost) / step
            cost, correct = budget, correct + f * (hi[0] - lo[0])
            used[d] = [lo[2], hi[2]] if f > 0 else used[d]
            break
    return correct, cost, used


def best_pure(per_dataset: dict, budget: float):
    """Most correct answers under ``budget`` with ONE policy per dataset (searched over each dataset's Pareto front)."""
    fronts = {}
    for d, pts in per_dataset.items():
        front, top = [], -1
        for p in sorted(pts, key=lambda t: (t[1], -t[0])):
            if p[0] > top:
                front.append(p)
                top = p[0]
        fronts[d] = front
    best = None
    for combo in itertools.product(*fronts.values()):
        cost = sum(p[1] for p in combo)
        if cost <= budget and (best is None or sum(p[0] for p in combo) > best[0]):
            best = (sum(p[0] for p in combo), cost, {d: [p[2]] for d, p in zip(fronts, combo)})
    return best


def main() -> None:
    from xrouter_lite.agentic.state import load_questions
    from xrouter_lite.metrics import aiq
    from xrouter_lite.pairs import split_prompt_ids
    from xrouter_lite.pool import load_pool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path)
    ap.add_argument("--pool", type=Path, default=REPO / "configs/pool_routerbench.yaml")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--caps", type=float, nargs="*", default=[0.25, 0.40])
    ap.add_argument("--show", action="store_true", help="print the policies of every best mix")
    a = ap.parse_args()
    pool = load_pool(a.pool)
    qs_all = load_questions(a.cache, pool)
    for s in a.seeds:
        held = split_prompt_ids({q.prompt_id for q in qs_all}, 0.2, s)
        test = [q for q in qs_all if q.prompt_id in held]
        g4_cost = sum(q.outcomes[DEAREST].cost for q in test)
        g4_acc = sum(q.outcomes[DEAREST].correct for q in test) / len(test)
        by: dict[str, list] = {}
        for q in test:
            by.setdefault(q.dataset, []).append(q)
        c_lo = min(sum(q.outcomes[m].cost for q in test) for m in pool.ids)  # the AIQ range of every quality bench
        print(f"split {s}: {len(test)} held-out questions; GPT-4 alone {g4_acc:.1%} at ${g4_cost:.3f}", flush=True)
        for fam, cascades in (("single", False), ("cascade", True)):
            for label, models in (("6 agentic models", AGENTIC_SIX), ("all 11 models", list(pool.ids))):
                per = {d: policies(L, models, cascades) for d, L in by.items()}
                cells = []
                for cap in a.caps:
                    pure = best_pure(per, cap * g4_cost)
                    mix = best_mix(per, cap * g4_cost)
                    cells.append(f"<= {cap:.0%}: {pure[0] / len(test):.1%} one per dataset ({pure[1] / g4_cost:.0%}), "
                                 f"{mix[0] / len(test):.1%} mixed")
                    if a.show:
                        cells[-1] += f" {mix[2]}"
                grid = [c_lo + (g4_cost - c_lo) * i / 200 for i in range(201)]
                pts = [(b, m[0] / len(test)) for b in grid if (m := best_mix(per, b)) is not None]
                cells.append(f"AIQ {aiq(pts, c_lo, g4_cost):.4f}")
                print(f"  hindsight {fam:7s} {label:16s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
