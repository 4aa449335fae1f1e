"""The routing server, driven like a user would: the official ``openai`` client (and raw httpx for bad input)
against a real uvicorn server, whose chosen models answer through a local OpenAI-protocol upstream
(``FakeUpstream``) that can be slow, fail or hang."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from starlette.requests import Request  # module level: FastAPI resolves handler annotations here

from xrouter_lite.fake_upstream import FakeUpstream
from xrouter_lite.pool import ModelSpec, Pool
from xrouter_lite.router import BaseRouter, Decision, ScoredDecision
from xrouter_lite.serve import Scrubber, ServeSettings, create_app

MODELS = ("cheap", "mid", "strong", "spare")
ANSWERS = {"cheap": "cheap says 4", "mid": "mid says 4", "strong": "strong says: the answer is 4, because 2 + 2 = 4.",
           "spare": "spare says 4"}
PRICES = {"cheap": (0.1, 0.4), "mid": (1.0, 4.0), "strong": (5.0, 20.0), "spare": (0.5, 2.0)}
QUALITY = {  # the test router's score of each model on "hard" and on other queries
    "hard": {"cheap": 0.2, "mid": 0.6, "strong": 0.9, "spare": 0.4},
    "easy": {"cheap": 0.9, "mid": 0.7, "strong": 0.6, "spare": 0.5},
}


class KeywordRouter(BaseRouter):
    """A small real router: score = quality(query kind, model) - tau * normalised price. Queries containing
    "hard" favour the strong model, others the cheap one; a large tau favours cheap models. Records every batch."""

    name = "keyword"

    def __init__(self, delay_s: float = 0.0, fail: bool = False, invalid: bool = False):
        self.delay_s = delay_s
        self.fail = fail
        self.invalid = invalid
        self.batches: list[int] = []
        self.queries: list[str] = []
        self.taus: list[float | None] = []  # the first batch of every server is its start-up warm-up

    def route_batch(self, queries, offered, tau=None):
        self.batches.append(len(queries))
        self.taus.append(tau)
        self.queries.extend(queries)
        if self.delay_s:
            time.sleep(self.delay_s)  # one "forward pass" per batch
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        out = []
        for q, off in zip(queries, offered, strict=True):
            kind = "hard" if "hard" in q else "easy"
            top = max(sum(PRICES[s.id]) for s in off)
            scores = {s.id: QUALITY[kind][s.id] - (tau or 0.0) * sum(PRICES[s.id]) / top for s in off}
            best = max(scores, key=scores.get)
            if self.invalid:
                out.append(Decision("cheap", scores, valid=False, invalid_reason="bad_json"))
            else:  # what it was decided from: quality before cost, the normalised cost vector tau multiplies
                out.append(ScoredDecision(best, scores, base_scores={s.id: QUALITY[kind][s.id] for s in off},
                                          costs={s.id: sum(PRICES[s.id]) / top for s in off}, tau=tau or 0.0))
        return out

    def route(self, query, offered, tau=None):
        return self.route_batch([query], [offered], tau)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A uvicorn server in a thread of this process, on a free port of 127.0.0.1."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream(answers=ANSWERS) as up:
        yield up


@pytest.fixture()
def up(upstream):
    upstream.control(latency_s=0.0, script={m: [] for m in MODELS}, usage=None, reset_stats=True)
    return upstream


def make_pool(base_url: str, **extra) -> Pool:
    return Pool([
        ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=base_url, input_price=PRICES[m][0],
                  output_price=PRICES[m][1], context_window=8192, max_output_tokens=1024, **extra.get(m, {}))
        for m in MODELS
    ], source="<memory>")


def serve(up, router=None, pool=None, **settings) -> LiveServer:
    settings.setdefault("upstream_timeout_s", 5.0)
    return LiveServer(create_app(pool=pool or make_pool(up.base_url), router=router or KeywordRouter(),
                                 settings=ServeSettings(**settings)))


TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "litellm"])  # direct (aiohttp) path and litellm path
USER = [{"role": "user", "content": "What is 2+2?"}]
HARD = [{"role": "user", "content": "A hard problem: what is 2+2?"}]


# ---- the happy path ------------------------------------------------------------------------------------------------


@TRANSPORTS
def test_router_choice_answer_metadata_and_headers(up, transport):
    with serve(up, upstream_transport=transport) as srv:
        client = srv.client()
        raw = client.chat.completions.with_raw_response.create(model="router", messages=HARD, max_tokens=50)
        r = raw.parse()
        assert r.model == "strong" and r.choices[0].message.content == ANSWERS["strong"]
        md = r.router_metadata
        assert set(md) == {"model_used", "total_cost", "router_cost", "target_models_cost", "routing_strategy",
                           "candidates", "call_history", "total_time"}
        assert md["model_used"] == "strong" and md["routing_strategy"] == "delegate_to_model"
        assert md["router_cost"] == 0.0
        assert [c["model_id"] for c in md["candidates"]] == ["strong", "mid", "spare", "cheap"]
        scores = [c["score"] for c in md["candidates"]]
        assert scores == sorted(scores, reverse=True)
        (call,) = md["call_history"]
        assert call["model_id"] == "strong" and call["error"] is None and call["latency"] > 0
        assert call["tokens"] == {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens}
        expected = (r.usage.prompt_tokens * 5.0 + r.usage.completion_tokens * 20.0) / 1e6
        assert md["target_models_cost"] == pytest.approx(expected) and md["total_cost"] == pytest.approx(expected)
        assert raw.headers["x-router-model"] == "strong"
        assert float(raw.headers["x-router-cost"]) == pytest.approx(expected)
        assert md["total_time"] > 0 and r.id.startswith("chatcmpl-")
        # an easy question goes to the cheap model; the upstream saw exactly what the client sent
        r2 = client.chat.completions.create(model="router", messages=USER)
        assert r2.model == "cheap" and r2.choices[0].message.content == ANSWERS["cheap"]
    assert up.stats()["by_model"] == {"strong": 1, "cheap": 1}


def test_tau_in_model_name_and_request_subset(up):
    router = KeywordRouter()
    with serve(up, router=router, tau=0.0) as srv:
        client = srv.client()
        assert client.chat.completions.create(model="router", messages=HARD).model == "strong"
        r = client.chat.completions.create(model="router-5", messages=HARD)  # cost weighs: cheap wins
        assert r.model == "cheap"
        assert router.taus[-2:] == [0.0, 5.0]
        r = client.chat.completions.create(model="router", messages=HARD, extra_body={"models": ["cheap", "mid"]})
        assert r.model == "mid"
        assert [c["model_id"] for c in r.router_metadata["candidates"]] == ["mid", "cheap"]


def test_bypass_names_a_pool_model(up):
    router = KeywordRouter()
    with serve(up, router=router) as srv:
        r = srv.client().chat.completions.create(model="mid", messages=HARD)
        assert r.model == "mid" and r.choices[0].message.content == ANSWERS["mid"]
        md = r.router_metadata
        assert md["routing_strategy"] == "bypass" and md["candidates"] == [] and len(md["call_history"]) == 1
    assert router.batches == [1] and router.queries[0].startswith("warm-up")  # only the start-up warm-up


def test_router_sees_the_documented_conversation_summary(up):
    router = KeywordRouter()
    convo = [{"role": "system", "content": "SYSTEM SECRET PROMPT"},
             {"role": "user", "content": "x" * 1000},
             {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "Now the hard part: 2+2?"}]
    with serve(up, router=router) as srv:
        r = srv.client().chat.completions.create(model="router", messages=convo)
    assert r.model == "strong"
    warm, q = router.queries
    assert q.endswith("Now the hard part: 2+2?") and "Earlier conversation" in q
    assert "SYSTEM SECRET PROMPT" not in q and "x" * 300 not in q  # earlier turns are cut to 300 characters


def test_models_and_health(up):
    with serve(up) as srv:
        ids = [m.id for m in srv.client().models.list()]
        assert ids[0] == "router" and ids[1:] == list(MODELS)
        h = httpx.get(srv.url + "/health").json()
        assert h["status"] == "ok" and h["router_loaded"] is True and h["pool"]["readable"] is True
        assert h["pool"]["models"] == 4


def test_router_factory_and_health_for_a_missing_pool_file(up, tmp_path):
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text("models: {}")
    pool = Pool(list(make_pool(up.base_url)), source=str(pool_file))
    app = create_app(pool=pool, router_factory=lambda s, p: KeywordRouter(), settings=ServeSettings())
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/health").json()["router"] == "keyword"
        pool_file.unlink()
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 503 and h.json()["pool"]["readable"] is False


# ---- faults ---------------------------------------------------------------------------------------------------------


@TRANSPORTS
def test_fallback_on_provider_error_and_on_hang(up, transport):
    up.control(script={"strong": ["500"], "mid": ["hang"]})
    with serve(up, upstream_timeout_s=1.0, upstream_transport=transport) as srv:
        t = time.perf_counter()
        r = srv.client().chat.completions.create(model="router", messages=HARD)
        took = time.perf_counter() - t
    md = r.router_metadata
    assert r.model == "spare" and md["routing_strategy"] == "fallback"  # third by score
    hist = md["call_history"]
    assert [c["model_id"] for c in hist] == ["strong", "mid", "spare"]
    assert "500" in hist[0]["error"] and "time-out" in hist[1]["error"] and hist[2]["error"] is None
    assert hist[0]["cost"] == 0.0 and hist[1]["latency"] >= 0.9
    assert 1.0 <= took < 4.0


@TRANSPORTS
def test_every_try_fails_gives_502_with_the_call_history(up, transport):
    up.control(script={m: ["500", "500"] for m in MODELS})
    with serve(up, max_fallback_tries=2, upstream_transport=transport) as srv:
        with pytest.raises(openai.APIStatusError) as ei:
            srv.client().chat.completions.create(model="router", messages=HARD)
    e = ei.value
    assert e.status_code == 502
    body = e.response.json()
    assert body["error"]["type"] == "upstream_error"
    hist = body["router_metadata"]["call_history"]
    assert [c["model_id"] for c in hist] == ["strong", "mid"]  # at most N tries
    assert up.stats()["by_model"] == {"strong": 1, "mid": 1}


@TRANSPORTS
def test_all_timeouts_give_504(up, transport):
    up.control(script={"cheap": ["hang"]})
    with serve(up, upstream_timeout_s=0.5, upstream_transport=transport) as srv:
        with pytest.raises(openai.APIStatusError) as ei:
            srv.client().chat.completions.create(model="cheap", messages=USER)
    assert ei.value.status_code == 504 and ei.value.response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize("router", [KeywordRouter(fail=True), KeywordRouter(invalid=True), KeywordRouter(delay_s=1.5)],
                         ids=["raises", "unusable-answer", "too-slow"])
def test_a_failing_router_means_the_default_model(up, router):
    with serve(up, router=router, default_model="mid", router_timeout_s=0.5) as srv:
        r = srv.client().chat.completions.create(model="router", messages=HARD)
        assert r.model == "mid" and r.router_metadata["routing_strategy"] == "fallback"
        assert r.router_metadata["candidates"] == []


# ---- streaming ------------------------------------------------------------------------------------------------------


@TRANSPORTS
def test_streaming_chunks_and_metadata_in_the_last_chunk(up, transport):
    with serve(up, upstream_transport=transport) as srv:
        chunks = list(srv.client().chat.completions.create(model="router", messages=HARD, stream=True,
                                                           stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWERS["strong"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed in pieces
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens > 0  # asked for: stream_options.include_usage
    md = last.router_metadata
    assert md["model_used"] == "strong" and md["routing_strategy"] == "delegate_to_model"
    assert md["total_cost"] == pytest.approx((last.usage.prompt_tokens * 5 + last.usage.completion_tokens * 20) / 1e6)
    assert {c.model for c in chunks} == {"strong"}
    finish = chunks[-2]  # the last chunk with choices carries the metadata too
    assert finish.choices[0].finish_reason == "stop" and finish.router_metadata == md


@TRANSPORTS
def test_streaming_falls_back_before_the_first_token(up, transport):
    up.control(script={"strong": ["500"]})
    with serve(up, upstream_transport=transport) as srv:
        resp = httpx.post(srv.url + "/v1/chat/completions", json={"model": "router", "messages": HARD, "stream": True},
                          timeout=10)
    assert resp.status_code == 200 and resp.headers["x-router-model"] == "mid"
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.rstrip().endswith("data: [DONE]")
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    md = events[-1]["router_metadata"]
    assert md["model_used"] == "mid" and md["routing_strategy"] == "fallback"
    assert [c["model_id"] for c in md["call_history"]] == ["strong", "mid"]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == ANSWERS["mid"]


# ---- budgets ------------------------------------------------------------------------------------------------------


def test_request_budget_limits_the_offered_models_and_402_when_nothing_fits(up):
    with serve(up) as srv:
        client = srv.client()
        # max_tokens=100: strong would cost ~ 100 * 20 / 1e6 = 2e-3 > 1e-3; mid ~ 4e-4 fits
        r = client.chat.completions.create(model="router", messages=HARD, max_tokens=100,
                                           extra_body={"max_cost_usd": 1e-3})
        assert r.model == "mid" and "strong" not in [c["model_id"] for c in r.router_metadata["candidates"]]
        with pytest.raises(openai.APIStatusError) as ei:
            client.chat.completions.create(model="router", messages=HARD, max_tokens=100,
                                           extra_body={"max_cost_usd": 1e-9})
        assert ei.value.status_code == 402
        assert ei.value.response.json()["error"]["code"] == "request_budget_exceeded"


def test_server_budget_is_accounted_and_enforced(up):
    up.control(usage={"prompt_tokens": 100, "completion_tokens": 100})  # each cheap call costs 5e-5 USD
    with serve(up, server_budget_usd=1.2e-4, expected_output_tokens=100) as srv:
        client = srv.client()
        for _ in range(2):
            assert client.chat.completions.create(model="cheap", messages=USER).model == "cheap"
        with pytest.raises(openai.APIStatusError) as ei:
            client.chat.completions.create(model="cheap", messages=USER)
        assert ei.value.status_code == 402
        assert ei.value.response.json()["error"]["code"] == "server_budget_exhausted"
        budget = httpx.get(srv.url + "/health").json()["budget"]
    assert budget["spent_usd"] == pytest.approx(1e-4) and budget["reserved_usd"] == 0.0
    assert up.stats()["by_model"] == {"cheap": 2}


# ---- bad input and security -------------------------------------------------------------------------------------


def _assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_bad_input_gets_openai_style_errors(up):
    with serve(up, max_body_bytes=4096) as srv:
        url = srv.url + "/v1/chat/completions"
        post = lambda **kw: httpx.post(url, timeout=10, **kw)  # noqa: E731
        _assert_openai_error(post(content=b'{"model": "router", "messages": [', headers={"content-type": "application/json"}),
                             400, "invalid_json")
        _assert_openai_error(post(content=b"[1, 2]"), 400, "invalid_json")
        _assert_openai_error(post(content=b""), 400, "invalid_json")
        e = _assert_openai_error(post(json={"model": "router"}), 400, "missing_required_parameter")
        assert e["param"] == "messages"
        _assert_openai_error(post(json={"model": "router", "messages": []}), 400)
        _assert_openai_error(post(json={"model": "router", "messages": [{"content": "no role"}]}), 400)
        e = _assert_openai_error(post(json={"model": "gpt-9", "messages": USER}), 404, "model_not_found")
        assert "router" in e["message"] and "cheap" in e["message"]
        e = _assert_openai_error(post(json={"model": "router-abc", "messages": USER}), 400, "invalid_model")
        assert "router-0.5" in e["message"]
        _assert_openai_error(post(json={"model": "router-nan", "messages": USER}), 400, "invalid_model")
        e = _assert_openai_error(post(json={"model": "router", "messages": USER, "models": ["cheap", "nope"]}), 400)
        assert e["param"] == "models" and "nope" in e["message"] and "strong" in e["message"]
        _assert_openai_error(post(json={"model": "router", "messages": [{"role": "system", "content": "hi"}]}), 400)
        _assert_openai_error(post(json={"model": "router", "messages": USER, "n": 3}), 400, "unsupported_value")
        _assert_openai_error(post(json={"model": "router", "messages": USER, "tools": [{"type": "function"}]}), 400)
        _assert_openai_error(post(json={"model": "router", "messages": USER, "logprobs": True}), 400,
                             "unsupported_parameter")
        big = {"model": "router", "messages": [{"role": "user", "content": "x" * 10_000}]}
        _assert_openai_error(post(json=big), 413, "request_too_large")

        def chunked():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b"x" * 1000

        _assert_openai_error(post(content=chunked()), 413, "request_too_large")
        _assert_openai_error(httpx.get(url), 405)
        _assert_openai_error(httpx.get(srv.url + "/v1/nothing"), 404)
        # the server is unharmed
        r = post(json={"model": "router", "messages": USER})
        assert r.status_code == 200 and r.json()["model"] == "cheap"
    assert up.stats()["requests"] == 1


def test_bearer_token_auth(up, monkeypatch):
    monkeypatch.setenv("XROUTER_TEST_SERVER_KEY", "unused")
    with serve(up, api_key="s3cret-server-token") as srv:
        with pytest.raises(openai.AuthenticationError) as ei:
            srv.client(api_key="wrong").chat.completions.create(model="router", messages=USER)
        assert "s3cret" not in ei.value.response.text
        with pytest.raises(openai.AuthenticationError):
            srv.client(api_key="wrong").models.list()
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "router", "messages": USER})
        _assert_openai_error(r, 401, "invalid_api_key")
        assert srv.client(api_key="s3cret-server-token").chat.completions.create(
            model="router", messages=USER).model == "cheap"
        assert httpx.get(srv.url + "/health").status_code == 200


class EchoKeyUpstream:
    """A careless provider that quotes the API key it received in its error message."""

    def __init__(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(req: Request):
            key = req.headers.get("authorization", "")
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error",
                                           "code": "invalid_api_key"}}, status_code=401)

        self.live = LiveServer(app)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)


@TRANSPORTS
def test_provider_keys_are_never_echoed_or_logged(up, monkeypatch, caplog, transport):
    secret = "prov-K3Y-9f8e7d6c5b4a"
    monkeypatch.setenv("XR_TEST_PROVIDER_KEY", secret)
    with EchoKeyUpstream() as leaky:
        specs = list(make_pool(up.base_url))
        specs[0] = ModelSpec(id="cheap", litellm_model="openai/cheap", api_base=leaky.live.url + "/v1",
                             api_key_env="XR_TEST_PROVIDER_KEY", input_price=0.1, output_price=0.4,
                             context_window=8192, max_output_tokens=1024)
        pool = Pool(specs)
        caplog.set_level(logging.DEBUG)
        with serve(up, pool=pool, upstream_transport=transport) as srv:
            r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "router", "messages": USER}, timeout=10)
            assert r.status_code == 200  # fell back from cheap to the next candidate
            hist = r.json()["router_metadata"]["call_history"]
            assert hist[0]["model_id"] == "cheap" and "401" in hist[0]["error"]
            assert secret not in r.text
            r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "cheap", "messages": USER}, timeout=10)
            assert r.status_code == 502 and secret not in r.text and "Incorrect API key" in r.text
            r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "cheap", "messages": USER, "stream": True},
                           timeout=10)
            assert r.status_code == 502 and secret not in r.text
    assert secret not in caplog.text
    assert Scrubber(pool)(f"key={secret} and sk-abcdefghijkl") == "key=*** and ***"


# ---- concurrency ---------------------------------------------------------------------------------------------------


def test_concurrent_decisions_are_batched_and_a_slow_upstream_blocks_nobody(up):
    router = KeywordRouter(delay_s=0.2)  # a slow "GPU forward pass" per batch
    up.control(script={"strong": ["slow:3"]})

    async def go(url: str):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        slow = asyncio.create_task(client.chat.completions.create(model="strong", messages=USER))
        await asyncio.sleep(0.3)
        t = time.perf_counter()
        rs = await asyncio.gather(*[client.chat.completions.create(model="router", messages=USER) for _ in range(12)])
        fast = time.perf_counter() - t
        async with httpx.AsyncClient() as h:
            t = time.perf_counter()
            assert (await h.get(url + "/health")).status_code == 200
            health_s = time.perf_counter() - t
        assert not slow.done()
        await slow
        await client.close()
        return rs, fast, health_s

    with serve(up, router=router, max_router_batch=16, batch_window_ms=20) as srv:
        rs, fast, health_s = asyncio.run(go(srv.url))
    assert all(r.model == "cheap" for r in rs)
    batches = router.batches[1:]  # after the start-up warm-up decision
    assert sum(batches) == 12 and len(batches) <= 3 and max(batches) >= 6
    assert fast < 2.0 and health_s < 0.5  # while the 3 s upstream call is still running


def test_full_router_queue_answers_503_with_retry_after(up):
    router = KeywordRouter(delay_s=0.5)

    async def go(url):
        async with httpx.AsyncClient(timeout=10) as h:
            return await asyncio.gather(*[
                h.post(url + "/v1/chat/completions", json={"model": "router", "messages": USER}) for _ in range(6)])

    with serve(up, router=router, max_router_batch=1, max_router_queue=1, batch_window_ms=0) as srv:
        rs = asyncio.run(go(srv.url))
    codes = sorted(r.status_code for r in rs)
    assert 200 in codes and 503 in codes, codes
    rejected = next(r for r in rs if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["code"] == "overloaded"


# ---- the real router ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_adapter(tmp_path_factory):
    """A freshly initialised LoRA adapter on the real SmolLM2-135M (peft's default init), saved like training does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path

    base = str(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    d = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(d))
    return d


@pytest.mark.slow
def test_real_lora_router_through_the_cli(up, fresh_adapter, tmp_path):
    """`xrouter-lite serve` with a real LoRA adapter on SmolLM2 (CPU): the router scores every offered model,
    router-<tau> moves the choice to the cheapest, and Ctrl-C stops the server cleanly."""
    import math
    import signal
    import subprocess
    import sys

    import yaml

    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump({"models": {
        m: {"litellm_model": f"openai/{m}", "api_base": up.base_url, "input_price": PRICES[m][0],
            "output_price": PRICES[m][1], "context_window": 8192, "max_output_tokens": 1024} for m in MODELS}}))
    port = _free_port()
    env = {**__import__("os").environ, "XROUTER_API_KEY": "tok-123456", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrouter_lite.cli", "serve", "--adapter", str(fresh_adapter), "--pool", str(pool_file),
         "--port", str(port), "--device", "cpu", "--log-level", "warning", "--router-timeout-s", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="tok-123456", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="router", messages=HARD)
        r = raw.parse()
        md = r.router_metadata
        assert r.model in MODELS and md["routing_strategy"] == "delegate_to_model"
        assert sorted(c["model_id"] for c in md["candidates"]) == sorted(MODELS)
        assert all(c["score"] < 0 and math.isfinite(c["score"]) for c in md["candidates"])  # log-probabilities
        assert float(raw.headers["x-router-decision-ms"]) > 0
        print("decision ms (CPU, 4 offered):", raw.headers["x-router-decision-ms"])
        r = client.chat.completions.create(model="router-1000", messages=HARD)
        assert r.model == "cheap"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), out
    assert "Traceback" not in out and "tok-123456" not in out


