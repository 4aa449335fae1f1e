"""Hull, AIQ, APGR and CPT on hand-computed examples (the definitions are in xrouter_lite/metrics.py)."""

import math

import pytest

from xrouter_lite import metrics as M


def test_hull_drops_points_under_the_chord_and_after_the_best():
    pts = [(0, 0.5), (1, 0.9), (0.5, 0.6), (2, 0.8)]  # 0.6 < 0.7 on the chord; (2, 0.8) is dearer and worse
    assert M.ndch(pts) == [(0.0, 0.5), (1.0, 0.9)]
    pts.append((0.5, 0.8))  # above the chord: a vertex
    assert M.ndch(pts) == [(0.0, 0.5), (0.5, 0.8), (1.0, 0.9)]


def test_hull_is_non_decreasing_and_keeps_best_of_equal_cost():
    assert M.ndch([(0, 0.6), (1, 0.5), (2, 0.9)]) == [(0.0, 0.6), (2.0, 0.9)]
    assert M.ndch([(0, 0.4), (0, 0.6)]) == [(0.0, 0.6)]
    # ties at the top: the cheapest of the best is the last vertex
    assert M.ndch([(0, 0.5), (1, 0.9), (3, 0.9)]) == [(0.0, 0.5), (1.0, 0.9)]
    h = M.ndch([(0, 0.6), (1, 0.5), (2, 0.9)])
    assert M.hull_value(h, 1) == pytest.approx(0.75)
    assert M.hull_value(h, 5) == pytest.approx(0.9)  # flat after the last vertex
    assert M.hull_value(h, -1) == 0.0  # nothing is reachable below the cheapest point


def test_aiq_hand_computed():
    assert M.aiq([(0, 0.5), (1, 0.9)], 0, 1) == pytest.approx(0.7)
    # 0.5 * (0.5 + 0.8) / 2 + 0.5 * (0.8 + 0.9) / 2
    assert M.aiq([(0, 0.5), (0.5, 0.8), (1, 0.9)], 0, 1) == pytest.approx(0.75)
    # flat after the best point: 0.5 * (0.5 + 0.9) / 2 + 0.5 * 0.9
    assert M.aiq([(0, 0.5), (0.5, 0.9)], 0, 1) == pytest.approx(0.8)
    # zero before the first point: 0.5 * 0.8
    assert M.aiq([(0.5, 0.8)], 0, 1) == pytest.approx(0.4)
    # cost is normalised, so the unit does not matter; points outside the range are clipped into it
    assert M.aiq([(10, 0.5), (30, 0.9)], 10, 30) == pytest.approx(0.7)
    assert M.aiq([(-1, 0.5), (3, 0.9)], 0, 2) == pytest.approx(0.7)


def test_apgr_and_pgr():
    weak, strong = (0.0, 0.5), (1.0, 0.9)
    assert M.pgr(0.7, 0.5, 0.9) == pytest.approx(0.5)
    assert M.apgr([weak, strong], weak, strong) == pytest.approx(0.5)  # mixing the two recovers half on average
    assert M.apgr([weak, (0.5, 0.8), strong], weak, strong) == pytest.approx((0.75 - 0.5) / 0.4)
    with pytest.raises(ValueError):
        M.pgr(0.5, 0.7, 0.7)


def test_cpt_uses_the_cheapest_actual_point_reaching_the_target():
    weak, strong = (0.1, 0.5), (1.0, 0.9)
    pts = [(0.1, 0.5), (0.5, 0.8), (1.0, 0.9)]
    c50 = M.cpt(pts, 0.5, weak, strong)  # target 0.7
    assert c50["cost"] == pytest.approx(0.5) and c50["cost_share"] == pytest.approx(0.5)
    assert c50["target_quality"] == pytest.approx(0.7)
    assert M.cpt(pts, 0.95, weak, strong)["cost"] == pytest.approx(1.0)  # target 0.88
    assert M.cpt([(0.1, 0.5), (0.5, 0.6)], 0.8, weak, strong) is None


def test_dominates_and_bad_input():
    hull = M.ndch([(0, 0.5), (1, 0.9)])
    assert M.dominates((0.5, 0.8), hull) == "above"
    assert M.dominates((0.5, 0.7), hull) == "on"
    assert M.dominates((0.5, 0.6), hull) == "below"
    with pytest.raises(ValueError):
        M.ndch([(0, math.nan)])
    with pytest.raises(ValueError):
        M.aiq([(0, 0.5)], 1, 1)
