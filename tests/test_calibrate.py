"""Calibration of tau: the exact breakpoint search agrees with the decision rule everywhere, each target picks
the right interval, logs give cost targets but refuse accuracy ones, and the serve config is edited in place."""

import json
import math
import random

import pytest

from xrouter_lite.calibrate import (
    CalibrationError,
    Row,
    Target,
    calibrate_rows,
    envelope,
    figures_at,
    rows_from_log,
    sweep,
    write_tau,
)
from xrouter_lite.routing import decide


def _random_rows(n, seed=0, graded=True):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ms = [f"m{j}" for j in range(rng.randint(2, 5))]
        base = {m: round(rng.uniform(-3, 0), rng.choice([1, 6])) for m in ms}  # coarse values make real ties
        raw = {m: rng.choice([0.1, 0.5, 1.0, rng.uniform(0, 1)]) for m in ms}
        top = max(raw.values())
        costs = {m: c / top for m, c in raw.items()}
        rows.append(Row(base, costs, {m: 0.01 * costs[m] + rng.uniform(0, 1e-3) for m in ms},
                        {m: rng.random() < 0.6 for m in ms} if graded else None))
    return rows


def test_envelope_matches_the_decision_rule_at_every_tau():
    for r in _random_rows(300, seed=1):
        env = envelope(r.base, r.costs)
        assert env[0][0] == 0.0 and all(a[0] < b[0] for a, b in zip(env, env[1:]))
        for lo, hi in zip([t for t, _ in env], [t for t, _ in env[1:]] + [math.inf]):
            model = dict((t, m) for t, m in env)[lo]
            for tau in (lo if lo == 0 else lo * (1 + 1e-9), (lo + hi) / 2 if hi < math.inf else lo * 3 + 1):
                assert decide(r.base, r.costs, tau)[0] == model


def test_sweep_figures_equal_direct_decisions_inside_every_interval():
    rows = _random_rows(200, seed=2)
    points = sweep(rows)
    assert len(points) > 20 and points[0].tau_lo == 0 and math.isinf(points[-1].tau_hi)
    for p in points:
        q = figures_at(rows, p.inside())
        assert q.accuracy == pytest.approx(p.accuracy) and q.cost_per_query == pytest.approx(p.cost_per_query)
        assert q.share == pytest.approx(p.share)


def _hand_rows():
    # two questions, models s (strong, dear) and w (weak, cheap). q1: s right only; q2: both right.
    # q1 flips to w at tau 0.5/0.9, q2 at 0.1/0.9.
    c = {"s": 1.0, "w": 0.1}
    return [Row({"s": 0.9, "w": 0.4}, c, {"s": 1.0, "w": 0.1}, {"s": True, "w": False}),
            Row({"s": 0.9, "w": 0.8}, c, {"s": 1.0, "w": 0.1}, {"s": True, "w": True})]


def test_targets_pick_the_right_interval():
    rows = _hand_rows()
    pts = sweep(rows)
    assert [(round(p.tau_lo, 4), p.accuracy, round(p.cost_per_query, 4)) for p in pts] == [
        (0.0, 1.0, 1.0), (round(0.1 / 0.9, 4), 1.0, 0.55), (round(0.5 / 0.9, 4), 0.5, 0.1)]
    # budget $600 per 1k: the middle interval (both right, q2 on the cheap model)
    c = calibrate_rows(rows, Target(cost_per_1k=600))
    assert 0.1 / 0.9 < c.tau < 0.5 / 0.9 and c.point.accuracy == 1.0 and c.point.cost_per_1k == pytest.approx(550)
    # at most 50% to s: the same interval; at most 0% to s: the last one
    assert calibrate_rows(rows, Target(max_share={"s": 0.5})).point.share == {"s": 0.5, "w": 0.5}
    last = calibrate_rows(rows, Target(max_share={"s": 0.0}))
    assert last.tau > 0.5 / 0.9 and last.point.share == {"w": 1.0}
    # accuracy floor: the cheapest interval that keeps 100%
    assert calibrate_rows(rows, Target(min_accuracy=1.0)).point.cost_per_1k == pytest.approx(550)
    with pytest.raises(CalibrationError, match="no tau meets"):
        calibrate_rows(rows, Target(cost_per_1k=50))
    with pytest.raises(CalibrationError, match="give a target"):
        calibrate_rows(rows, Target())