def test_overhead_benchmark_runs_and_reports(tmp_path):
    """bench/serve_overhead.py end to end, kept short (the recorded figures use 50 clients for 30 s)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(root / "bench" / "serve_overhead.py"), "--seconds", "1", "--clients", "4",
                        "--warmup-s", "0.2", "--latency-ms", "20", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "added excluding the decision" in p.stdout and "not measured" in p.stdout
    rep = json.loads(out.read_text())
    assert rep["failed"] == 0 and rep["direct"]["requests"] > 0 and rep["routed"]["requests"] > 0
    assert rep["router_decision"] is None
    for k in ("added_p50_ms", "added_p99_ms", "added_excl_decision_p50_ms", "decision_p50_ms"):
        assert isinstance(rep[k], float)


def test_a_generate_mode_router_has_no_cost_knob(up):
    router = KeywordRouter()
    router.mode = "generate"
    with serve(up, router=router) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "router-0.5", "messages": USER}, timeout=10)
        e = _assert_openai_error(r, 400, "invalid_model")
        assert "generate" in e["message"]
        assert srv.client().chat.completions.create(model="router", messages=USER).model == "cheap"


# ---- request validation (issue 11: 3, 10) ---------------------------------------------------------------------


BAD_TOKEN_CAPS = ["abc", [5], float("nan"), float("inf"), -5, 0, 1.5, True, {"n": 1}]


def test_max_tokens_that_is_not_a_positive_integer_is_a_400_never_a_500(up):
    """Every bad max_tokens / max_completion_tokens, streamed or not, routed or named: 400 in OpenAI's format,
    and no upstream call (so no cost is estimated negative and no budget is passed)."""
    with serve(up, server_budget_usd=1e-4) as srv:
        url = srv.url + "/v1/chat/completions"
        with httpx.Client(timeout=10) as h:
            for key in ("max_tokens", "max_completion_tokens"):
                for bad in BAD_TOKEN_CAPS:
                    for stream in (False, True):
                        for model in ("router", "cheap"):
                            body = json.dumps({"model": model, "messages": USER, "stream": stream, key: bad})
                            r = h.post(url, content=body, headers={"content-type": "application/json"})
                            e = _assert_openai_error(r, 400)
                            assert e["code"] in ("invalid_value", "invalid_json"), (key, bad, e)
        assert httpx.get(srv.url + "/health").json()["budget"] == {
            "server_limit_usd": 1e-4, "spent_usd": 0.0, "reserved_usd": 0.0}
    assert up.stats()["requests"] == 0


def test_cost_estimates_are_never_negative():
    from xrouter_lite.serve import estimate_cost

    spec = make_pool("http://127.0.0.1:1/v1").get("strong")
    for params in ({"max_tokens": -5}, {"max_completion_tokens": -1000}, {"max_tokens": "abc"}, {"max_tokens": 1.5},
                   {"max_tokens": float("nan")}, {}):
        assert estimate_cost(spec, USER, params, 100) > 0


MALFORMED_BODIES = [
    {"model": 5, "messages": USER}, {"model": "", "messages": USER}, {"model": None, "messages": USER},
    {"model": "router", "messages": "hi"}, {"model": "router", "messages": {"role": "user"}},
    {"model": "router", "messages": [5]}, {"model": "router", "messages": [None]},
    {"model": "router", "messages": [{"role": "user", "content": 5}]},
    {"model": "router", "messages": [{"role": "user", "content": {"text": "x"}}]},
    {"model": "router", "messages": [{"role": "user", "content": [5]}]},
    {"model": "router", "messages": [{"role": 7, "content": "x"}]},
    {"model": "router", "messages": [{"role": "wizard", "content": "x"}]},
    {"model": "router", "messages": [{"role": "assistant", "content": "x"}]},
    {"model": "router", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "router", "messages": USER + [{"role": "assistant", "tool_calls": "x"}]},
    {"model": "router", "messages": USER + [{"role": "assistant", "tool_calls": [5]}]},
    {"model": "router", "messages": USER, "stream": "yes"}, {"model": "router", "messages": USER, "stream": 2},
    {"model": "router", "messages": USER, "stream_options": {"include_usage": True}},
    {"model": "router", "messages": USER, "stream": True, "stream_options": "x"},
    {"model": "router", "messages": USER, "stream": True, "stream_options": {"include_usage": "x"}},
    {"model": "router", "messages": USER, "n": "2"}, {"model": "router", "messages": USER, "n": 2},
    {"model": "router", "messages": USER, "models": "cheap"}, {"model": "router", "messages": USER, "models": [1]},
    {"model": "router", "messages": USER, "models": []},
    {"model": "router", "messages": USER, "max_cost_usd": "x"}, {"model": "router", "messages": USER, "max_cost_usd": -1},
    {"model": "router", "messages": USER, "max_cost_usd": [1]},
    {"model": "router", "messages": USER, "temperature": "hot"}, {"model": "router", "messages": USER, "top_p": [1]},
    {"model": "router", "messages": USER, "seed": 1.5}, {"model": "router", "messages": USER, "stop": 5},
    {"model": "router", "messages": USER, "logit_bias": {"1": "x"}}, {"model": "router", "messages": USER, "user": 5},
    {"model": "router", "messages": USER, "response_format": "json"},
    {"model": "router", "messages": USER, "tools": "x"}, {"model": "router", "messages": USER, "tools": [5]},
    {"model": "router", "messages": USER, "tools": [{"type": "function", "function": {"name": 5}}]},
    {"model": "router", "messages": USER, "tool_choice": 5},
    {"model": "router", "messages": USER, "parallel_tool_calls": "x"},
    {"model": "router", "messages": USER, "logprobs": True}, {"model": "router", "messages": USER, "top_logprobs": 3},
    {"model": "router", "messages": USER, "functions": [{"name": "f"}]},
    {"model": "router", "messages": USER, "function_call": "auto"},
    {"model": "router", "messages": USER, "no_such_field": 1},
    {"model": "router-1e999", "messages": USER}, {"model": "router-", "messages": USER},
    {"model": "x" * 5000, "messages": USER}, {"model": "cheap", "messages": USER, "max_tokens": -1},
]


def test_no_request_body_gets_a_5xx(up):
    raw_bodies = [b"NaN", b'{"model": "router", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                  b'{"model": "router", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"\xff\xfe", b"null",
                  b'"router"', b'{"model": "router", "messages": [{"role": "user", "content": "\\ud800"}], "x": 1}']
    with serve(up) as srv:
        url = srv.url + "/v1/chat/completions"
        with httpx.Client(timeout=10) as h:
            for body in MALFORMED_BODIES:
                r = h.post(url, json=body)
                assert r.status_code in (400, 404), (body, r.status_code, r.text[:300])
                e = _assert_openai_error(r, r.status_code)
                assert e["message"]
            for raw in raw_bodies:
                r = h.post(url, content=raw, headers={"content-type": "application/json"})
                _assert_openai_error(r, 400)
            assert h.post(url, json={"model": "router", "messages": USER}).status_code == 200
    assert up.stats()["requests"] == 1


def test_unsupported_fields_are_refused_and_supported_ones_passed_on_unchanged(up):
    with serve(up) as srv:
        client = srv.client()
        for extra, word in (({"logprobs": True}, "log-probabilities"), ({"top_logprobs": 2}, "log-probabilities"),
                            ({"n": 2}, "n=1"), ({"functions": [{"name": "f"}]}, "tools"),
                            ({"modalities": ["audio"]}, "unknown"), ({"store": True}, "unknown")):
            with pytest.raises(openai.BadRequestError) as ei:
                client.chat.completions.create(model="router", messages=USER, extra_body=extra)
            err = ei.value.response.json()["error"]
            assert err["param"] == next(iter(extra)) and word in err["message"], err
        r = client.chat.completions.create(
            model="cheap", messages=USER, temperature=0.3, top_p=0.9, seed=7, stop=["\n\n"], max_completion_tokens=40,
            response_format={"type": "json_object"}, user="u1", logprobs=False, n=1)
        assert r.model == "cheap"
    sent = up.stats()["last_body"]["cheap"]
    assert {k: sent[k] for k in ("temperature", "top_p", "seed", "stop", "response_format", "user")} == {
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n\n"], "response_format": {"type": "json_object"},
        "user": "u1"}
    assert sent["max_tokens"] == 40 and "logprobs" not in sent and "n" not in sent


# ---- budgets (issue 11: 4) --------------------------------------------------------------------------------------


def test_a_request_over_the_whole_server_budget_says_so_not_exhausted(up):
    with serve(up, server_budget_usd=1e-6) as srv:
        with pytest.raises(openai.APIStatusError) as ei:
            srv.client().chat.completions.create(model="strong", messages=USER, max_tokens=500)
        err = ei.value.response.json()["error"]
        assert ei.value.status_code == 402 and err["code"] == "server_budget_exceeded"
        assert "exceeds the server's whole budget" in err["message"] and "exhausted" not in err["message"]
    assert up.stats()["requests"] == 0


# ---- streaming as OpenAI does it (issue 11: 9, 10) --------------------------------------------------------------


@TRANSPORTS
def test_streaming_without_include_usage_works_with_the_common_client_loop(up, transport):
    with serve(up, upstream_transport=transport) as srv:
        client = srv.client()
        raw = client.chat.completions.with_raw_response.create(model="router", messages=HARD, stream=True)
        assert "x-router-cost" not in raw.headers  # a stream's cost is known only at its end
        text = ""
        chunks = list(raw.parse())
        for c in chunks:  # the loop every tutorial shows: no chunk without choices
            text += c.choices[0].delta.content or ""
        assert text == ANSWERS["strong"]
        assert all(c.usage is None for c in chunks)
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop"
        md = last.router_metadata
        assert md["model_used"] == "strong" and md["total_cost"] > 0 and len(md["call_history"]) == 1
        # not streamed: the header is a number
        raw = client.chat.completions.with_raw_response.create(model="router", messages=HARD)
        assert float(raw.headers["x-router-cost"]) == pytest.approx(raw.parse().router_metadata["total_cost"])


def test_models_retrieve(up):
    with serve(up) as srv:
        client = srv.client()
        assert client.models.retrieve("router").id == "router"
        assert client.models.retrieve("router-0.5").owned_by == "xrouter-lite"
        m = client.models.retrieve("strong")
        assert m.id == "strong" and m.input_price == 5.0
        with pytest.raises(openai.NotFoundError) as ei:
            client.models.retrieve("gpt-9")
        assert ei.value.response.json()["error"]["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            client.models.retrieve("router-abc")


# ---- the port is checked before the model loads (issue 11: 11) ----------------------------------------------------


def test_a_port_in_use_fails_before_the_router_loads(up, tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    import xrouter_lite.serve.app as serve_app
    from xrouter_lite.cli import app as cli_app

    loads = []
    monkeypatch.setattr(serve_app, "load_router", lambda *a: loads.append(a) or KeywordRouter())
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump({"models": {"cheap": {"litellm_model": "openai/cheap", "api_base": up.base_url,
                                                               "input_price": 0.1, "output_price": 0.4,
                                                               "context_window": 8192, "max_output_tokens": 1024}}}))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="already in use"):
            serve_app.run_server(ServeSettings(pool=pool_file, port=port, adapter=tmp_path))
        res = CliRunner().invoke(cli_app, ["serve", "--adapter", str(tmp_path), "--pool", str(pool_file),
                                           "--port", str(port)])
    assert res.exit_code == 2 and "already in use" in res.output and "Traceback" not in res.output
    assert loads == []


# ---- tools (issue 12: 5) -----------------------------------------------------------------------------------------


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CALLS = [{"id": "call_abc123", "type": "function",
          "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]
TOOL_CAPS = {"cheap": {"capabilities": ["general", "tool_calling"]}, "strong": {"capabilities": ["tool_calling"]},
             "mid": {"capabilities": ["general"]}}


@TRANSPORTS
def test_tools_are_routed_among_tool_calling_models_and_tool_calls_come_back(up, transport):
    up.control(tool_calls={"strong": CALLS, "cheap": CALLS, "mid": CALLS, "spare": CALLS})
    router = KeywordRouter()
    agent = HARD + [{"role": "assistant", "content": None, "tool_calls": CALLS},
                    {"role": "tool", "tool_call_id": "call_abc123", "name": "get_weather", "content": "18 C, light rain"}]
    try:
        with serve(up, router=router, pool=make_pool(up.base_url, **TOOL_CAPS), upstream_transport=transport) as srv:
            client = srv.client()
            r = client.chat.completions.create(model="router", messages=HARD, tools=TOOLS, tool_choice="auto")
            assert r.model == "strong"
            assert [c["model_id"] for c in r.router_metadata["candidates"]] == ["strong", "cheap"]  # mid: no tools
            msg = r.choices[0].message
            assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
            assert [t.model_dump(exclude_none=True) for t in msg.tool_calls] == CALLS
            sent = up.stats()["last_body"]["strong"]
            assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto"
            # the next turn carries the tool result: the router reads it, the model gets the conversation unchanged
            r = client.chat.completions.create(model="router", messages=agent, tools=TOOLS)
            assert "tool get_weather: 18 C, light rain" in router.queries[-1]
            assert "[calls: get_weather(" in router.queries[-1]
            assert up.stats()["last_body"]["strong"]["messages"][-1] == agent[-1]
            # streamed: the calls come as deltas that reassemble to the provider's calls
            chunks = list(client.chat.completions.create(model="router", messages=HARD, tools=TOOLS, stream=True))
            got: dict[int, dict] = {}
            for c in chunks:
                for d in c.choices[0].delta.tool_calls or []:
                    t = got.setdefault(d.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
                    t["id"] = d.id or t["id"]
                    t["type"] = d.type or t["type"]
                    if d.function:
                        t["function"]["name"] += d.function.name or ""
                        t["function"]["arguments"] += d.function.arguments or ""
            assert [got[i] for i in sorted(got)] == CALLS
            assert len([c for c in chunks if c.choices[0].delta.tool_calls]) > 2  # really streamed in pieces
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            assert chunks[-1].router_metadata["model_used"] == "strong"
            # no tool-capable model among those offered: a clear 400
            with pytest.raises(openai.BadRequestError) as ei:
                client.chat.completions.create(model="router", messages=HARD, tools=TOOLS,
                                               extra_body={"models": ["mid", "spare"]})
            err = ei.value.response.json()["error"]
            assert err["code"] == "no_tool_capable_model" and "tool_calling" in err["message"]
            assert "cheap, strong" in err["message"]
    finally:
        up.control(tool_calls={})


# ---- the decision log (issue 12: 4) --------------------------------------------------------------------------------


def test_decision_log_one_line_per_routed_request(up, tmp_path):
    from datetime import datetime

    path = tmp_path / "logs" / "decisions.jsonl"
    up.control(script={"strong": ["500"]})

    async def many(url: str, n: int):
        async with httpx.AsyncClient(timeout=10) as h:
            return await asyncio.gather(*[h.post(url + "/v1/chat/completions",
                                                 json={"model": "router-0.5", "messages": USER}) for _ in range(n)])

    with serve(up, decision_log=path, tau=0.0) as srv:
        client = srv.client()
        r1 = client.chat.completions.create(model="router", messages=HARD)  # strong fails: falls back to mid
        client.chat.completions.create(model="cheap", messages=USER)  # bypass: not routed, not logged
        list(client.chat.completions.create(model="router", messages=USER, stream=True))
        rs = asyncio.run(many(srv.url, 12))
        assert all(r.status_code == 200 for r in rs)
    lines = path.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 14
    keys = {"time", "request_id", "router", "tau", "offered", "scores", "costs", "chosen", "model_used", "cost_usd"}
    assert all(set(r) == keys for r in recs)  # no message text unless asked
    first = recs[0]
    assert first["request_id"] == r1.id and first["router"] == "keyword" and first["tau"] == 0.0
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert first["offered"] == list(MODELS) and set(first["scores"]) == set(first["costs"]) == set(MODELS)
    assert first["scores"] == QUALITY["hard"] and max(first["costs"].values()) == 1.0
    assert first["chosen"] == "strong" and first["model_used"] == "mid"
    assert first["cost_usd"] == pytest.approx(r1.router_metadata["total_cost"]) and first["cost_usd"] > 0
    assert recs[1]["chosen"] == recs[1]["model_used"] == "cheap" and recs[1]["cost_usd"] > 0  # the stream
    assert {r["tau"] for r in recs[2:]} == {0.5} and len({r["request_id"] for r in recs}) == 14
    # the decision at another tau can be recomputed from the line: argmax(scores - tau * costs)
    for r in recs:
        adj = {m: r["scores"][m] - r["tau"] * r["costs"][m] for m in r["offered"]}
        assert r["chosen"] == max(adj, key=adj.get)
    with serve(up, decision_log=path, decision_log_messages=True) as srv:
        srv.client().chat.completions.create(model="router", messages=USER)
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["messages"] == USER and len(path.read_text().splitlines()) == 15  # appended, not overwritten


def test_an_upstream_that_refuses_the_request_itself_gives_400_not_502(up):
    up.control(script={"cheap": ["400"]})
    with serve(up) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "cheap", "messages": USER}, timeout=10)
    e = _assert_openai_error(r, 400, "upstream_rejected_request")
    assert "bad request (fake upstream)" in e["message"]
    assert r.json()["router_metadata"]["call_history"][0]["model_id"] == "cheap"
