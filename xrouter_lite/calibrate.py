"""Choose the cost knob tau for a target: a budget per 1,000 questions, a cap on one model's share of calls, or a
floor on accuracy (RouteLLM's ``calibrate_threshold``, exact rather than sampled).

    xrouter-lite calibrate --router knn --train-cache TRAIN --cache HELDOUT --pool POOL --cost-per-1k 0.5
    xrouter-lite calibrate --from-log runs/serve/decisions.jsonl --max-share gpt-4-1106-preview=0.2
    xrouter-lite calibrate ... --min-accuracy 0.85 --write-config configs/serve.yaml

Where the figures come from:

- ``--cache`` (replay, exact): a cache of held-out questions (every model's recorded answer, grade and cost).
  The router scores each question once; at any tau its choice is ``argmax(score - tau * cost)`` and the chosen
  model's recorded grade and cost are looked up. Accuracy, cost and shares are exact for those questions.
  ``--decisions`` reuses an evaluation's ``decisions.jsonl`` (its scores and costs) instead of running the router.
- ``--from-log`` (real traffic): the server's decision log (``serve.decision_log``). A request's
  cost under another choice is estimated from what it really cost, scaled by the cost vector
  (``cost_usd * costs[m] / costs[model_used]``). The log has no grades: accuracy targets are not available.

The search is exact: per question, the choice as tau grows from 0 is the upper envelope of the lines
``score_m - tau * cost_m``; the taus where it changes (the breakpoints) of all questions cut [0, inf) into
intervals on which every choice, hence every figure, is constant. Every interval is evaluated (one sweep over
the sorted breakpoints); among those meeting every target, the chosen one has the best accuracy (with
``--min-accuracy``: the lowest cost; from a log: the smallest tau, i.e. the least cost-averse setting). The tau
printed lies inside it (its middle; 0 for the first one; past the last breakpoint for the last one), and the
figures are checked by re-deciding every question at that tau with the router's own rule.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .routing import ScoredDecision, decide


class CalibrationError(ValueError):
    """No tau meets the target, or the input cannot be calibrated on; the message says why."""


@dataclass
class Row:
    """One question: the router's base scores and normalised costs of the offered models, each model's USD
    cost for this question, and (replay) whether it answers right. ``fixed``: the router's answer was unusable,
    the default model answers at every tau."""

    base: dict[str, float]
    costs: dict[str, float]
    usd: dict[str, float]
    correct: dict[str, bool] | None = None
    fixed: str | None = None


@dataclass
class Target:
    cost_per_1k: float | None = None
    max_share: dict[str, float] = field(default_factory=dict)
    min_accuracy: float | None = None

    def describe(self) -> str:
        parts = []
        if self.cost_per_1k is not None:
            parts.append(f"cost <= ${self.cost_per_1k:g} per 1,000 questions")
        parts += [f"share of {m} <= {100 * s:g}%" for m, s in self.max_share.items()]
        if self.min_accuracy is not None:
            parts.append(f"accuracy >= {100 * self.min_accuracy:g}%")
        return ", ".join(parts) or "none"


@dataclass
class Point:
    """The figures on one interval [tau_lo, tau_hi) of tau."""

    tau_lo: float
    tau_hi: float
    accuracy: float | None
    cost_per_query: float
    share: dict[str, float]

    @property
    def cost_per_1k(self) -> float:
        return 1000 * self.cost_per_query

    def inside(self) -> float:
        """A tau strictly inside the interval (0 for the first)."""
        if self.tau_lo == 0.0:
            return 0.0
        if math.isinf(self.tau_hi):
            return self.tau_lo + max(1e-6, 0.1 * self.tau_lo)
        return (self.tau_lo + self.tau_hi) / 2


# ---- the exact sweep ------------------------------------------------------------------------------------------------


def envelope(base: Mapping[str, float], costs: Mapping[str, float]) -> list[tuple[float, str]]:
    """The choices of ``decide(base, costs, tau)`` for tau from 0 to infinity: ``[(0, m0), (t1, m1), ...]``, the
    model ``m_i`` chosen on ``[t_i, t_{i+1})`` (at a breakpoint the tie goes to the cheaper model, as in
    ``decide``)."""
    order = {m: i for i, m in enumerate(base)}
    cur = decide(base, costs, 0.0)[0]
    out = [(0.0, cur)]
    t = 0.0
    while True:
        cands = []
        for m in base:
            dc = costs.get(cur, 0.0) - costs.get(m, 0.0)
            if dc > 0:
                cands.append((max(t, (base[cur] - base[m]) / dc), m))
        if not cands:
            return out
        t_next = min(c[0] for c in cands)
        tol = 1e-12 * max(1.0, abs(t_next))
        tied = [m for tm, m in cands if tm <= t_next + tol]
        cur = min(tied, key=lambda m: (costs.get(m, 0.0), order[m]))
        t = t_next
        out.append((t, cur))


BREAKPOINT_RTOL = 1e-9


def sweep(rows: Sequence[Row]) -> list[Point]:
    """The figures on every interval of tau (see the module docstring). Cost per query in USD; accuracy None
    when the rows carry no grades."""
    if not rows:
        raise CalibrationError("no question to calibrate on")
    graded = all(r.correct is not None for r in rows)
    n = len(rows)
    choice: list[str] = []
    events: list[tuple[float, int, str]] = []
    for i, r in enumerate(rows):
        if r.fixed is not None:
            choice.append(r.fixed)
            continue
        env = envelope(r.base, r.costs)
        choice.append(env[0][1])
        events += [(t, i, m) for t, m in env[1:]]
    events.sort(key=lambda e: e[0])
    right = sum(rows[i].correct[m] for i, m in enumerate(choice)) if graded else 0
    usd = sum(rows[i].usd[m] for i, m in enumerate(choice))
    count: dict[str, int] = {}
    for m in choice:
        count[m] = count.get(m, 0) + 1

    def point(lo: float, hi: float) -> Point:
        return Point(lo, hi, right / n if graded else None, usd / n,
                     {m: c / n for m, c in sorted(count.items(), key=lambda kv: -kv[1]) if c})

    points = []
    lo = 0.0
    k = 0
    while k < len(events):
        t = events[k][0]
        if t > lo:
            points.append(point(lo, t))
            lo = t
        # breakpoints equal up to rounding (the same tie reached through different arithmetic) are one
        tol = BREAKPOINT_RTOL * max(1.0, abs(t))
        while k < len(events) and events[k][0] <= t + tol:
            _, i, m = events[k]
            old = choice[i]
            if graded:
                right += rows[i].correct[m] - rows[i].correct[old]
            usd += rows[i].usd[m] - rows[i].usd[old]
            count[old] -= 1
            count[m] = count.get(m, 0) + 1
            choice[i] = m
            k += 1
    points.append(point(lo, math.inf))
    return points


def figures_at(rows: Sequence[Row], tau: float) -> Point:
    """The figures at one tau, deciding every question with ``routing.decide`` (the check of the sweep)."""
    graded = all(r.correct is not None for r in rows)
    right, usd, count = 0, 0.0, {}
    for r in rows:
        m = r.fixed if r.fixed is not None else decide(r.base, r.costs, tau)[0]
        right += bool(graded and r.correct[m])
        usd += r.usd[m]
        count[m] = count.get(m, 0) + 1
    n = len(rows)
    return Point(tau, tau, right / n if graded else None, usd / n,
                 {m: c / n for m, c in sorted(count.items(), key=lambda kv: -kv[1])})


def _meets(p: Point, t: Target) -> bool:
    if t.cost_per_1k is not None and p.cost_per_1k > t.cost_per_1k * (1 + 1e-12):
        return False
    if any(p.share.get(m, 0.0) > s + 1e-12 for m, s in t.max_share.items()):
        return False
    if t.min_accuracy is not None and (p.accuracy is None or p.accuracy < t.min_accuracy - 1e-12):
        return False
    return True


@dataclass
class Calibration:
    tau: float
    point: Point
    target: Target
    n: int
    breakpoints: int
    at_zero: Point
    cheapest: Point
    source: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def pj(p: Point) -> dict[str, Any]:
            return {"tau_interval": [p.tau_lo, None if math.isinf(p.tau_hi) else p.tau_hi], "accuracy": p.accuracy,
                    "cost_per_query_usd": p.cost_per_query, "cost_per_1k_usd": p.cost_per_1k, "share": p.share}

        return {"tau": self.tau, "target": self.target.describe(), "questions": self.n, "source": self.source,
                "breakpoints": self.breakpoints, "chosen": pj(self.point), "at_tau_0": pj(self.at_zero),
                "cheapest_reachable": pj(self.cheapest), "notes": self.notes}

    def format(self) -> str:
        line = _line
        out = [f"calibrated on {self.n} questions ({self.source}); {self.breakpoints} breakpoints searched",
               f"target: {self.target.describe()}",
               f"tau = {self.tau:.6g}   (any tau in [{self.point.tau_lo:.6g}, {self.point.tau_hi:.6g}) gives the same "
               "decisions on these questions)",
               line("expected at this tau", self.point), line("for reference, tau = 0", self.at_zero),
               line("cheapest reachable", self.cheapest)]
        return "\n".join(out + [f"note: {n}" for n in self.notes])


def _line(label: str, p: Point) -> str:
    acc = f"accuracy {100 * p.accuracy:.1f}%, " if p.accuracy is not None else ""
    top = ", ".join(f"{m.split('/')[-1]} {100 * s:.0f}%" for m, s in list(p.share.items())[:4])
    return f"{label}: {acc}${p.cost_per_1k:.4g} per 1,000 questions; calls: {top}"


def calibrate_rows(rows: Sequence[Row], target: Target, source: str = "") -> Calibration:
    """The tau meeting ``target`` on ``rows`` (see the module docstring); ``CalibrationError`` if none does."""
    graded = all(r.correct is not None for r in rows)
    if target.min_accuracy is not None and not graded:
        raise CalibrationError("--min-accuracy needs graded questions (--cache): a decision log has no grades, so "
                               "accuracy targets are not available from logged traffic")
    if target.cost_per_1k is None and not target.max_share and target.min_accuracy is None:
        raise CalibrationError("give a target: --cost-per-1k USD, --max-share MODEL=FRACTION or --min-accuracy A")
    points = sweep(rows)
    ok = [p for p in points if _meets(p, target)]
    cheapest = min(points, key=lambda p: (p.cost_per_query, -(p.accuracy or 0.0)))
    if not ok:
        best = cheapest if target.min_accuracy is None else max(points, key=lambda p: p.accuracy or 0.0)
        raise CalibrationError(
            f"no tau meets the target ({target.describe()}) on these {len(rows)} questions; "
            + _line(f"the closest (tau {best.inside():.6g})", best))
    if target.min_accuracy is not None:
        pick = min(ok, key=lambda p: (p.cost_per_query, -(p.accuracy or 0.0), p.tau_lo))
    elif graded:
        pick = max(ok, key=lambda p: (p.accuracy, -p.cost_per_query, -p.tau_lo))
    else:
        pick = ok[0]
    tau = pick.inside()
    check = figures_at(rows, tau)
    same = abs(check.cost_per_query - pick.cost_per_query) <= 1e-9 * max(1.0, pick.cost_per_query) and (
        check.accuracy == pick.accuracy or abs((check.accuracy or 0) - (pick.accuracy or 0)) < 1e-12)
    if not same:
        raise RuntimeError(f"calibration check failed at tau={tau}: sweep {pick}, direct {check}")
    notes = []
    if not graded:
        notes.append("from logged traffic: costs of models not used are estimated from the cost vector; "
                     "accuracy is not known (no grades)")
    return Calibration(tau, pick, target, len(rows), len(points) - 1, points[0], cheapest, source, notes)


# ---- inputs ---------------------------------------------------------------------------------------------------------


def rows_from_decisions(decisions: Sequence[Any], prompts: Sequence[Any]) -> list[Row]:
    """Rows from a router's decisions (made at any tau: their base scores and costs) on labelled prompts."""
    rows = []
    for d, p in zip(decisions, prompts, strict=True):
        usd = {m: o.cost for m, o in p.outcomes.items()}
        ok = {m: bool(o.correct) for m, o in p.outcomes.items()}
        if isinstance(d, ScoredDecision) and d.valid:
            rows.append(Row(dict(d.base_scores), dict(d.costs), usd, ok))
        elif not d.valid:
            rows.append(Row({}, {}, usd, ok, fixed=d.model_id))
        else:
            raise CalibrationError("this router takes no tau (its choice does not depend on it): nothing to calibrate")
    return rows


