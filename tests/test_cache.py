"""Stage 1, the offline cache, end to end against a real HTTP server (FakeUpstream on 127.0.0.1) with a pool of
three fake models: forced traversal and grading, pool-priced costs, errors, resume, kill -9, Ctrl-C, budget,
dry run, rate limit, and the one-record-per-pair reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrouter_lite.cache import (
    CacheConfig,
    CacheConfigError,
    compact_cache,
    estimate_cache_cost,
    latest_records,
    load_cache_config,
    run_cache,
    scan_cache,
)
from xrouter_lite.fake_upstream import FakeUpstream
from xrouter_lite.pool import load_pool
from xrouter_lite.records import CacheRecord, TokenUsage, iter_records

REPO = Path(__file__).resolve().parent.parent
MODELS = {"fa": (1.0, 2.0), "fb": (0.5, 1.5), "fc": (10.0, 30.0)}  # USD per 1M tokens (in, out)
# question id -> reference; fa answers 42, fb answers 7, fc answers 42 in prose
REFS = {"q1": "42", "q2": "7", "q3": "42", "q4": "1000"}


@pytest.fixture(scope="module")
def up():
    with FakeUpstream() as u:
        yield u


@pytest.fixture()
def fresh(up):
    up.control(
        script={m: [] for m in MODELS},
        answers={"fa": "6 x 7 = 42\n#### 42", "fb": "#### 7", "fc": "So the answer is 42."},
        usage={"prompt_tokens": 100, "completion_tokens": 20},
        latency_s=0.0,
        reset_stats=True,
    )
    return up


@pytest.fixture()
def env(tmp_path, up):
    pool = tmp_path / "pool.yaml"
    lines = ["models:"]
    for name, (pin, pout) in MODELS.items():
        lines += [f"  {name}:", f"    litellm_model: openai/{name}", f"    api_base: {up.base_url}",
                  f"    input_price: {pin}", f"    output_price: {pout}", "    context_window: 8192",
                  "    max_output_tokens: 2048", "    tier: budget"]
    pool.write_text("\n".join(lines) + "\n")
    qs = tmp_path / "questions.jsonl"
    with qs.open("w") as f:
        for qid, ref in REFS.items():
            f.write(json.dumps({"id": qid, "prompt": f"Question {qid}: what is the number?", "reference": ref,
                                "task": "gsm8k", "dataset": "toy"}) + "\n")
    return tmp_path, pool, qs


def cfg_for(env, **kw) -> CacheConfig:
    tmp, pool, qs = env
    base = dict(dataset=qs, pool=pool, out=tmp / "cache.jsonl", concurrency=4, max_tokens=64, timeout_s=5,
                max_retries=3, retry_base_delay_s=0.02)
    base.update(kw)
    return CacheConfig(**base)


def records(path) -> list[CacheRecord]:
    return [r for _, r in iter_records(path)]


@pytest.mark.parametrize("transport", ["auto", "litellm"])
def test_forced_traversal_writes_every_pair_graded_and_priced(fresh, env, transport):
    cfg = cfg_for(env, transport=transport)
    s = run_cache(cfg, progress=False)
    recs = records(cfg.out)
    assert len(recs) == len(REFS) * len(MODELS) == s.ok
    assert {r.key for r in recs} == {(q, m) for q in REFS for m in MODELS}
    answers = {"fa": "42", "fb": "7", "fc": "42"}
    for r in recs:
        assert r.error is None and r.is_correct == (answers[r.model_name] == REFS[r.prompt_id]), r
        assert r.task == "gsm8k" and r.dataset == "toy" and r.reference == REFS[r.prompt_id]
        assert (r.token_usage.prompt_tokens, r.token_usage.completion_tokens) == (100, 20)
        pin, pout = MODELS[r.model_name]
        assert r.cost == pytest.approx(100 / 1e6 * pin + 20 / 1e6 * pout)
    assert s.spent_usd == pytest.approx(sum(r.cost for r in recs))
    assert s.per_model["fb"].correct == 1 and s.per_model["fa"].correct == 2
    assert fresh.stats()["requests"] == 12


def test_a_grader_failure_keeps_the_paid_answer_and_its_cost(fresh, env, monkeypatch):
    import xrouter_lite.grading as grading

    def broken(task, text, reference):
        raise ValueError("bad reference")

    monkeypatch.setattr(grading, "is_correct", broken)
    cfg = cfg_for(env)
    s = run_cache(cfg, progress=False)
    recs = records(cfg.out)
    assert len(recs) == len(REFS) * len(MODELS) == s.errors
    for r in recs:
        assert r.error == "grading failed: ValueError: bad reference" and r.is_correct is None
        assert r.response and r.cost > 0  # the answer was paid for: kept, and counted against the budget
    assert s.spent_usd == pytest.approx(sum(r.cost for r in recs))
    assert sum(t.cost_usd for t in s.per_model.values()) == pytest.approx(s.spent_usd)


def test_models_subset_and_limit(fresh, env):
    cfg = cfg_for(env, models=["fb"], limit=2)
    run_cache(cfg, progress=False)
    assert {r.key for r in records(cfg.out)} == {("q1", "fb"), ("q2", "fb")}
    with pytest.raises(CacheConfigError, match="not in the pool"):
        run_cache(cfg_for(env, models=["nope"]), progress=False)


@pytest.mark.parametrize("transport", ["auto", "litellm"])
def test_transient_errors_are_retried_within_the_run(fresh, env, transport):
    fresh.control(script={"fa": ["429:0.3", "500", "drop", "ok"], "fb": ["503", "ok"]})
    cfg = cfg_for(env, concurrency=1, transport=transport)
    s = run_cache(cfg, progress=False)
    assert s.ok == 12 and s.errors == 0
    assert fresh.stats()["by_model"] == {"fa": 7, "fb": 5, "fc": 4}


@pytest.mark.parametrize("transport", ["auto", "litellm"])
def test_permanent_errors_and_hangs_are_recorded_then_retried_on_resume(fresh, env, transport):
    fresh.control(script={"fa": ["400"], "fb": ["401"], "fc": ["hang"]})
    cfg = cfg_for(env, concurrency=1, timeout_s=0.5, max_retries=0, transport=transport)
    s1 = run_cache(cfg, progress=False)
    assert s1.errors == 3 and s1.ok == 9
    errs = {r.model_name: r for r in records(cfg.out) if r.error}
    assert "HTTP 400" in errs["fa"].error and "not retried" in errs["fa"].error
    assert "HTTP 401" in errs["fb"].error
    assert "time-out" in errs["fc"].error
    assert all(r.response is None and r.is_correct is None and r.cost == 0 for r in errs.values())
    assert fresh.stats()["requests"] == 12  # 400/401 were not retried

    fresh.control(reset_stats=True)
    s2 = run_cache(cfg, progress=False)
    assert (s2.already_done, s2.planned, s2.errored_before, s2.ok, s2.errors) == (9, 3, 3, 3, 0)
    assert fresh.stats()["requests"] == 3  # only the errored pairs were called again
    assert len(records(cfg.out)) == 15  # append-only: the 3 error lines stay
    latest = list(latest_records(cfg.out))
    assert len(latest) == 12 and all(r.ok for r in latest)
    assert scan_cache(cfg.out).duplicate_ok == 0

    fresh.control(reset_stats=True)
    s3 = run_cache(cfg, progress=False)  # nothing left to do
    assert s3.planned == 0 and fresh.stats()["requests"] == 0


def test_budget_is_never_exceeded_and_the_next_run_continues(fresh, env):
    # worst case per fc call: (upper bound of prompt tokens) x $10/M + 64 x $30/M; actual 100 x $10/M + 20 x $30/M
    actual = 100 / 1e6 * 10 + 20 / 1e6 * 30
    budget = 2.5 * actual
    cfg = cfg_for(env, models=["fc"], budget_usd=budget, concurrency=4)
    s = run_cache(cfg, progress=False)
    spent = sum(r.cost for r in records(cfg.out))
    assert s.stopped == "budget" and s.not_scheduled > 0
    assert 1 <= s.ok < 4
    assert spent <= budget + 1e-12 and s.spent_usd == pytest.approx(spent)
    s2 = run_cache(cfg_for(env, models=["fc"], budget_usd=1.0), progress=False)
    assert s2.stopped == "complete" and s2.ok == 4 - s.ok
    assert len(list(latest_records(cfg.out))) == 4


def test_zero_budget_calls_nothing(fresh, env):
    s = run_cache(cfg_for(env, budget_usd=0.0), progress=False)
    assert s.stopped == "budget" and s.ok == 0 and fresh.stats()["requests"] == 0


def test_rate_limit_spaces_requests_per_model(fresh, env):
    cfg = cfg_for(env, models=["fa"], rate_limit_rpm=300, concurrency=4)  # one request per 0.2 s
    t0 = time.perf_counter()
    run_cache(cfg, progress=False)
    assert time.perf_counter() - t0 >= 0.55  # 4 requests: 3 gaps of 0.2 s


def test_dry_run_calls_nothing_and_prints_a_table(fresh, env):
    tmp, pool, qs = env
    from xrouter_lite.cli import app

    out = tmp / "never.jsonl"
    res = CliRunner().invoke(app, ["cache", "--dataset", str(qs), "--pool", str(pool), "--out", str(out),
                                   "--dry-run", "--max-tokens", "64"])
    assert res.exit_code == 0, res.output
    assert "estimated cost" in res.output and "TOTAL" in res.output and "fc" in res.output
    assert fresh.stats()["requests"] == 0 and not out.exists()
    rows = {r.model_id: r for r in estimate_cache_cost(cfg_for(env, max_tokens=64))}
    assert rows["fc"].pairs == 4
    assert rows["fc"].worst_case_cost_usd > rows["fc"].expected_cost_usd > rows["fa"].expected_cost_usd


def test_config_yaml_and_cli_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dataset: q.jsonl\nconcurrency: 8\nbudget_usd: 3\n")
    c = load_cache_config(p, concurrency=2, budget_usd=None)
    assert c.concurrency == 2 and c.budget_usd == 3 and c.dataset == Path("q.jsonl")
    p.write_text("concurency: 8\n")
    with pytest.raises(CacheConfigError, match=r"c\.yaml.*concurency"):
        load_cache_config(p)
    shipped = load_cache_config(REPO / "configs" / "cache_gsm8k.yaml")
    assert shipped.dataset is not None and (REPO / shipped.dataset).exists()
    assert set(shipped.models or []) <= set(load_pool(REPO / "configs" / "pool.yaml").ids)


def _rec(qid, model, error=None, correct=True):
    return CacheRecord(prompt_id=qid, dataset="d", prompt="p", reference="1", model_name=model,
                       response=None if error else "1", is_correct=None if error else correct,
                       token_usage=TokenUsage(1, 1), cost=0.0 if error else 0.1, error=error)


def test_latest_records_and_compact_keep_one_record_per_pair(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [_rec("q1", "a", error="e1"), _rec("q1", "a"), _rec("q1", "a", error="later error"),
             _rec("q2", "a", error="e1"), _rec("q2", "a", error="e2"), _rec("q3", "a")]
    path.write_text("".join(r.to_json() + "\n" for r in lines) + '{"prompt_id": "q4", "da')  # torn tail
    got = {r.key: r for r in latest_records(path)}
    assert len(got) == 3
    assert got[("q1", "a")].ok and got[("q2", "a")].error == "e2" and got[("q3", "a")].ok
    assert [r.key for r in latest_records(path, include_errors=False)] == [("q1", "a"), ("q3", "a")]
    st = compact_cache(path)
    assert (st.kept, st.dropped, st.errors_kept) == (3, 3, 1)
    assert [r.key for r in records(path)] == [("q1", "a"), ("q2", "a"), ("q3", "a")]


def _cli(env, out, *extra):
    tmp, pool, qs = env
    return [sys.executable, "-m", "xrouter_lite.cli", "cache", "--dataset", str(qs), "--pool", str(pool),
            "--out", str(out), "--max-tokens", "64", "--timeout", "10", "--no-progress", *extra]


def _wait_lines(path: Path, n: int, proc, limit_s: float = 60) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the cache process ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no progress in the cache file")


def test_kill_9_mid_run_then_resume_gives_exactly_one_record_per_pair(fresh, env):
    tmp, pool, qs = env
    with qs.open("a") as f:  # more questions: 20 x 3 = 60 pairs
        for i in range(16):
            f.write(json.dumps({"id": f"x{i}", "prompt": f"extra {i}", "reference": "42", "task": "gsm8k"}) + "\n")
    fresh.control(latency_s=0.15)
    out = tmp / "killed.jsonl"
    proc = subprocess.Popen(_cli(env, out, "--concurrency", "4"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    _wait_lines(out, 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    n_before = len(records(out))
    assert 8 <= n_before < 60
    with out.open("a") as f:  # what a kill in the middle of a write leaves
        f.write('{"prompt_id": "x3", "dataset": "toy", "prompt": "ext')
    fresh.control(latency_s=0.0)
    res = subprocess.run(_cli(env, out, "--concurrency", "4"), cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "torn last line" in res.stderr
    all_lines = records(out)
    assert len(all_lines) == 60  # nothing re-called that was already answered
    keys = [r.key for r in all_lines if r.ok]
    assert len(keys) == len(set(keys)) == 60  # no duplicated successful pair in the file
    assert len(list(latest_records(out))) == 60


def test_ctrl_c_stops_cleanly_and_the_run_resumes(fresh, env):
    tmp, pool, qs = env
    fresh.control(latency_s=0.4)
    out = tmp / "interrupted.jsonl"
    proc = subprocess.Popen(_cli(env, out, "--concurrency", "2"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    _wait_lines(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = records(out)
    assert 2 <= len(done) < 12 and all(r.ok for r in done)
    fresh.control(latency_s=0.0)
    s = run_cache(CacheConfig(dataset=qs, pool=pool, out=out, max_tokens=64), progress=False)
    assert s.already_done == len(done) and s.ok == 12 - len(done)
    assert len(list(latest_records(out))) == 12


def test_two_runs_on_one_file_are_refused(fresh, env):
    import fcntl

    cfg = cfg_for(env)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    with open(cfg.out, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # what a running cache stage holds
        with pytest.raises(CacheConfigError, match="another cache run"):
            run_cache(cfg, progress=False)
    assert fresh.stats()["requests"] == 0
    assert run_cache(cfg, progress=False).ok == 12  # the lock is gone with its holder