def test_from_a_decision_log_costs_are_scaled_and_accuracy_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [
        {"time": "t", "request_id": "1", "router": "knn", "tau": 0.0, "offered": ["s", "w"], "scores": {"s": 0.9, "w": 0.4},
         "costs": {"s": 1.0, "w": 0.1}, "chosen": "s", "model_used": "s", "cost_usd": 0.002},
        {"time": "t", "request_id": "2", "router": "knn", "tau": 0.0, "offered": ["s", "w"], "scores": {"s": 0.9, "w": 0.8},
         "costs": {"s": 1.0, "w": 0.1}, "chosen": "s", "model_used": "w", "cost_usd": 0.0001},  # fell back to w
        {"time": "t", "request_id": "3", "router": "knn", "tau": 0.0, "offered": ["s", "w"], "scores": {}, "costs": {},
         "chosen": None, "model_used": "w", "cost_usd": 0.0001},  # the router failed
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"time": "t", "req')  # torn last line
    rows, skipped = rows_from_log(log)
    assert len(rows) == 2 and skipped["router_failed"] == 1 and skipped["torn_last_line"] == 1
    assert rows[0].usd == pytest.approx({"s": 0.002, "w": 0.0002}) and rows[1].usd == pytest.approx({"s": 0.001, "w": 0.0001})
    c = calibrate_rows(rows, Target(cost_per_1k=1.2))  # both on s would cost $1.5 per 1k: q2 moves to w
    assert c.point.accuracy is None and c.point.cost_per_1k == pytest.approx(1.05) and c.notes
    with pytest.raises(CalibrationError, match="not available from logged traffic"):
        calibrate_rows(rows, Target(min_accuracy=0.8))


def test_write_tau_keeps_the_config_and_its_comments(tmp_path, repo):
    import yaml

    cfg = tmp_path / "serve.yaml"
    cfg.write_text((repo / "configs" / "serve.yaml").read_text())
    before = cfg.read_text()
    write_tau(cfg, 0.123456, "cost <= $1 per 1,000 questions")
    after = cfg.read_text()
    data = yaml.safe_load(after)
    assert data["tau"] == pytest.approx(0.123456) and data["pool"] == yaml.safe_load(before)["pool"]
    assert len(after.splitlines()) == len(before.splitlines()) and "# calibrated: cost <=" in after
    assert not list(tmp_path.glob("*.tmp"))
    fresh = write_tau(tmp_path / "new.yaml", 2.0)
    assert yaml.safe_load(fresh.read_text()) == {"tau": 2.0}


def test_cli_calibrate_replays_a_knn_router_and_writes_the_config(repo, tmp_path):
    from typer.testing import CliRunner

    from xrouter_lite.cli import app
    from xrouter_lite.importers import import_routerbench

    full = tmp_path / "cache.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], full, limit_per_file=45, seed=2)
    lines = full.read_text().splitlines(keepends=True)
    ids = sorted({json.loads(x)["prompt_id"] for x in lines})
    held = set(ids[::3])
    (tmp_path / "train.jsonl").write_text("".join(x for x in lines if json.loads(x)["prompt_id"] not in held))
    (tmp_path / "held.jsonl").write_text("".join(x for x in lines if json.loads(x)["prompt_id"] in held))
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("router: knn\ntau: 0.0\n")
    res = CliRunner().invoke(app, [
        "calibrate", "--router", "knn", "--train-cache", str(tmp_path / "train.jsonl"), "--cache", str(tmp_path / "held.jsonl"),
        "--pool", str(repo / "configs" / "pool_routerbench.yaml"), "--max-share", "gpt-4-1106-preview=0.1",
        "--write-config", str(cfg), "--json", str(tmp_path / "cal.json")])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "cal.json").read_text())
    assert out["questions"] == len(held) and out["chosen"]["share"].get("gpt-4-1106-preview", 0) <= 0.1
    import yaml

    assert yaml.safe_load(cfg.read_text())["tau"] == pytest.approx(out["tau"]) and "tau =" in res.output
    res = CliRunner().invoke(app, ["calibrate", "--from-log", str(tmp_path / "nope.jsonl"), "--min-accuracy", "0.8"])
    assert res.exit_code == 2 and "not available from a decision log" in res.output
