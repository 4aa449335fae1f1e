"""Evaluation end to end on real RouterBench rows (the shipped 300-row sample, imported with the project's own
importer), with every baseline, the trained-router path (SmolLM2 + a fresh LoRA adapter), the report files, the
re-derivation of figures from decisions.jsonl, and online mode against the fake upstream."""

import json
import zlib

import pytest

from xrouter_lite.evaluate import (
    EvalConfig,
    evaluate,
    load_config,
    load_prompts,
    rederive_from_decisions,
    summarise,
)
from xrouter_lite.pool import load_pool
from xrouter_lite.records import CacheRecord, TokenUsage
from xrouter_lite.router import LabeledPrompt, Outcome

THREE = ["claude-v1", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat"]


@pytest.fixture(scope="module")
def rb_split(repo, tmp_path_factory):
    """The RouterBench sample imported, then split by prompt (~25% test) into train/test caches."""
    from xrouter_lite.importers import import_routerbench

    d = tmp_path_factory.mktemp("rb")
    full = d / "offline_cache.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], full)
    train, test = d / "train.jsonl", d / "test.jsonl"
    with full.open() as f, train.open("w") as a, test.open("w") as b:
        for line in f:
            pid = json.loads(line)["prompt_id"]
            h = zlib.crc32(pid.encode()) % 8
            if h in (0, 1):
                b.write(line)
            elif h in (2, 3, 4):  # a third of the rest trains (keeps the kNN embedding quick on a CPU)
                a.write(line)
    return train, test


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path

    base = str(smollm2_path())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    d = tmp_path_factory.mktemp("adapter")
    pm.save_pretrained(str(d))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(d))
    return d


def _rec(pid, model, correct, cost, error=None, ds="d", task="mc", ref="B"):
    return CacheRecord(pid, ds, f"question {pid}", ref, model, None if error else "x", None if error else correct,
                       TokenUsage(), cost, 0.0, error, task)


def test_load_prompts_excludes_errors_and_keeps_the_last_valid_record(tmp_path):
    p = tmp_path / "c.jsonl"
    recs = [
        _rec("p1", "a", True, 0.1), _rec("p1", "b", False, 0.01),
        _rec("p2", "a", None, 0.0, error="timeout"), _rec("p2", "a", False, 0.2),  # retried: the valid one counts
        _rec("p2", "b", True, 0.02),
        _rec("p3", "a", True, 0.1), _rec("p3", "b", None, 0.0, error="429"),  # p3 lacks b
        _rec("p4", "zzz", True, 0.1),
    ]
    p.write_text("".join(r.to_json() + "\n" for r in recs) + '{"prompt_id": "p5", "datas')  # torn last line
    prompts, st = load_prompts(p, ["a", "b"], require_complete=True)
    assert [x.prompt_id for x in prompts] == ["p1", "p2"]
    assert prompts[1].outcomes["a"] == Outcome(False, 0.2)
    assert (st.errored, st.unknown_models, st.incomplete_dropped, st.torn_last_line) == (2, 1, 1, True)
    all_, _ = load_prompts(p)
    assert {x.prompt_id for x in all_} == {"p1", "p2", "p3", "p4"}


def test_summarise_hand_computed():
    ps = [
        LabeledPrompt("p1", "x", "q", {"a": Outcome(True, 1.0), "b": Outcome(False, 0.1)}),
        LabeledPrompt("p2", "x", "q", {"a": Outcome(True, 1.0), "b": Outcome(True, 0.1)}),
        LabeledPrompt("p3", "y", "q", {"a": Outcome(False, 1.0), "b": Outcome(True, 0.1)}),
    ]
    s = summarise(ps, ["a", "b", "b"])
    assert s["accuracy"] == pytest.approx(1.0) and s["total_cost"] == pytest.approx(1.2)
    assert s["cost_per_query"] == pytest.approx(0.4)
    assert s["call_share"] == {"b": pytest.approx(2 / 3), "a": pytest.approx(1 / 3)}
    assert s["per_dataset"]["x"]["accuracy"] == 1.0 and s["per_dataset"]["y"]["n"] == 1


