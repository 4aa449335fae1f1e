"""The cache stage through a provider batch API (xrouter_lite.batch) against the fake provider's /v1/files +
/v1/batches: the full and the cost-ordered traversal, batch prices, resume by polling after kill -9 (never
submitting twice, even when killed between the provider's "created" and the state file's update), the budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.test_cache import MODELS, REFS, REPO, _cli, cfg_for, records, up  # noqa: F401
from xrouter_lite.cache import CacheConfigError, run_cache
from xrouter_lite.traversal import recorded_spend

EXPECTED = {"q1": ["fb", "fa"], "q2": ["fb"], "q3": ["fb", "fa"], "q4": ["fb", "fa", "fc"]}


@pytest.fixture()
def fresh(up):
    up.control(script={m: [] for m in MODELS}, answers={"fa": "6 x 7 = 42\n#### 42", "fb": "#### 7", "fc": "So the answer is 42."},
               usage={"prompt_tokens": 100, "completion_tokens": 20}, latency_s=0.0, batch_delay_s=0.0, reset_stats=True)
    return up


def _batches(up) -> int:
    return up.stats()["batches"]


@pytest.fixture()
def env(tmp_path, up):
    pool = tmp_path / "pool.yaml"
    lines = ["models:"]
    for name, (pin, pout) in MODELS.items():
        lines += [f"  {name}:", f"    litellm_model: openai/{name}", f"    api_base: {up.base_url}",
                  f"    input_price: {pin}", f"    output_price: {pout}", "    context_window: 8192",
                  "    max_output_tokens: 2048", "    tier: budget", "    batch_discount: 0.5"]
    pool.write_text("\n".join(lines) + "\n")
    qs = tmp_path / "questions.jsonl"
    with qs.open("w") as f:
        for qid, ref in REFS.items():
            f.write(json.dumps({"id": qid, "prompt": f"Question {qid}: what is the number?", "reference": ref,
                                "task": "gsm8k", "dataset": "toy"}) + "\n")
    return tmp_path, pool, qs


def test_full_traversal_by_batch_at_the_batch_price(fresh, env):
    before = _batches(fresh)
    cfg = cfg_for(env, batch=True, batch_poll_s=0.05)
    s = run_cache(cfg, progress=False)
    recs = records(cfg.out)
    assert {r.key for r in recs} == {(q, m) for q in REFS for m in MODELS}
    for r in recs:
        pin, pout = MODELS[r.model_name]
        assert r.cost == pytest.approx(0.5 * (100 / 1e6 * pin + 20 / 1e6 * pout))  # batch_discount 0.5
        assert r.is_correct is not None and r.error is None
    assert _batches(fresh) - before == 3  # one job per model
    assert fresh.stats()["requests"] == 0  # nothing through the per-call endpoint
    assert s.traversal["jobs_collected"] == 3 and s.ok == 12
    state = json.loads(cfg.out.with_name(cfg.out.name + ".batch.json").read_text())
    assert all(j["state"] == "collected" for j in state["jobs"])
    run_cache(cfg, progress=False)  # nothing left: nothing submitted
    assert _batches(fresh) - before == 3 and len(records(cfg.out)) == 12


def test_cost_ordered_by_batch_goes_in_rounds(fresh, env):
    before = _batches(fresh)
    cfg = cfg_for(env, batch=True, batch_poll_s=0.05, traversal="cost-ordered")
    s = run_cache(cfg, progress=False)
    recs = records(cfg.out)
    assert {q: [r.model_name for r in recs if r.prompt_id == q] for q in REFS} == EXPECTED
    assert s.traversal["rounds"] == 3 and _batches(fresh) - before == 3  # fb for all; fa for 3; fc for 1
    assert {r.prompt_id: sorted(r.skipped) for r in recs if r.skipped} == {"q1": ["fc"], "q2": ["fa", "fc"], "q3": ["fc"]}


def test_a_model_without_batch_price_is_refused(fresh, env):
    tmp, pool, qs = env
    pool.write_text(pool.read_text().replace("    batch_discount: 0.5\n", "", 1))
    with pytest.raises(CacheConfigError, match="batch price"):
        run_cache(cfg_for(env, batch=True), progress=False)


def test_kill_9_while_jobs_run_then_resume_by_polling(fresh, env):
    tmp, pool, qs = env
    fresh.control(batch_delay_s=3600)  # the jobs do not finish while the first run is alive
    before = _batches(fresh)
    out = tmp / "killed.jsonl"
    args = _cli(env, out, "--batch", "--batch-poll-s", "0.05")
    penv = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=penv)
    state_file = out.with_name(out.name + ".batch.json")
    deadline = time.time() + 60
    while time.time() < deadline:
        if state_file.exists() and sum(j["state"] == "submitted" for j in json.loads(state_file.read_text())["jobs"]) == 3:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert _batches(fresh) - before == 3 and not records(out)
    fresh.control(batch_delay_s=0.0)
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=penv, timeout=120)
    assert res.returncode == 0, res.stderr
    assert _batches(fresh) - before == 3  # polled, never resubmitted
    keys = [r.key for r in records(out)]
    assert len(keys) == len(set(keys)) == 12


def test_killed_between_create_and_state_update_the_job_is_found_not_resubmitted(fresh, env):
    tmp, pool, qs = env
    out = tmp / "c.jsonl"
    # what a kill right after the provider created the job leaves: the state says "preparing" (no batch id)
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "fb", "messages": [{"role": "user", "content": f"Question {q}: what is the number?"}],
                                  "max_tokens": 64}}) for i, q in enumerate(REFS)]
    base = fresh.base_url
    fid = httpx.post(base + "/files", data={"purpose": "batch"},
                     files={"file": ("b.jsonl", ("\n".join(lines) + "\n").encode())}).json()["id"]
    httpx.post(base + "/batches", json={"input_file_id": fid, "endpoint": "/v1/chat/completions",
                                        "completion_window": "24h", "metadata": {"xrouter_tag": "T1"}}).raise_for_status()
    state = {"version": 1, "jobs": [{"tag": "T1", "model": "fb", "round": 1, "state": "preparing",
                                     "pairs": [[q, "fb"] for q in REFS], "tags": [None] * 4, "skipped": [None] * 4,
                                     "reserve_usd": 0.0, "input_file_id": fid, "batch_id": None}]}
    out.with_name(out.name + ".batch.json").write_text(json.dumps(state))
    before = _batches(fresh)
    s = run_cache(cfg_for(env, out=out, batch=True, batch_poll_s=0.05), progress=False)
    assert s.traversal["jobs_adopted"] == 1
    assert _batches(fresh) - before == 2  # fa and fc only: fb's job was found, not submitted again
    assert fresh.stats()["by_model"]["fb"] == 4
    keys = [r.key for r in records(out)]
    assert len(keys) == len(set(keys)) == 12


def test_budget_holds_with_batches_across_runs(fresh, env):
    cfg = cfg_for(env, batch=True, batch_poll_s=0.05, budget_usd=0.0004, max_tokens=64)
    s = run_cache(cfg, progress=False)
    assert s.stopped == "budget" and 0 < recorded_spend(cfg.out) <= 0.0004
    run_cache(cfg, progress=False)
    assert recorded_spend(cfg.out) <= 0.0004 + 1e-12
