"""The LLM client against a real HTTP server (FakeUpstream on 127.0.0.1): answers, pool-priced cost, retries,
time-outs, errors that must not be retried, key hygiene; and a real local Hugging Face model (slow)."""

from __future__ import annotations

import asyncio
import time

import pytest

from xrouter_lite.fake_upstream import FakeUpstream
from xrouter_lite.llm import (
    LLMCallError,
    RetryPolicy,
    acall_model,
    aclose,
    build_request_params,
    call_model,
    classify_exception,
    max_output_budget,
)
from xrouter_lite.pool import ModelSpec, Pool

FAST = RetryPolicy(max_retries=3, base_delay_s=0.02, max_delay_s=0.1, retry_after_cap_s=5.0)
MSG = [{"role": "user", "content": "What is 6 x 7?"}]


@pytest.fixture(scope="module")
def up():
    with FakeUpstream() as u:
        yield u


@pytest.fixture(params=["litellm", "direct"])
def tr(request):
    """Every behaviour is checked on both transports: litellm, and the direct POST for OpenAI-compatible servers."""
    return request.param


@pytest.fixture()
def fresh(up):
    up.control(script={n: [] for n in ("fa", "fb", "fr")}, answers={"*": "#### 42", "fa": "#### 42", "fb": "#### 42", "fr": "#### 42"}, usage=None, latency_s=0.0,
               reset_stats=True)
    return up


def spec(up, name="fa", **kw) -> ModelSpec:
    base = dict(id=name, litellm_model=f"openai/{name}", api_base=up.base_url, input_price=1.0, output_price=2.0,
                context_window=8192, max_output_tokens=1000)
    base.update(kw)
    return ModelSpec(**base)


def test_answer_and_cost_from_pool_prices_times_usage(fresh, tr):
    fresh.control(answers={"fa": "6 x 7 = 42\n#### 42"}, usage={"prompt_tokens": 1000, "completion_tokens": 500})
    s = spec(fresh, input_price=3.0, output_price=15.0)
    text, meta = call_model("fa", MSG, {"max_tokens": 64, "temperature": 0.0}, pool=Pool([s]), transport=tr)
    assert text == "6 x 7 = 42\n#### 42"
    assert (meta.input_tokens, meta.output_tokens) == (1000, 500)
    assert meta.cost == pytest.approx(1000 / 1e6 * 3.0 + 500 / 1e6 * 15.0)
    assert meta.attempts == 1 and meta.model_id == "fa" and meta.provider == "openai"
    assert meta.latency_s > 0 and not meta.usage_estimated


def test_429_with_retry_after_is_waited_then_retried(fresh, tr):
    fresh.control(script={"fa": ["429:1", "ok"]})
    t0 = time.perf_counter()
    text, meta = call_model(spec(fresh), MSG, retry_policy=FAST, transport=tr)
    assert time.perf_counter() - t0 >= 0.95  # the Retry-After of 1 s was honoured (backoff alone is 0.02 s)
    assert text == "#### 42" and meta.attempts == 2
    assert fresh.stats()["by_model"]["fa"] == 2


def test_retry_after_is_capped(fresh, tr):
    fresh.control(script={"fa": ["429:30", "ok"]})
    t0 = time.perf_counter()
    _, meta = call_model(spec(fresh), MSG, retry_policy=RetryPolicy(max_retries=2, retry_after_cap_s=0.2), transport=tr)
    assert meta.attempts == 2 and time.perf_counter() - t0 < 5


def test_5xx_and_dropped_connection_are_retried(fresh, tr):
    fresh.control(script={"fa": ["500", "503", "drop", "ok"]})
    text, meta = call_model(spec(fresh), MSG, retry_policy=FAST, transport=tr)
    assert text == "#### 42" and meta.attempts == 4


def test_retries_exhausted_raise_retryable_error(fresh, tr):
    fresh.control(script={"fa": ["500"] * 5})
    with pytest.raises(LLMCallError) as ei:
        call_model(spec(fresh), MSG, retry_policy=RetryPolicy(max_retries=2, base_delay_s=0.01), transport=tr)
    e = ei.value
    assert e.retryable and e.status == 500 and e.attempts == 3
    assert fresh.stats()["by_model"]["fa"] == 3


@pytest.mark.parametrize("step,status", [("400", 400), ("401", 401)])
def test_bad_request_and_auth_are_not_retried(fresh, step, status, tr):
    fresh.control(script={"fa": [step, "ok"]})
    with pytest.raises(LLMCallError) as ei:
        call_model(spec(fresh), MSG, retry_policy=FAST, transport=tr)
    assert ei.value.status == status and not ei.value.retryable and ei.value.attempts == 1
    assert fresh.stats()["by_model"]["fa"] == 1  # exactly one request reached the provider


def test_hang_hits_the_time_out(fresh, tr):
    fresh.control(script={"fa": ["hang"]})
    t0 = time.perf_counter()
    with pytest.raises(LLMCallError) as ei:
        call_model(spec(fresh), MSG, timeout_s=0.5, max_retries=0, transport=tr)
    assert time.perf_counter() - t0 < 4
    assert ei.value.retryable and ei.value.status == 408


