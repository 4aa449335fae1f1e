"""Cost/quality metrics of routers: the non-decreasing convex hull, AIQ, APGR and CPT. Pure functions.

Every function takes operating points ``(cost, quality)``: ``cost`` is the TOTAL dollar cost of answering the
evaluation set (any consistent unit works), ``quality`` the accuracy in [0, 1].

Definitions (as in the papers, with the cost axis made explicit):

- **Non-decreasing convex hull (NDCH)** — RouterBench (Hu et al., 2024, §3.2): mixing two routers at random
  (answer a share ``p`` of the queries with one, the rest with the other) reaches every point on the segment
  between them, so the achievable set is the convex hull of the points; and since a cheaper point can always be
  "paid up" without losing quality, the hull is made non-decreasing. ``ndch`` returns its vertices: the upper
  hull from the cheapest point (best quality at that cost) up to the best-quality point (cheapest at that
  quality), after which the curve stays flat.
- **AIQ** (Average Improvement in Quality, RouterBench eq. 3): ``AIQ = 1/(c_max - c_min) * integral of R(c) dc``
  over ``[c_min, c_max]``, where ``R`` is the NDCH of the router's points. Here the cost is normalised,
  ``x = (c - c_min) / (c_max - c_min)``, so AIQ is the area under ``R`` over ``x`` in [0, 1]. ``c_min, c_max``
  are passed in (the evaluation uses the cheapest and the most expensive single model's total cost, the same
  range for every router compared). Points outside the range are clipped into it; before the router's first
  (cheapest) point ``R = 0`` (no quality is achievable below the router's cheapest operating point).
- **PGR / APGR** (RouteLLM, Ong et al., 2024, §4.1): ``PGR = (q(router) - q(weak)) / (q(strong) - q(weak))``;
  APGR is the average PGR over the range from "weak model only" to "strong model only". RouteLLM routes
  between two models and measures that range by the share of calls to the strong model; with many models we
  use the cost axis instead: ``x = (c - c_weak) / (c_strong - c_weak)`` in [0, 1] and
  ``APGR = integral_0^1 PGR(R(x)) dx`` with ``R`` the router's NDCH (so APGR = normalised AIQ over that range).
  In this project ``strong`` = the most accurate single model, ``weak`` = the cheapest single model.
- **CPT(x%)** (RouteLLM, "call-performance threshold"): the least cost at which the router reaches
  ``q(weak) + x * (q(strong) - q(weak))``. RouteLLM states it as the share of calls to the strong model; we
  report the total cost of the cheapest ACTUAL operating point (no hull interpolation) that reaches the
  target, and the same cost as a share of the strong model's cost (``cpt_share``); None when never reached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Point = tuple[float, float]


def _clean(points: Iterable[Sequence[float]]) -> list[Point]:
    out = []
    for p in points:
        c, q = float(p[0]), float(p[1])
        if math.isnan(c) or math.isnan(q) or math.isinf(c) or math.isinf(q):
            raise ValueError(f"operating point {p!r} is not finite")
        out.append((c, q))
    return out


def _cross(o: Point, a: Point, b: Point) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def ndch(points: Iterable[Sequence[float]]) -> list[Point]:
    """Vertices of the non-decreasing convex hull, sorted by cost (see the module docstring).

    Only points on the upper-left frontier are kept: the first vertex is the cheapest point (the best one when
    several share that cost), the last is the most accurate point (the cheapest one when several tie).
    """
    pts = _clean(points)
    if not pts:
        return []
    # best quality per cost, then sorted by cost
    best: dict[float, float] = {}
    for c, q in pts:
        best[c] = max(q, best.get(c, -math.inf))
    srt = sorted(best.items())
    # cut after the first point of maximum quality: beyond it the curve is flat
    qmax = max(q for _, q in srt)
    cut = next(i for i, (_, q) in enumerate(srt) if q == qmax)
    srt = srt[: cut + 1]
    hull: list[Point] = []
    for p in srt:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    # points below the first vertex's quality after it are dropped by the upper hull already; keep non-decreasing
    mono = [hull[0]]
    for p in hull[1:]:
        if p[1] > mono[-1][1]:
            mono.append(p)
    return mono


def hull_value(hull: Sequence[Point], cost: float) -> float:
    """The NDCH's quality at ``cost``: 0 before its first vertex, linear between vertices, flat after the last."""
    if not hull or cost < hull[0][0]:
        return 0.0
    for (c0, q0), (c1, q1) in zip(hull, hull[1:]):
        if c0 <= cost <= c1:
            return q0 if c1 == c0 else q0 + (q1 - q0) * (cost - c0) / (c1 - c0)
    return hull[-1][1]