def test_baselines_on_real_routerbench_rows(rb_split, tmp_path):
    train, test = rb_split
    out = tmp_path / "ev"
    rep = evaluate(EvalConfig(test_cache=str(test), train_cache=str(train), out_dir=str(out), knn_k=5, knn_max_seq_length=128), log=lambda m: None)
    prompts, _ = load_prompts(test)
    n = len(prompts)
    assert n > 40 and rep["baselines"]["random"]["n"] == n
    b = rep["baselines"]
    # single models: exactly the cache's figures
    for m in ("gpt-4-1106-preview", "mistralai/mistral-7b-chat"):
        acc = sum(p.outcomes[m].correct for p in prompts) / n
        cost = sum(p.outcomes[m].cost for p in prompts)
        assert b[f"single:{m}"]["accuracy"] == pytest.approx(acc)
        assert b[f"single:{m}"]["total_cost"] == pytest.approx(cost)
    # the oracle: right whenever any model is, at the cheapest right model's cost (the cheapest model's if none)
    any_right = sum(any(o.correct for o in p.outcomes.values()) for p in prompts) / n
    assert b["oracle"]["accuracy"] == pytest.approx(any_right)
    oracle_cost = sum(min(o.cost for o in (p.outcomes.values() if not any(o.correct for o in p.outcomes.values())
                                               else [o for o in p.outcomes.values() if o.correct])) for p in prompts)
    assert b["oracle"]["total_cost"] == pytest.approx(oracle_cost)
    singles = [v for k, v in b.items() if k.startswith("single:")]
    assert b["oracle"]["accuracy"] >= max(s["accuracy"] for s in singles)
    assert set(b["best_single_per_dataset"]["choice_per_dataset"]) == {"arc-challenge", "mbpp", "winogrande"}
    assert 0 <= b["knn"]["accuracy"] <= 1 and len(rep["curves"]["tau_table"]["knn"]) == len(rep["config"]["taus"])
    m = rep["curves"]["metrics"]
    assert 0 < m["single_models_hull"]["aiq"] <= 1 and m["oracle"]["aiq"] >= m["single_models_hull"]["aiq"]
    ref = rep["curves"]["reference"]
    assert ref["strong_model"] == max((s for s in b if s.startswith("single:")), key=lambda k: (b[k]["accuracy"], -b[k]["total_cost"]))[7:]
    # the same seed gives the same random baseline
    rep2 = evaluate(EvalConfig(test_cache=str(test), out_dir=str(tmp_path / "ev2"), baselines=["random"]), log=lambda m: None)
    assert rep2["baselines"]["random"] == rep["baselines"]["random"]
    saved = json.loads((out / "report.json").read_text())
    assert set(saved) >= {"router", "baselines", "curves", "config"}
    assert (out / "report.md").read_text().startswith("# Router evaluation")
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_router_end_to_end_and_figures_rederive_from_decisions(rb_split, adapter_dir, tmp_path):
    train, test = rb_split
    out = tmp_path / "ev"
    cfg = EvalConfig(
        test_cache=str(test), train_cache=str(train), out_dir=str(out), adapter=str(adapter_dir), device="cpu",
        offered_models=THREE, max_queries=3, baselines=["single", "oracle", "best_single"], taus=[0.0, 1e6],
        batch_size=4,
    )
    rep = evaluate(cfg, log=lambda m: None)
    r = rep["router"]
    assert r["n"] == 3 and r["invalid_actions"] == 0 and r["mode"] == "score"
    assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["p95"] >= r["latency_ms"]["p50"]
    lines = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for d in lines:
        assert d["offered"] == THREE and d["chosen"] in THREE and set(d["base_scores"]) == set(THREE)
        assert d["latency_s"] > 0
    again = rederive_from_decisions(out / "decisions.jsonl", test)
    assert again["accuracy"] == pytest.approx(r["accuracy"]) and again["total_cost"] == pytest.approx(r["total_cost"])
    # the tau sweep is re-derivable too: tau huge -> every query to the cheapest model (by training cost)
    far = rederive_from_decisions(out / "decisions.jsonl", test, tau=1e6)
    pt = [p for p in rep["curves"]["tau_table"]["router"] if p["tau"] == 1e6][0]
    assert far["accuracy"] == pytest.approx(pt["accuracy"]) and far["total_cost"] == pytest.approx(pt["total_cost"])
    assert list(far["call_share"]) == ["mistralai/mistral-7b-chat"]
    assert "router" in rep["curves"]["metrics"] and "aiq" in rep["curves"]["metrics"]["router"]
    # the cost vector tau multiplied is saved with the adapter (router.json), for serving to use the same one
    from xrouter_lite.routing import normalised_costs, read_router_file

    saved = read_router_file(adapter_dir)
    assert saved["cost_per_query_usd"] == pytest.approx(rep["data"]["cost_vector"])
    assert all(saved["cost_source"][m] == "train" for m in THREE)
    pool = load_pool(rep["config"]["pool"])
    for d in lines:
        assert d["costs"] == pytest.approx(normalised_costs("", pool.subset(THREE), saved["cost_per_query_usd"]))
    # ... and the factory (the server's and Python's way in) loads the adapter with that saved vector
    from xrouter_lite import Router

    served = Router.load(str(adapter_dir), pool=pool, device="cpu")
    assert served.name == "lora" and served.cost_info.origin.startswith("saved")
    assert served.cost_per_query == pytest.approx(saved["cost_per_query_usd"])


