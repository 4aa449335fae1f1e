"""The one Router interface and factory: names and folders, the saved cost vector, the routers that need no
training, and the promise that evaluation and the server make the same decision at the same tau."""

import json
import zlib

import pytest

from xrouter_lite import Router
from xrouter_lite.pool import Pool
from xrouter_lite.router import BaseRouter, Decision, LabeledPrompt, Outcome
from xrouter_lite.routing import CostVector, RouteItem, cost_vector, load_router, read_router_file

THREE = ["claude-v1", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat"]


@pytest.fixture(scope="module")
def small_split(repo, tmp_path_factory):
    """60 RouterBench questions imported with the project's importer, split ~2/3 train, ~1/3 test."""
    from xrouter_lite.importers import import_routerbench

    d = tmp_path_factory.mktemp("rb_small")
    full = d / "cache.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], full, limit_per_file=60, seed=1)
    train, test = d / "train.jsonl", d / "test.jsonl"
    with full.open() as f, train.open("w") as a, test.open("w") as b:
        for line in f:
            (b if zlib.crc32(json.loads(line)["prompt_id"].encode()) % 3 == 0 else a).write(line)
    return train, test


def _lp(pid, prompt, **res):
    return LabeledPrompt(pid, "d", prompt, {m: Outcome(c, cost) for m, (c, cost) in res.items()})


def test_cost_vector_is_the_training_mean_with_pool_prices_for_missing_models(pool_rb):
    train = [_lp("a", "x" * 400, **{"claude-v1": (True, 0.02), "gpt-3.5-turbo-1106": (True, 0.001)}),
             _lp("b", "y" * 800, **{"claude-v1": (False, 0.04)})]
    v = cost_vector(train, pool_rb)
    assert v.usd["claude-v1"] == pytest.approx(0.03) and v.usd["gpt-3.5-turbo-1106"] == pytest.approx(0.001)
    assert v.source["claude-v1"] == "train" and v.source["gpt-4-1106-preview"] == "pool"
    assert set(v.usd) == set(pool_rb.ids)
    # the fallback prices the training questions' mean size (600 chars / 4 = 150 tokens) and 300 output tokens
    assert v.usd["gpt-4-1106-preview"] == pytest.approx(pool_rb.get("gpt-4-1106-preview").cost(150, 300))
    # round trip through the router file's JSON
    assert CostVector.from_json(json.loads(json.dumps(v.to_json()))).usd == v.usd


def test_factory_names_routes_and_declared_attributes(small_split, pool_rb):
    train, _ = small_split
    cheap = Router.load("cheapest", pool=pool_rb, train_cache=train)
    assert cheap.takes_tau is False and cheap.inline_ok is True
    d = cheap.route([{"role": "user", "content": "What is 2+2?"}], models=THREE)
    assert isinstance(d, Decision) and d.model_id == min(d.costs, key=d.costs.get) and max(d.costs.values()) == 1.0
    strong = Router.load({"router": "strongest", "pool": pool_rb, "train_cache": str(train)})
    acc = strong.accuracy
    assert strong.route("hi", THREE).model_id == max(THREE, key=lambda m: (acc[m], -cheap.cost_per_query[m]))
    # the default offered set: the pool's models the router has data for
    assert set(strong.route("hi").scores) == set(pool_rb.ids)
    with pytest.raises(ValueError, match="unknown router"):
        Router.load("nonsense", pool=pool_rb)
    with pytest.raises(ValueError, match="needs a training cache"):
        Router.load("knn", pool=pool_rb)
    with pytest.raises(ValueError, match="adapter"):
        Router.load("lora", pool=pool_rb)


def test_an_old_style_router_with_only_route_batch_still_works(pool_rb):
    class Old(BaseRouter):
        def route_batch(self, queries, offered, tau=None):
            return [Decision(o[-1].id, {s.id: 0.0 for s in o}) for o in offered]

    r = Old()
    off = pool_rb.subset(THREE)
    assert r.route_items([RouteItem("q")], [off])[0].model_id == THREE[-1]
    assert r.route("q", off).model_id == THREE[-1] and r.takes_tau is True


def test_cluster_rule_picks_each_clusters_best_trade_off(pool_rb):
    maths = ["What is 17 times 23?", "Compute 45 plus 78.", "How much is 12 squared?", "Divide 144 by 12."]
    poems = ["Write a short poem about the sea.", "Compose a haiku about autumn leaves.",
             "Write a limerick about a cat.", "Write a sonnet about love."]
    train = [_lp(f"m{i}", q, **{"claude-v1": (True, 1.0), "gpt-3.5-turbo-1106": (False, 0.1)}) for i, q in enumerate(maths)]
    train += [_lp(f"p{i}", q, **{"claude-v1": (False, 1.0), "gpt-3.5-turbo-1106": (True, 0.1)}) for i, q in enumerate(poems)]
    r = load_router("cluster", pool=pool_rb, train=train, n_clusters=2)
    assert sorted(r.sizes) == [4, 4]
    off = ["claude-v1", "gpt-3.5-turbo-1106"]
    a, b = r.route_batch(["What is 31 times 7?", "Write a poem about mountains."], [pool_rb.subset(off)] * 2)
    assert (a.model_id, b.model_id) == ("claude-v1", "gpt-3.5-turbo-1106")
    # cluster accuracy shrunk by one pseudo-question towards the overall 0.5: (4 + 0.5) / 5
    assert a.base_scores["claude-v1"] == pytest.approx(0.9) and a.costs == pytest.approx({"claude-v1": 1.0, "gpt-3.5-turbo-1106": 0.1})
    # tau: 0.9 - tau > 0.1 - 0.1 tau  <=>  tau < 0.889: past it the maths cluster goes to the cheap model too
    assert r.route("What is 31 times 7?", off, tau=0.8).model_id == "claude-v1"
    assert r.route("What is 31 times 7?", off, tau=0.95).model_id == "gpt-3.5-turbo-1106"


def test_logistic_router_learns_who_is_right_per_kind_of_question(pool_rb):
    maths = ["What is 17 times 23?", "Compute 45 plus 78.", "How much is 12 squared?", "Divide 144 by 12.",
             "What is 9 times 8?", "Subtract 17 from 90."]
    poems = ["Write a short poem about the sea.", "Compose a haiku about autumn leaves.", "Write a limerick about a cat.",
             "Write a sonnet about love.", "Write a poem about the moon.", "Compose a verse about spring rain."]
    train = [_lp(f"m{i}", q, **{"claude-v1": (True, 1.0), "gpt-3.5-turbo-1106": (False, 0.1)}) for i, q in enumerate(maths)]
    train += [_lp(f"p{i}", q, **{"claude-v1": (False, 1.0), "gpt-3.5-turbo-1106": (True, 0.1)}) for i, q in enumerate(poems)]
    r = load_router("logistic", pool=pool_rb, train=train, logistic_c=10.0)
    off = ["claude-v1", "gpt-3.5-turbo-1106"]
    a, b = r.route_batch(["What is 31 times 7?", "Write a poem about mountains."], [pool_rb.subset(off)] * 2)
    assert (a.model_id, b.model_id) == ("claude-v1", "gpt-3.5-turbo-1106")
    assert a.base_scores["claude-v1"] > 0.5 > a.base_scores["gpt-3.5-turbo-1106"]
    # a high tau prices the dear model out even where it is the one that is right
    assert r.route("What is 31 times 7?", off, tau=5.0).model_id == "gpt-3.5-turbo-1106"


def test_logistic_router_on_a_cost_ordered_cache_weights_the_explored_questions(pool_rb):
    """A cost-ordered cache never calls the dear model where the cheap one was right: unweighted, its classifier sees
    only the hard questions and thinks it is always wrong on easy ones; the explored question (every model called)
    stands for those it never saw, with weight 1 / explored share."""
    easy = [f"Add {i} and {i + 1}." for i in range(10)]
    hard = [f"Prove the conjecture number {i} about primes." for i in range(10)]
    cheap, dear = "gpt-3.5-turbo-1106", "claude-v1"
    train = [_lp(f"e{i}", q, **{cheap: (True, 0.1)}) for i, q in enumerate(easy[:-1])]  # stopped at the cheap model
    train.append(_lp("e9", easy[-1], **{cheap: (True, 0.1), dear: (True, 1.0)}))  # explored: every model called
    train += [_lp(f"h{i}", q, **{cheap: (False, 0.1), dear: (i % 2 == 0, 1.0)}) for i, q in enumerate(hard)]
    plain = load_router("logistic", pool=pool_rb, train=train, logistic_c=10.0)
    from xrouter_lite.simple_routers import LogisticRouter

    weighted = LogisticRouter(train, C=10.0, explored={"e9"}, cost_per_query=plain.cost_per_query)
    assert weighted.explored_share == pytest.approx(1 / 20)
    q = "Add 40 and 41."
    assert weighted.p_correct([q])[0][dear] > plain.p_correct([q])[0][dear]
    with pytest.raises(ValueError, match="no explored question"):
        LogisticRouter(train, explored=set())


def test_saved_router_folder_reloads_with_the_same_cost_vector(small_split, pool_rb, tmp_path):
    train, _ = small_split
    r = Router.load("cheapest", pool=pool_rb, train_cache=train)
    path = r.save(tmp_path / "cheap_router")
    saved = read_router_file(tmp_path / "cheap_router")
    assert path.name == "router.json" and saved["spec"]["router"] == "cheapest"
    again = Router.load(tmp_path / "cheap_router", pool=pool_rb)  # no training cache needed any more
    assert again.name == "cheapest" and again.cost_per_query == pytest.approx(r.cost_per_query)
    assert again.cost_info.origin.startswith("saved")


def test_eval_and_server_make_the_same_decision_at_the_same_tau(small_split, pool_rb, tmp_path):
    """The same questions and offered set: the evaluation's decisions.jsonl and the server's answers (and its
    decision log) show the same chosen model and the same costs, at tau 0.3."""
    from fastapi.testclient import TestClient

    from xrouter_lite.evaluate import EvalConfig, evaluate, load_prompts
    from xrouter_lite.fake_upstream import FakeUpstream
    from xrouter_lite.serve import ServeSettings, create_app

    train, test = small_split
    tau = 0.3
    out = tmp_path / "ev"
    evaluate(EvalConfig(router="knn", train_cache=str(train), test_cache=str(test), pool=str(pool_rb.source),
                        offered_models=THREE, tau=tau, taus=[0.0, tau], baselines=["single"], knn_max_seq_length=64,
                        out_dir=str(out), plot=False), log=lambda m: None)
    ev = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    assert ev and all(d["router"] == "knn" and set(d["costs"]) == set(THREE) for d in ev)
    assert len({d["chosen"] for d in ev}) >= 1
    prompts = {p.prompt_id: p.prompt for p in load_prompts(test)[0]}

    with FakeUpstream() as up:
        pool = Pool([m.model_copy(update={"litellm_model": f"openai/{m.id}", "api_base": up.base_url,
                                          "api_key_env": None}) for m in pool_rb], source=pool_rb.source)
        router = Router.load("knn", pool=pool, train_cache=train, knn_max_seq_length=64)
        log_path = tmp_path / "decisions.log.jsonl"
        app = create_app(pool=pool, router=router, settings=ServeSettings(offered=THREE, decision_log=log_path))
        with TestClient(app) as client:
            for d in ev:
                r = client.post("/v1/chat/completions", json={
                    "model": f"router-{tau}", "messages": [{"role": "user", "content": prompts[d["prompt_id"]]}]})
                assert r.status_code == 200, r.text
                assert r.headers["x-router-model"] == d["chosen"], d["prompt_id"]
    logged = [json.loads(x) for x in log_path.read_text().splitlines()]
    assert len(logged) == len(ev)
    for d, g in zip(ev, logged):
        assert g["chosen"] == d["chosen"] and g["tau"] == tau and g["offered"] == THREE
        assert g["costs"] == pytest.approx(d["costs"])
        assert g["scores"] == pytest.approx(d["base_scores"], abs=1e-6)
        assert g["cost_usd"] > 0 and "messages" not in g


def test_serve_settings_take_a_router_name(small_split, pool_rb):
    from xrouter_lite.serve import ServeSettings, load_router

    train, _ = small_split
    r = load_router(ServeSettings(router="cheapest", train_cache=train, pool=pool_rb.source), pool_rb)
    assert r.name == "cheapest" and r.cost_info.origin.startswith("training cache")
    with pytest.raises(ValueError, match="--router NAME"):
        load_router(ServeSettings(), pool_rb)


def test_cli_eval_any_router_writes_decisions_with_scores_and_costs(small_split, tmp_path, repo):
    from typer.testing import CliRunner

    from xrouter_lite.cli import app

    train, test = small_split
    res = CliRunner().invoke(app, ["eval", "--router", "cheapest", "--train-cache", str(train), "--test-cache", str(test),
                                   "--pool", str(repo / "configs" / "pool_routerbench.yaml"), "--out", str(tmp_path / "o"),
                                   "--baselines", "single", "--no-plot"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["router"]["router"] == "cheapest" and rep["router"]["takes_tau"] is False
    assert list(rep["router"]["call_share"]) == ["mistralai/mistral-7b-chat"]
    lines = [json.loads(x) for x in (tmp_path / "o" / "decisions.jsonl").read_text().splitlines()]
    assert len(lines) == rep["router"]["n"] and all(d["costs"] and d["base_scores"] for d in lines)
    res = CliRunner().invoke(app, ["serve", "--pool", str(repo / "configs" / "pool_routerbench.yaml")])
    assert res.exit_code == 2 and "--router NAME" in res.output
