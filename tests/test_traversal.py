"""The cost-ordered traversal (xrouter_lite.traversal) against the fake provider: cheapest first, stop at the first
correct answer, exploration, the records it writes, kill -9 and resume, the budget across runs, the dry run, and the
replay on a recorded full cache (which must call exactly what a live run calls)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.test_cache import MODELS, REFS, REPO, _cli, _wait_lines, cfg_for, env, fresh, records, up  # noqa: F401
from xrouter_lite.cache import latest_records, run_cache
from xrouter_lite.pool import load_pool
from xrouter_lite.records import CacheRecord
from xrouter_lite.traversal import is_explored, order_models, recorded_spend, simulate_traversal

# fb (cheapest) answers 7, fa answers 42, fc (dearest) answers 42 in prose: per question, cheapest first
EXPECTED = {"q1": ["fb", "fa"], "q2": ["fb"], "q3": ["fb", "fa"], "q4": ["fb", "fa", "fc"]}


def test_order_is_ascending_expected_cost_and_exploration_is_seeded_by_id(env):
    _, pool, _ = env
    specs = list(load_pool(pool))
    assert [s.id for s, _ in order_models(specs, 100, 300)] == ["fb", "fa", "fc"]
    # a long question with a short answer: input price decides; fa's 1.0 in < fc's 10.0 in
    assert [s.id for s, _ in order_models(specs, 10_000, 0)] == ["fb", "fa", "fc"]
    picks = [is_explored(f"q{i}", 0.2, seed=3) for i in range(5000)]
    assert 0.18 < sum(picks) / len(picks) < 0.22
    assert picks == [is_explored(f"q{i}", 0.2, seed=3) for i in range(5000)]  # same ids, same sample
    assert picks != [is_explored(f"q{i}", 0.2, seed=4) for i in range(5000)]
    assert not is_explored("q1", 0.0) and is_explored("q1", 1.0)


def test_cost_ordered_calls_cheapest_first_and_stops_at_the_first_correct_answer(fresh, env):
    cfg = cfg_for(env, traversal="cost-ordered")
    s = run_cache(cfg, progress=False)
    recs = records(cfg.out)
    got = {q: [r.model_name for r in recs if r.prompt_id == q] for q in REFS}
    assert got == EXPECTED
    assert fresh.stats()["requests"] == 8  # of 12 for the full traversal
    assert all(r.traversal == "cost-ordered" for r in recs)
    stops = {r.prompt_id: r for r in recs if r.skipped}
    assert set(stops) == {"q1", "q2", "q3"}  # q4: nobody right, everything called, nothing skipped
    assert list(stops["q2"].skipped) == ["fa", "fc"] and list(stops["q1"].skipped) == ["fc"]
    assert all(r.is_correct for r in stops.values())
    assert not any(r.is_correct is None for r in recs)  # a skipped model is never written as an answer
    assert s.traversal["stopped_early"] == 3 and s.traversal["skipped_pairs"] == 4
    assert s.spent_usd == pytest.approx(sum(r.cost for r in recs))
    # a second run finds every question complete and calls nothing
    fresh.control(reset_stats=True)
    s2 = run_cache(cfg, progress=False)
    assert fresh.stats()["requests"] == 0 and s2.ok == 0 and s2.traversal["complete_before"] == 3


def test_explored_questions_get_every_model(fresh, env):
    cfg = cfg_for(env, traversal="cost-ordered", explore=1.0)
    run_cache(cfg, progress=False)
    recs = records(cfg.out)
    assert {r.key for r in recs} == {(q, m) for q in REFS for m in MODELS}
    assert all(r.traversal == "explore" and not r.skipped for r in recs)


def test_replay_on_a_recorded_full_cache_calls_what_a_live_run_calls(fresh, env, tmp_path):
    full = cfg_for(env, out=tmp_path / "full.jsonl")
    run_cache(full, progress=False)
    live = cfg_for(env, out=tmp_path / "live.jsonl", traversal="cost-ordered", explore=0.5, explore_seed=1)
    run_cache(live, progress=False)
    pool = load_pool(full.pool)
    rep = simulate_traversal(full.out, pool, "cost-ordered", explore=0.5, seed=1, out=tmp_path / "sim.jsonl")
    sim, got = records(tmp_path / "sim.jsonl"), records(live.out)
    assert sorted((r.key, r.traversal, r.skipped and sorted(r.skipped)) for r in sim) == \
        sorted((r.key, r.traversal, r.skipped and sorted(r.skipped)) for r in got)
    assert rep.calls == len(got) and rep.full_calls == 12
    assert rep.cost_usd == pytest.approx(sum(r.cost for r in got))
    assert rep.full_cost_usd == pytest.approx(recorded_spend(full.out))
    # the CLI replays too, calls nothing, and says what it saved
    fresh.control(reset_stats=True)
    res = CliRunner().invoke(__import__("xrouter_lite.cli", fromlist=["app"]).app, [
        "cache", "--simulate-from", str(full.out), "--pool", str(full.pool), "--traversal", "cost-ordered",
        "--out", str(tmp_path / "sim2.jsonl")])
    assert res.exit_code == 0, res.output
    assert "calls: 8 of 12" in res.output and "saved" in res.output
    assert fresh.stats()["requests"] == 0


def test_dry_run_estimates_each_traversal_and_calls_nothing(fresh, env):
    tmp, pool, qs = env
    res = CliRunner().invoke(__import__("xrouter_lite.cli", fromlist=["app"]).app, [
        "cache", "--dataset", str(qs), "--pool", str(pool), "--out", str(tmp / "c.jsonl"), "--dry-run",
        "--traversal", "cost-ordered", "--explore", "0.1"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "traversal" in out and "cost-ordered" in out and "(chosen)" in out and "full" in out
    assert fresh.stats()["requests"] == 0 and not (tmp / "c.jsonl").exists()


def test_budget_holds_across_runs(fresh, env):
    # each call costs 100 in + 20 out tokens; fb's ~0.00008, fa's ~0.00014; the cap counts what the file holds
    cfg = cfg_for(env, traversal="cost-ordered", budget_usd=0.0006, max_tokens=64)
    run_cache(cfg, progress=False)
    first = recorded_spend(cfg.out)
    assert 0 < first <= 0.0006 + 1e-12
    run_cache(cfg, progress=False)  # the same cap again: only what is left of it may be spent
    assert recorded_spend(cfg.out) <= 0.0006 + 1e-12


def test_kill_9_mid_cost_ordered_run_then_resume(fresh, env):
    tmp, pool, qs = env
    with qs.open("a") as f:  # 16 more questions; fb answers 7: wrong, fa right -> 2 calls each
        for i in range(16):
            f.write(json.dumps({"id": f"x{i}", "prompt": f"extra {i}", "reference": "42", "task": "gsm8k"}) + "\n")
    fresh.control(latency_s=0.15)
    out = tmp / "killed.jsonl"
    args = _cli(env, out, "--concurrency", "4", "--traversal", "cost-ordered", "--explore", "0.2")
    penv = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=penv)
    _wait_lines(out, 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = records(out)
    with out.open("a") as f:
        f.write('{"prompt_id": "x3", "dataset": "toy", "prompt": "ext')  # a torn write
    fresh.control(latency_s=0.0)
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=penv, timeout=120)
    assert res.returncode == 0, res.stderr
    after = records(out)
    assert [r.key for r in after[: len(before)]] == [r.key for r in before]  # nothing rewritten
    keys = [r.key for r in after]
    assert len(keys) == len(set(keys))  # no pair called twice
    # none lost: exactly what an uninterrupted run would hold
    expected = set()
    for q in [*REFS, *(f"x{i}" for i in range(16))]:
        if is_explored(q, 0.2, 0):
            expected |= {(q, m) for m in MODELS}
        else:
            expected |= {(q, m) for m in (EXPECTED.get(q) or ["fb", "fa"])}
    assert set(keys) == expected


def test_full_traversal_lines_keep_their_format():
    r = CacheRecord("q", "d", "p", "1", "m", "x", True)
    assert "traversal" not in json.loads(r.to_json()) and "skipped" not in json.loads(r.to_json())
    r.traversal, r.skipped = "cost-ordered", {"big": 0.01}
    back = CacheRecord.from_dict(json.loads(r.to_json()))
    assert back.traversal == "cost-ordered" and back.skipped == {"big": 0.01}


def test_evaluation_baselines_learn_from_the_explored_rows_only(repo, tmp_path):
    from xrouter_lite.evaluate import EvalConfig, evaluate, load_prompts
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.pairs import split_prompt_ids

    full = tmp_path / "full.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], full)
    pool = load_pool(repo / "configs" / "pool_routerbench.yaml")
    ids = {r.prompt_id for r in latest_records(full)}
    test_ids = split_prompt_ids(ids, 0.25, 0)
    test = tmp_path / "test.jsonl"
    test.write_text("".join(r.to_json() + "\n" for r in latest_records(full) if r.prompt_id in test_ids))
    co = tmp_path / "co.jsonl"
    rep = simulate_traversal(full, pool, "cost-ordered", explore=0.3, seed=0, out=co, ids=ids - test_ids)
    logs: list[str] = []
    out = evaluate(EvalConfig(test_cache=str(test), train_cache=str(co), out_dir=str(tmp_path / "o"),
                              baselines=["single", "best_single"], plot=False), log=logs.append)
    n_complete = out["data"]["train_complete_prompts"]
    assert rep.explored_questions <= n_complete < rep.questions
    assert any("complete (explored) questions only" in m for m in logs)
    assert len(load_prompts(co)[0]) == rep.questions


def test_cli_pairs_refuses_a_strategy_the_partial_cache_cannot_feed(fresh, env, tmp_path):
    from xrouter_lite.cli import app

    full = cfg_for(env, out=tmp_path / "full.jsonl")
    run_cache(full, progress=False)
    co = tmp_path / "co.jsonl"
    simulate_traversal(full.out, load_pool(full.pool), "cost-ordered", out=co)
    runner = CliRunner()
    res = runner.invoke(app, ["pairs", str(co), "--pool", str(full.pool), "--out-dir", str(tmp_path / "p"),
                              "--strategy", "best-vs-worst", "--tokenizer", "none"])
    assert res.exit_code == 2 and "best-vs-worst needs every question's worst model" in " ".join(res.output.split())
    res = runner.invoke(app, ["pairs", str(co), "--pool", str(full.pool), "--out-dir", str(tmp_path / "p"),
                              "--full-pool", "--lambda", "0.5", "--margin", "0", "--tokenizer", "none"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "p" / "pairs_report.json").read_text())
    assert rep["prompts_partial"] == 3 and rep["pairs_by_kind"]["implied_over_skipped"] > 0