def test_online_mode_calls_the_chosen_model_and_grades_it(adapter_dir, tmp_path):
    from xrouter_lite.fake_upstream import FakeUpstream

    test = tmp_path / "test.jsonl"
    test.write_text("".join(
        _rec(f"q{i}", m, m == "good", c).to_json() + "\n" for i in range(3) for m, c in (("good", 0.5), ("bad", 0.01))
    ))
    with FakeUpstream(answers={"good": "The answer is B.", "bad": "The answer is C."},
                      usage={"prompt_tokens": 1000, "completion_tokens": 100}) as up:
        pool = tmp_path / "pool.yaml"
        pool.write_text(
            "models:\n" + "".join(
                f"  {m}:\n    litellm_model: openai/{m}\n    api_base: {up.base_url}\n    input_price: {p}\n"
                f"    output_price: {p}\n    context_window: 8192\n    max_output_tokens: 512\n"
                for m, p in (("good", 10.0), ("bad", 0.1))
            )
        )
        rep = evaluate(EvalConfig(test_cache=str(test), pool=str(pool), out_dir=str(tmp_path / "ev"), adapter=str(adapter_dir),
                                  device="cpu", online=True, baselines=["single"], taus=[0.0]), log=lambda m: None)
    r = rep["router"]
    answers = [json.loads(x) for x in (tmp_path / "ev" / "online_answers.jsonl").read_text().splitlines()]
    assert r["online"] and len(answers) == 3
    for a in answers:
        assert a["is_correct"] == (a["model"] == "good")
        assert a["cost"] == pytest.approx((1000 + 100) / 1e6 * (10.0 if a["model"] == "good" else 0.1))
    assert r["accuracy"] == pytest.approx(sum(a["is_correct"] for a in answers) / 3)


def test_config_errors_name_the_file_and_held_out_is_checked(tmp_path, rb_split):
    bad = tmp_path / "eval.yaml"
    bad.write_text("test_cache: x.jsonl\nmode: guess\n")
    with pytest.raises(ValueError, match=r"eval\.yaml.*mode"):
        load_config(bad)
    bad.write_text("test_cache: x.jsonl\ntypo_key: 1\n")
    with pytest.raises(ValueError, match="typo_key"):
        load_config(bad)
    train, test = rb_split
    with pytest.raises(ValueError, match="both the training and the test cache"):
        evaluate(EvalConfig(test_cache=str(test), train_cache=str(test), out_dir=str(tmp_path / "o"), baselines=["single"],
                            train_overlap="error"), log=lambda m: None)
    # default: the full cache may serve as training data; the held-out prompts are left out of it
    both = tmp_path / "both.jsonl"
    both.write_text(train.read_text() + test.read_text())
    rep = evaluate(EvalConfig(test_cache=str(test), train_cache=str(both), out_dir=str(tmp_path / "o"),
                              baselines=["best_single"]), log=lambda m: None)
    n_test = rep["data"]["n_test_prompts"]
    assert rep["data"]["train"]["overlap_dropped"] == n_test
    assert rep["data"]["train"]["prompts"] - n_test == len(load_prompts(train)[0])


