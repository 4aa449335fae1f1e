"""The cache stage's budget is a cap on the cache FILE, across runs, kills and resumes (issue 11 item 1); a budget
stop exits with the documented "stopped early" code 75 and `xrouter-lite run` stops there (item 2). Against the
local fake OpenAI server (xrouter_lite/fake_upstream.py)."""

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

from xrouter_lite.cache import CacheConfig, recorded_spend, run_cache
from xrouter_lite.cli import EXIT_STOPPED, app
from xrouter_lite.fake_upstream import FakeUpstream
from xrouter_lite.records import iter_records

REPO = Path(__file__).resolve().parent.parent
PRICE_IN, PRICE_OUT = 10.0, 30.0  # USD per 1M tokens
ACTUAL = 100 / 1e6 * PRICE_IN + 20 / 1e6 * PRICE_OUT  # what one call costs (the fake's usage: 100 in, 20 out)


@pytest.fixture(scope="module")
def up():
    with FakeUpstream() as u:
        yield u


@pytest.fixture()
def env(tmp_path, up):
    up.control(script={"fc": []}, answers={"fc": "#### 42"}, usage={"prompt_tokens": 100, "completion_tokens": 20},
               latency_s=0.0, reset_stats=True)
    pool = tmp_path / "pool.yaml"
    pool.write_text(f"""models:
  fc:
    litellm_model: openai/fc
    api_base: {up.base_url}
    input_price: {PRICE_IN}
    output_price: {PRICE_OUT}
    context_window: 8192
    max_output_tokens: 2048
""")
    qs = tmp_path / "q.jsonl"
    with qs.open("w") as f:
        for i in range(20):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"Question {i}: what is the number?", "reference": "42",
                                "task": "gsm8k"}) + "\n")
    return tmp_path, pool, qs


def _spent(path: Path) -> float:
    return sum(r.cost for _, r in iter_records(path))


def test_rerunning_the_same_command_never_records_more_than_the_cap(env, up):
    tmp, pool, qs = env
    budget = 3.5 * ACTUAL
    cfg = CacheConfig(dataset=qs, pool=pool, out=tmp / "c.jsonl", max_tokens=64, concurrency=4, budget_usd=budget)
    s1 = run_cache(cfg, progress=False)
    assert s1.stopped == "budget" and s1.ok >= 1
    first = _spent(cfg.out)
    assert first <= budget and recorded_spend(cfg.out) == pytest.approx(first)
    for _ in range(3):  # the documented way to resume, again and again
        s = run_cache(cfg, progress=False)
        assert s.stopped == "budget"
        assert s.spent_before_usd == pytest.approx(_spent(cfg.out) - s.spent_usd)
    assert _spent(cfg.out) <= budget + 1e-12  # before the fix: +first per run
    # raising the cap is the way to spend more
    s = run_cache(cfg.model_copy(update={"budget_usd": 100.0}), progress=False)
    assert s.stopped == "complete" and len(list(iter_records(cfg.out))) == 20


def _cli(env, out, budget):
    tmp, pool, qs = env
    return [sys.executable, "-m", "xrouter_lite.cli", "cache", "--dataset", str(qs), "--pool", str(pool),
            "--out", str(out), "--max-tokens", "64", "--concurrency", "2", "--no-progress",
            "--budget-usd", repr(budget)]


def test_kill_9_and_resume_stay_under_the_cap_and_the_stop_exits_75(env, up):
    tmp, pool, qs = env
    out = tmp / "killed.jsonl"
    budget = 6.5 * ACTUAL
    up.control(latency_s=0.3)
    run_env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_cli(env, out, budget), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=run_env)
    deadline = time.time() + 60
    while not (out.exists() and out.read_text().count("\n") >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    up.control(latency_s=0.0)
    for _ in range(2):
        res = subprocess.run(_cli(env, out, budget), cwd=REPO, capture_output=True, text=True, env=run_env, timeout=120)
        assert res.returncode == EXIT_STOPPED == 75, res.stderr
        assert "stopped by the budget" in res.stderr and "Traceback" not in res.stderr
    assert _spent(out) <= budget + 1e-12
    assert len(list(iter_records(out))) < 20


def test_pipeline_stops_at_a_budget_stop_with_one_line_and_exit_75(env, up, tmp_path):
    _, pool, qs = env
    cfg = tmp_path / "pipe.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"""out_dir: {out}
pool: {pool}
cache:
  generate: {{dataset: {qs}, max_tokens: 64, concurrency: 2, budget_usd: {3.5 * ACTUAL!r}}}
pairs_tokenizer: none
train: {{model_name_or_path: {REPO / 'models' / 'SmolLM2-135M-Instruct'}, max_steps: 1}}
""")
    res = CliRunner().invoke(app, ["run", "-c", str(cfg)])
    assert res.exit_code == EXIT_STOPPED, res.output
    stops = [line for line in res.output.splitlines() if line.startswith("stopped early:")]
    assert len(stops) == 1 and "budget" in stops[0] and "Traceback" not in res.output
    assert "[2/4]" not in res.output  # no pairs, no training
    assert not (out / "dpo_train_data.json").exists() and not (out / "router").exists()


def test_pipeline_stops_after_ctrl_c_in_the_cache_stage_with_exit_130(env, up, tmp_path):
    _, pool, qs = env
    cfg = tmp_path / "pipe.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"""out_dir: {out}
pool: {pool}
cache:
  generate: {{dataset: {qs}, max_tokens: 64, concurrency: 1}}
pairs_tokenizer: none
train: {{model_name_or_path: {REPO / 'models' / 'SmolLM2-135M-Instruct'}, max_steps: 1}}
""")
    up.control(latency_s=0.3)
    proc = subprocess.Popen([sys.executable, "-m", "xrouter_lite.cli", "run", "-c", str(cfg)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    cache = out / "offline_cache.jsonl"
    deadline = time.time() + 60
    while not (cache.exists() and cache.read_text().count("\n") >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    up.control(latency_s=0.0)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "[2/4]" not in stdout and not (out / "dpo_train_data.json").exists()
