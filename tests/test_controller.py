"""The in-process Controller (RouteLLM style): routes, then calls the chosen model through litellm, here the
local fake OpenAI server."""

import pytest

from xrouter_lite import Controller, Router
from xrouter_lite.pool import ModelSpec, Pool


def test_controller_routes_and_calls_through_litellm():
    from xrouter_lite.fake_upstream import FakeUpstream

    with FakeUpstream(answers={"cheap": "cheap says 4", "dear": "dear says 4"}) as up:
        pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=up.base_url, input_price=p, output_price=p,
                               context_window=8192, max_output_tokens=512) for m, p in (("cheap", 0.1), ("dear", 10.0))])
        client = Controller(router=Router.load("cheapest", pool=pool))
        r = client.chat.completions.create(model="router", messages=[{"role": "user", "content": "2+2?"}], max_tokens=20)
        assert r.choices[0].message.content == "cheap says 4"
        md = r.router_metadata
        assert md["model_used"] == "cheap" and md["routing_strategy"] == "delegate_to_model"
        assert md["costs"] == pytest.approx({"cheap": 0.01, "dear": 1.0}) and md["candidates"][0]["model_id"] == "cheap"
        # a pool model by name: no routing
        r = client.chat.completions.create(model="dear", messages=[{"role": "user", "content": "2+2?"}])
        assert r.choices[0].message.content == "dear says 4" and r.router_metadata["routing_strategy"] == "bypass"
        assert up.stats()["requests"] == 2
        with pytest.raises(ValueError, match="no cost knob"):  # cheapest takes no tau
            client.chat.completions.create(model="router-0.5", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(ValueError, match="use 'router'"):
            client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
        assert client.route("hi").model_id == "cheap"