def rows_from_decisions_file(path: str | Path, cache: str | Path) -> list[Row]:
    """Rows from an evaluation's ``decisions.jsonl`` (base scores and costs) and the cache it was run on."""
    from .evaluate import load_prompts

    prompts, _ = load_prompts(cache)
    by_id = {p.prompt_id: p for p in prompts}
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
            p = by_id.get(d.get("prompt_id"))
            if p is None:
                raise CalibrationError(f"{path}:{ln}: prompt {d.get('prompt_id')!r} is not in {cache}")
            usd = {m: o.cost for m, o in p.outcomes.items()}
            ok = {m: bool(o.correct) for m, o in p.outcomes.items()}
            if d.get("valid", True) and d.get("base_scores") and d.get("costs"):
                rows.append(Row(dict(d["base_scores"]), dict(d["costs"]), usd, ok))
            else:
                rows.append(Row({}, {}, usd, ok, fixed=d["chosen"]))
    return rows


def rows_from_log(path: str | Path) -> tuple[list[Row], dict[str, int]]:
    """Rows from the server's decision log (see ``serve.decision_log``): costs estimated, no grades."""
    from .serve.decision_log import read_decision_log

    entries, skipped = read_decision_log(path)
    skipped["no_cost"] = 0
    rows = []
    for e in entries:
        costs = {m: float(v) for m, v in e["costs"].items()}
        used = e.get("model_used") or e["chosen"]
        paid = e.get("cost_usd")
        if paid is None or used not in costs or costs[used] <= 0:
            skipped["no_cost"] += 1
            continue
        usd = {m: float(paid) * costs[m] / costs[used] for m in costs}
        base = {m: float(e["scores"][m]) for m in costs if m in e["scores"]}
        if set(base) != set(costs):
            skipped["no_scores"] = skipped.get("no_scores", 0) + 1
            continue
        rows.append(Row(base, costs, usd, None))
    return rows, skipped