def test_cli_eval_baselines_only(rb_split, tmp_path):
    from typer.testing import CliRunner

    from xrouter_lite.cli import app

    train, test = rb_split
    res = CliRunner().invoke(app, ["eval", "--test-cache", str(test), "--train-cache", str(train), "--out", str(tmp_path / "o"),
                                   "--baselines", "single,random,oracle,best_single", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "| oracle |" in res.output and (tmp_path / "o" / "report.json").exists()
    res = CliRunner().invoke(app, ["eval", "--test-cache", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "missing.jsonl" in res.output


def test_fit_head_offered_as_the_evaluation_offers(rb_split, adapter_dir, tmp_path):
    """`fit-head --offered` scores the validation questions offered exactly the evaluation's models, in its order;
    the head it writes applies there (the built-in example's `fit_head: true` stage calls the same function)."""
    import shutil

    from typer.testing import CliRunner

    from xrouter_lite.cli import app
    from xrouter_lite.decision import load_head

    train, test = rb_split
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    order = list(reversed(THREE))  # not the pool's order: the prompt lists the tools as the evaluation does
    val = tmp_path / "val.jsonl"
    lines = test.read_text().splitlines(keepends=True)
    keep = sorted({json.loads(x)["prompt_id"] for x in lines})[:6]
    val.write_text("".join(x for x in lines if json.loads(x)["prompt_id"] in keep))
    res = CliRunner().invoke(app, ["fit-head", "--adapter", str(adapter), "--val-cache", str(val), "--device", "cpu",
                                   "--offered", ",".join(order), "--l2", "10"])
    assert res.exit_code == 0, res.output
    assert "scoring 6 validation questions" in res.output and "validation AIQ (cross-fitted)" in res.output
    head = load_head(adapter)
    assert head.models == order and head.info["n_questions"] == 6
    rep = evaluate(EvalConfig(test_cache=str(test), train_cache=str(train), adapter=str(adapter), device="cpu",
                              offered_models=order, baselines=["single"], batch_size=4, plot=False, max_queries=3,
                              out_dir=str(tmp_path / "o")), log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "o" / "decisions.jsonl").read_text().splitlines()]
    assert rows and all(0 < v < 1 for r in rows for v in r["base_scores"].values())  # P(correct): the head decided
    assert "router_raw_scores" in rep["curves"]["metrics"]
    res = CliRunner().invoke(app, ["fit-head", "--adapter", str(adapter), "--val-cache", str(val), "--offered", "nope"])
    assert res.exit_code == 2 and "nope" in res.output


def test_decision_head_next_to_the_adapter_decides_in_evaluation(rb_split, adapter_dir, tmp_path):
    """`fit-head` on validation decisions writes decision_head.json next to the adapter; the evaluation's LoRARouter
    then decides by P(correct) - tau x c (the same function serving uses), keeps the raw scores, and its curve is
    exact (one point per breakpoint)."""
    import shutil

    from typer.testing import CliRunner

    from xrouter_lite.cli import app
    from xrouter_lite.decision import HEAD_FILE, load_head, route_scores

    train, test = rb_split
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_dir, adapter)
    common = dict(test_cache=str(test), train_cache=str(train), adapter=str(adapter), device="cpu", offered_models=THREE,
                  baselines=["single", "best_single"], batch_size=4, plot=False)
    raw = evaluate(EvalConfig(out_dir=str(tmp_path / "raw"), max_queries=6, **common), log=lambda m: None)
    # fit the head on these decisions (a test of the plumbing; the real head is fit on validation questions only)
    dec = str(tmp_path / "raw" / "decisions.jsonl")
    res = CliRunner().invoke(app, ["fit-head", "--adapter", str(adapter), "--val-cache", str(test), "--decisions", dec])
    assert res.exit_code == 2 and "no scores" in res.output  # questions of the cache the decisions do not cover: said
    rows = [json.loads(x) for x in (tmp_path / "raw" / "decisions.jsonl").read_text().splitlines()]
    ids = {r["prompt_id"] for r in rows}
    sub = tmp_path / "sub.jsonl"
    sub.write_text("".join(x for x in test.read_text().splitlines(keepends=True) if json.loads(x)["prompt_id"] in ids))
    res = CliRunner().invoke(app, ["fit-head", "--adapter", str(adapter), "--val-cache", str(sub), "--decisions", dec, "--l2", "10"])
    assert res.exit_code == 0, res.output
    head = load_head(adapter)
    assert (adapter / HEAD_FILE).exists() and sorted(head.models) == sorted(THREE)
    rep = evaluate(EvalConfig(out_dir=str(tmp_path / "head"), max_queries=6, **common), log=lambda m: None)
    lines = [json.loads(x) for x in (tmp_path / "head" / "decisions.jsonl").read_text().splitlines()]
    for d, r in zip(lines, rows):
        assert d["router_scores"] == pytest.approx(r["router_scores"], abs=1e-3)  # the model's own scores, kept
        p_ok = head.p_correct(d["router_scores"])
        assert d["base_scores"] == pytest.approx(p_ok, abs=1e-4) and all(0 < v < 1 for v in d["base_scores"].values())
        assert d["chosen"] == route_scores(d["router_scores"], d["costs"], 0.0, head)[0]
    pts = rep["curves"]["points"]["router"]
    assert rep["curves"]["metrics"]["router"]["n_points"] == len(pts) and pts[0]["tau"] == 0.0
    assert raw["curves"]["metrics"]["router"]["aiq"] > 0 and "router_raw_scores" not in raw["curves"]["metrics"]
    # with a head, the report also draws the raw rule on the same scores: the same curve the run without a head drew
    a = [v for p in rep["curves"]["points"]["router_raw_scores"] for v in (p["total_cost"], p["accuracy"])]
    b = [v for p in raw["curves"]["points"]["router"] for v in (p["total_cost"], p["accuracy"])]
    assert a == pytest.approx(b)