def test_keys_come_from_env_and_never_show(fresh, monkeypatch, capfd, tr):
    secret = "sk-test-SECRETKEY-0123456789abcdef"
    monkeypatch.setenv("XRL_TEST_KEY", secret)
    s = spec(fresh, api_key_env="XRL_TEST_KEY")
    assert call_model(s, MSG, transport=tr)[0] == "#### 42"
    fresh.control(script={"fa": ["401"]})
    with pytest.raises(LLMCallError) as ei:
        call_model(s, MSG, retry_policy=FAST, transport=tr)
    assert secret not in str(ei.value)
    out = capfd.readouterr()
    assert secret not in out.out and secret not in out.err


def test_missing_key_env_fails_fast_without_a_request(fresh, monkeypatch):
    monkeypatch.delenv("XRL_ABSENT_KEY", raising=False)
    with pytest.raises(LLMCallError) as ei:
        call_model(spec(fresh, api_key_env="XRL_ABSENT_KEY"), MSG)
    assert "XRL_ABSENT_KEY" in str(ei.value) and not ei.value.retryable
    assert fresh.stats()["requests"] == 0


def test_error_message_scrubs_key_like_strings():
    from xrouter_lite.llm import _scrub

    msg = "401: Incorrect API key provided: sk-proj-abcdefghijklmnop. Authorization: Bearer abcdefghijkl123"
    out = _scrub(msg, ["mysecretvalue"])
    assert "sk-proj-abcdefghijklmnop" not in out and "abcdefghijkl123" not in out
    assert "mysecretvalue" not in _scrub("key mysecretvalue leaked", ["mysecretvalue"])


def test_reasoning_models_get_temperature_one_and_a_larger_budget(fresh):
    r = spec(fresh, "fr", reasoning=True, max_output_tokens=100_000)
    p = build_request_params(r, {"temperature": 0.0, "top_p": 0.9, "max_tokens": 512, "seed": 1})
    assert p == {"temperature": 1.0, "max_completion_tokens": 16384, "seed": 1}
    small = spec(fresh, "fr", reasoning=True, max_output_tokens=4096)
    assert build_request_params(small, {"max_tokens": 512})["max_completion_tokens"] == 4096
    text, meta = call_model(r, MSG, {"temperature": 0.0, "max_tokens": 512})  # accepted end to end
    assert text == "#### 42"


def test_other_models_keep_params_with_max_tokens_clipped(fresh):
    s = spec(fresh, max_output_tokens=300)
    assert build_request_params(s, {"temperature": 0.3, "max_tokens": 5000}) == {"temperature": 0.3, "max_tokens": 300}
    assert max_output_budget(s, {"max_tokens": 100}) == 100
    with pytest.raises(ValueError, match="unknown sampling"):
        build_request_params(s, {"temprature": 0.3})


def test_async_calls_run_concurrently(fresh, tr):
    fresh.control(latency_s=0.3)
    s = spec(fresh)

    async def many():
        try:
            return await asyncio.gather(*[acall_model(s, MSG, transport=tr) for _ in range(20)])
        finally:
            await aclose()

    t0 = time.perf_counter()
    res = asyncio.run(many())
    assert len(res) == 20 and all(t == "#### 42" for t, _ in res)
    assert time.perf_counter() - t0 < 3.0  # 20 x 0.3 s would be 6 s one after another


def test_transport_choice():
    from xrouter_lite.llm import uses_direct_transport

    local = ModelSpec(id="l", litellm_model="openai/l", api_base="http://127.0.0.1:1/v1", input_price=0,
                      output_price=0, context_window=10, max_output_tokens=10)
    hosted = ModelSpec(id="h", litellm_model="gpt-4o-mini", input_price=0, output_price=0, context_window=10,
                       max_output_tokens=10)
    assert uses_direct_transport(local) and not uses_direct_transport(local, "litellm")
    assert not uses_direct_transport(hosted)  # every real provider goes through litellm
    with pytest.raises(ValueError, match="direct transport needs"):
        uses_direct_transport(hosted, "direct")


def test_classification_table():
    assert classify_exception(asyncio.TimeoutError())[0] is True
    assert classify_exception(ConnectionResetError())[0] is True
    assert classify_exception(ValueError("bug"))[0] is False


@pytest.mark.slow
def test_local_hf_member_smollm2():
    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.llm import LocalHFModel

    s = ModelSpec(id="smol", litellm_model="local/smol", hf_model=str(smollm2_path()), input_price=0.1,
                  output_price=0.2, context_window=8192, max_output_tokens=24, tier="local")
    text, meta = call_model(s, [{"role": "user", "content": "What is 2+2?"}], {"max_tokens": 500})
    m = LocalHFModel.get(str(smollm2_path()))
    ids = m.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert meta.input_tokens == len(ids)
    assert 1 <= meta.output_tokens <= 24  # clipped to the model's max_output_tokens
    assert meta.cost == pytest.approx(s.cost(meta.input_tokens, meta.output_tokens))
    assert isinstance(text, str) and text.strip()
    text2, _ = call_model(s, [{"role": "user", "content": "What is 2+2?"}], {"max_tokens": 500})
    assert text2 == text  # greedy: deterministic, and the model was loaded once
    assert len(LocalHFModel._instances) == 1