def parse_shares(items: Sequence[str] | None) -> dict[str, float]:
    """``["MODEL=0.2", ...]`` -> ``{MODEL: 0.2}`` (a share in [0, 1]; ``20%`` is read as 0.2)."""
    out = {}
    for it in items or ():
        if "=" not in it:
            raise CalibrationError(f"--max-share wants MODEL=FRACTION, got {it!r}")
        m, v = it.rsplit("=", 1)
        try:
            x = float(v[:-1]) / 100 if v.endswith("%") else float(v)
        except ValueError:
            raise CalibrationError(f"--max-share {it!r}: {v!r} is not a number") from None
        if not 0 <= x <= 1:
            raise CalibrationError(f"--max-share {it!r}: the share must be between 0 and 1")
        out[m.strip()] = x
    return out


# ---- writing the result ---------------------------------------------------------------------------------------------

_TAU_LINE = re.compile(r"^tau:[^\n#]*(#.*)?$", re.M)


def write_tau(config: str | Path, tau: float, note: str = "") -> Path:
    """Set ``tau:`` in a serve config (YAML), keeping every other line and comment; the file is written beside
    and renamed into place (atomic). A missing file is created with just that line."""
    import yaml

    path = Path(config)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CalibrationError(f"{path}: not valid YAML: {e}") from None
        if data is not None and not isinstance(data, dict):
            raise CalibrationError(f"{path}: expected a mapping of serve settings")
    comment = f"# calibrated: {note}" if note else "# calibrated by xrouter-lite calibrate"
    line = f"tau: {tau!r}  {comment}"
    if _TAU_LINE.search(text):
        new = _TAU_LINE.sub(lambda m: line, text, count=1)
    else:
        new = text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"
    got = (yaml.safe_load(new) or {}).get("tau")
    if got is None or abs(float(got) - tau) > 1e-12 * max(1.0, abs(tau)):
        raise CalibrationError(f"{path}: could not set tau (found {got!r} after editing); edit it by hand: tau: {tau!r}")
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return path


