"""A live agentic request through the server (model "router-agentic"), against the fake upstream: selection,
escalation, a failing model mid-trajectory, the budget stop, streaming."""

import json
import socket
import threading
import time

import httpx
import pytest

from xrouter_lite.fake_upstream import FakeUpstream
from xrouter_lite.pool import ModelSpec, Pool
from xrouter_lite.prompting import call_key, select_key
from xrouter_lite.router import BaseRouter, Decision
from xrouter_lite.serve import ServeSettings, create_app

PRICES = {"cheap": (0.1, 0.4), "spare": (0.2, 0.8), "strong": (5.0, 20.0)}
TIERS = {"cheap": "budget", "spare": "budget", "strong": "premium"}


class CheapRouter(BaseRouter):
    name = "cheap-first"

    def route_batch(self, queries, offered, tau=None):
        return [Decision(o[0].id, {s.id: 0.0 for s in o}) for o in offered]


def rule_score(prompt, actions):
    """A stand-in for the trained router's scores: call both cheap models at once; select on agreement; otherwise
    call the strong model; after it, select it."""
    txt = prompt.messages[-1]["content"]
    def s(a):
        if a == call_key(["cheap", "spare"]):
            return 0.0
        if a == select_key("cheap") and "answers read" in txt and "disagree" not in txt:
            return 0.0
        if a == "strong":
            return -0.5
        if a == select_key("strong"):
            return 0.0
        return -9.0
    return [s(a) for a in actions]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, app, start_s: float = 20.0):
        import uvicorn

        self.start_s = start_s
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t = time.time() + self.start_s
        while not self.server.started:
            assert time.time() < t and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream() as up:
        yield up


def _server(up):
    pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=up.base_url, input_price=p[0], output_price=p[1],
                           context_window=8192, max_output_tokens=512, tier=TIERS[m]) for m, p in PRICES.items()])
    app = create_app(pool=pool, router=CheapRouter(), settings=ServeSettings(upstream_timeout_s=5.0))
    app.state.server.agentic_score = rule_score
    return Live(app)


def srv_pool(srv):
    return srv.server.config.app.state.server.pool


def _ask(srv, **kw):
    body = {"model": "router-agentic", "messages": [{"role": "user", "content": "Which? A) x B) y"}], **kw}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)


def test_live_agentic_select_escalate_failure_budget_stream(upstream):
    up = upstream
    with _server(up) as srv:
        # selection: the two cheap models agree
        up.control(answers={"cheap": "The answer is A", "spare": "A", "strong": "B"}, script={}, reset_stats=True)
        r = _ask(srv)
        assert r.status_code == 200, r.text
        body = r.json()
        md = body["router_metadata"]
        assert body["choices"][0]["message"]["content"] == "The answer is A" and md["model_used"] == "cheap"
        assert md["routing_strategy"] == "select" and [c["model_id"] for c in md["call_history"]] == ["cheap", "spare"]
        assert all(c["cost"] > 0 and c["latency"] > 0 for c in md["call_history"])
        assert md["total_cost"] == pytest.approx(sum(c["cost"] for c in md["call_history"]))
        assert r.headers["x-router-strategy"] == "select"
        # escalation: they disagree -> the strong model, whose answer is returned
        up.control(answers={"spare": "B"})
        md = _ask(srv, model="router-agentic-0.5").json()["router_metadata"]
        assert md["routing_strategy"] == "escalate" and md["model_used"] == "strong" and md["turns_used"] == 2
        assert md["tau"] == 0.5 and len(md["call_history"]) == 3
        # a failing model mid-trajectory is skipped like a fallback; the trajectory goes on
        up.control(script={"spare": ["500"]})
        md = _ask(srv).json()["router_metadata"]
        fails = [c for c in md["call_history"] if c["error"]]
        assert [c["model_id"] for c in fails] == ["spare"] and md["model_used"] in ("cheap", "strong")
        # budget: the strong model does not fit what is left, so no escalation (nothing overspent)
        up.control(answers={"spare": "B"}, script={})
        from xrouter_lite.serve import estimate_cost

        msgs = [{"role": "user", "content": "Which? A) x B) y"}]
        strong = estimate_cost(srv_pool(srv).get("strong"), msgs, {}, ServeSettings().expected_output_tokens)
        budget = strong + 1e-6  # the strong model fits an empty budget, not one the two cheap calls have started
        r = _ask(srv, max_cost_usd=budget)
        md = r.json()["router_metadata"]
        assert r.status_code == 200 and "strong" not in [c["model_id"] for c in md["call_history"]]
        assert md["total_cost"] <= budget and md["stop_reason"] == "budget"
        # streaming of the final answer; metadata in the last chunk
        up.control(answers={"spare": "A"})
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=30, json={
                "model": "router-agentic", "stream": True, "messages": [{"role": "user", "content": "Which?"}]}) as s:
            events = [l[6:] for l in s.iter_lines() if l.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "The answer is A" and chunks[-1]["router_metadata"]["routing_strategy"] == "select"
        # a bad knob is a 400
        assert _ask(srv, model="router-agentic-x").status_code == 400


@pytest.mark.slow
def test_live_agentic_with_the_real_lora_router(upstream, tmp_path):
    """router-agentic with a real LoRA adapter on SmolLM2-135M (CPU): the server's own router scores every legal
    action of each rendered state; whatever it decides, the trajectory is legal and fully reported."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.router import LoRARouter

    base = str(smollm2_path())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp_path))
    router = LoRARouter(base, tmp_path, device="cpu", quantize="none")
    pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=upstream.base_url, input_price=p[0],
                           output_price=p[1], context_window=8192, max_output_tokens=512, tier=TIERS[m]) for m, p in PRICES.items()])
    upstream.control(answers={"cheap": "A", "spare": "B", "strong": "A"}, script={})
    with Live(create_app(pool=pool, router=router, settings=ServeSettings(upstream_timeout_s=5.0, router_timeout_s=300.0)), start_s=300) as srv:
        for model in ("router-agentic", "router-agentic-1000"):
            r = _ask(srv, model=model)
            assert r.status_code == 200, r.text
            md = r.json()["router_metadata"]
            assert md["call_history"] and md["decisions"] and all(d["legal"] >= 1 for d in md["decisions"])
            assert md["model_used"] in [c["model_id"] for c in md["call_history"]]
            assert md["routing_strategy"] in ("direct", "select", "escalate")
        # a huge tau makes every call dear: one call of the cheapest model, its answer returned
        assert [c["model_id"] for c in md["call_history"]] == ["cheap"] and md["routing_strategy"] == "direct"