def _area(hull: Sequence[Point], lo: float, hi: float) -> float:
    """Integral of hull_value over [lo, hi] (exact, piecewise linear)."""
    if hi <= lo:
        return 0.0
    xs = {lo, hi}
    xs.update(c for c, _ in hull if lo < c < hi)
    xs = sorted(xs)
    area = 0.0
    for a, b in zip(xs, xs[1:]):
        # hull_value is linear on [a, b] except for the jump at the first vertex (0 -> q); use the right limit
        # at a when a is the first vertex, the left value at b otherwise
        va = hull_value(hull, a)
        vb = hull_value(hull, b) if b != hull[0][0] else 0.0
        area += (va + vb) / 2 * (b - a)
    return area


def normalise_cost(cost: float, c_min: float, c_max: float) -> float:
    """``(cost - c_min) / (c_max - c_min)``, clipped to [0, 1]."""
    if c_max <= c_min:
        raise ValueError(f"empty cost range [{c_min}, {c_max}]")
    return min(1.0, max(0.0, (cost - c_min) / (c_max - c_min)))


def aiq(points: Iterable[Sequence[float]], c_min: float, c_max: float) -> float:
    """RouterBench's AIQ: area under the NDCH of ``points`` over the normalised cost range [0, 1]."""
    pts = [(normalise_cost(c, c_min, c_max), q) for c, q in _clean(points)]
    if not pts:
        return 0.0
    return _area(ndch(pts), 0.0, 1.0)


def pgr(quality: float, q_weak: float, q_strong: float) -> float:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's."""
    if q_strong == q_weak:
        raise ValueError("the strong and the weak model have the same quality; PGR is undefined")
    return (quality - q_weak) / (q_strong - q_weak)


def apgr(points: Iterable[Sequence[float]], weak: Point, strong: Point) -> float:
    """RouteLLM's APGR with the cost axis: mean PGR of the router's NDCH over cost in [c_weak, c_strong].

    ``weak``/``strong`` are the two reference models' (cost, quality)."""
    (cw, qw), (cs, qs) = weak, strong
    return pgr(aiq(points, cw, cs), qw, qs)


def cpt(
    points: Iterable[Sequence[float]], fraction: float, weak: Point, strong: Point
) -> dict[str, float] | None:
    """Cost to reach ``fraction`` (e.g. 0.5) of the weak->strong quality gap, from the actual points.

    Returns ``{"cost": total cost, "cost_share": cost / strong model's cost, "quality": that point's quality}``
    for the cheapest point whose quality >= the target, or None when no point reaches it."""
    (cw, qw), (cs, qs) = weak, strong
    target = qw + fraction * (qs - qw)
    ok = [(c, q) for c, q in _clean(points) if q >= target - 1e-12]
    if not ok:
        return None
    c, q = min(ok)
    return {"cost": c, "cost_share": c / cs if cs > 0 else math.inf, "quality": q, "target_quality": target}


def dominates(point: Point, hull: Sequence[Point], tol: float = 1e-12) -> str | None:
    """Where ``point`` lies against a hull: "above" (more accurate than the hull at its cost),
    "on" (within ``tol``) or "below". None when the hull is empty."""
    if not hull:
        return None
    v = hull_value(hull, point[0])
    if point[1] > v + tol:
        return "above"
    if point[1] >= v - tol:
        return "on"
    return "below"


def cheapest_reaching(points: Iterable[Sequence[float]], quality: float) -> Point | None:
    """The cheapest ACTUAL point (cost, quality) whose quality is at least ``quality``; None when none is."""
    ok = [(c, q) for c, q in _clean(points) if q >= quality - 1e-12]
    return min(ok) if ok else None


def cost_fifths_covered(points: Iterable[Sequence[float]], parts: int = 5) -> list[bool]:
    """Split the cost range between the curve's cheapest and dearest point into ``parts`` equal parts; for each
    part, whether some point of the curve lies in it (the ends count in both neighbouring parts). A False is a hole:
    a budget the curve offers no operating point for."""
    cs = sorted(c for c, _ in _clean(points))
    if not cs:
        return [False] * parts
    lo, hi = cs[0], cs[-1]
    if hi <= lo:
        return [True] * parts
    width = (hi - lo) / parts
    return [any(lo + k * width - 1e-12 <= c <= lo + (k + 1) * width + 1e-12 for c in cs) for k in range(parts)]