def rows_from_cache(
    cache: str | Path, spec: Mapping[str, Any], *, models: Sequence[str] | None = None, log=print,
) -> tuple[list[Row], str]:
    """Replay: build the router of ``spec`` (``routing.load_router``: the same router and cost vector as
    evaluation and serving), score every question of ``cache`` once and return the rows. Questions also in the
    training cache are left out of the router's training data (as in evaluation). Offered: every pool model (or
    ``models``) with a valid record for the question; questions lacking one of them are dropped."""
    from .evaluate import load_prompts
    from .pool import load_pool
    from .routing import load_router

    pool = load_pool(spec.get("pool") or "configs/pool.yaml")
    ids = list(models or pool.ids)
    unknown = [m for m in ids if m not in pool]
    if unknown:
        raise CalibrationError(f"--models not in the pool {pool.source}: {unknown}")
    test, _ = load_prompts(cache, ids, require_complete=True)
    if not test:
        raise CalibrationError(f"{cache}: no question with a graded record of every offered model")
    train = None
    if spec.get("train_cache"):
        train, _ = load_prompts(spec["train_cache"], pool.ids)
        held = {p.prompt_id for p in test}
        dropped = sum(p.prompt_id in held for p in train)
        train = [p for p in train if p.prompt_id not in held]
        if dropped:
            log(f"{dropped} calibration question(s) found in the training cache were left out of training")
    router = load_router({**spec, "pool": pool}, train=train, log=log)
    if not router.takes_tau:
        raise CalibrationError(f"router {router.name!r} takes no tau (its choice does not depend on it): "
                               "nothing to calibrate")
    present = [m for m in ids if all(m in p.outcomes for p in test)]
    offered = [pool.subset(present)] * len(test)
    from .routing import RouteItem

    decisions = []
    for s in range(0, len(test), 64):
        chunk = test[s : s + 64]
        decisions += router.route_items([RouteItem(p.prompt, p.prompt_id, p.dataset) for p in chunk],
                                        offered[s : s + 64], 0.0)
    return rows_from_decisions(decisions, test), f"replay of {cache} with router {router.name}"
