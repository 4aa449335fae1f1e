"""Agentic mode (issue 16), CPU side: state rendering, exact values, replay, baselines, pairs, scoring replay, runner."""

import asyncio
import json
import time

import pytest

from xrouter_lite.agentic.baselines import agree_then_dearest, cheapest_first, oracle
from xrouter_lite.agentic.policy import ScoredPolicy, decide_action, load_scores, save_scores, score_states, state_key
from xrouter_lite.agentic.replay import replay, summarise
from xrouter_lite.agentic.runner import AllCallsFailedError, run_agentic
from xrouter_lite.agentic.state import AgenticConfig, QOutcome, Question, legal_actions, signature
from xrouter_lite.agentic.values import InfoValues, hindsight_values, trajectory_reward
from xrouter_lite.grading import read_answer
from xrouter_lite.pool import ModelSpec, Pool
from xrouter_lite.prompting import (
    AgenticCall, action_text, agentic_action_text, build_agentic_prompt, call_key, parse_agentic_action, select_key,
)
from xrouter_lite.reward import RewardConfig

A, B, S = "cheap-a", "cheap-b", "strong"
POOL = Pool([
    ModelSpec(id=A, litellm_model="openai/a", input_price=0.1, output_price=0.1, context_window=4096, max_output_tokens=256, tier="budget"),
    ModelSpec(id=B, litellm_model="openai/b", input_price=0.2, output_price=0.2, context_window=4096, max_output_tokens=256, tier="budget"),
    ModelSpec(id=S, litellm_model="openai/s", input_price=5.0, output_price=5.0, context_window=4096, max_output_tokens=256, tier="premium"),
])
IDS = [A, B, S]
CFG = AgenticConfig(max_calls=3, reward=RewardConfig(k=1.0, lam=0.5, cost_max=0.8), min_support=1)


def q(pid, reads, correct, ds="mc", costs=(0.01, 0.02, 1.0)):
    return Question(pid, ds, "mc", f"question {pid}", {
        m: QOutcome(ok, c, f"The answer is {r}" if r else "I am not sure", r) for m, r, ok, c in zip(IDS, reads, correct, costs)
    })


def world():
    """Agreeing cheap answers are right; when they disagree only the strong model is right."""
    qs = [q(f"agree{i}", ["A", "A", "A"], [True, True, True]) for i in range(6)]
    qs += [q(f"dis{i}", ["A", "B", "C"], [False, False, True]) for i in range(4)]
    return qs


# ---- prompting -----------------------------------------------------------------------------------------------------

def test_state_render_and_action_texts():
    one = agentic_action_text(A)
    assert one == action_text(A)  # a one-model call is exactly the one-shot action
    two = agentic_action_text(call_key([A, B]))
    assert two.count("<tool_call>") == 2
    calls = [[AgenticCall(A, "The answer is A " + "word " * 100, 0.01, read="A"), AgenticCall(B, "B", 0.02, read="B")]]
    p = build_agentic_prompt("Which? A) x B) y", POOL.subset(IDS), calls, max_calls=3)
    last = p.messages[-1]["content"]
    assert "[... cut:" in last and "answer read: A" in last and "disagree" in last and "1 left" in last
    assert p.tools[-1]["function"]["name"] == "select_response"
    assert parse_agentic_action(agentic_action_text(select_key(B)), p, [A, B]) == select_key(B)
    assert parse_agentic_action(two, build_agentic_prompt("q", POOL.subset(IDS)), []) == call_key([A, B])
    with pytest.raises(ValueError):
        parse_agentic_action(agentic_action_text(A), p, [A, B])  # already called


def test_read_answer_letters_numbers_code():
    assert read_answer("The answer is (C).") == "C"
    assert read_answer("So she pays $1,200 in total.") == "1200"
    assert read_answer("```python\ndef f(x):\n    return 3\n```") is None
    assert read_answer("B", task="mc") == "B"


def test_smollm2_tokenizes_agentic_states(repo):
    from transformers import AutoTokenizer

    from xrouter_lite.prompting import encode_agentic_action, encode_prompt
    tok = AutoTokenizer.from_pretrained(repo / "models" / "SmolLM2-135M-Instruct")
    p = build_agentic_prompt("2+2?", POOL.subset(IDS), [[AgenticCall(A, "4", 0.01, read="4")]])
    ids = encode_prompt(tok, p)
    assert tok.decode(ids).rstrip().endswith("assistant")
    assert encode_agentic_action(tok, select_key(A))[-1] == tok.eos_token_id


# ---- exact values ------------------------------------------------------------------------------------------------

def test_hindsight_values_root_is_the_oracle_reward():
    x = q("x", ["A", "B", "C"], [False, True, True])
    v = hindsight_values(x, IDS, CFG)
    assert v[frozenset()] == pytest.approx(trajectory_reward(x, [B], B, CFG))  # call the cheapest right model only
    assert v[frozenset({A, B, S})] == pytest.approx(trajectory_reward(x, [A, B, S], B, CFG))
    assert len(v) == 1 + 3 + 3 + 1  # every reachable set of calls


def test_info_values_learn_agree_else_escalate():
    qs = world()
    iv = InfoValues(qs, IDS, {A, B}, CFG)
    # root: call both cheap models at once; agreeing -> select; disagreeing -> call the strong model
    assert iv.act(qs[0], []) == call_key([A, B])
    assert iv.act(qs[0], [[A, B]]) == select_key(A)
    assert iv.act(qs[-1], [[A, B]]) == S
    assert iv.act(qs[-1], [[A, B], [S]]) == select_key(S)
    # the exact value of the root is the mean reward of that policy
    rewards = [trajectory_reward(x, [A, B] + ([S] if x.prompt_id.startswith("dis") else []),
                                 A if x.prompt_id.startswith("agree") else S, CFG)
               - (CFG.turn_penalty if x.prompt_id.startswith("dis") else 0.0) for x in qs]
    assert iv.node(qs[0], []).value == pytest.approx(sum(rewards) / len(rewards))
    t = [replay(x, iv.act, 3) for x in qs]
    s = summarise(t)
    assert s["accuracy"] == 1.0 and s["share_escalated"] == pytest.approx(0.4)
    assert s["calls_per_question"] == pytest.approx(2.4)


def test_signature_and_legal_actions():
    assert signature(["A", "B", "A", None]) == (0, 1, 0, -1)
    acts = legal_actions([A], IDS, {A, B}, 3)
    assert select_key(A) in acts and B in acts and S in acts and call_key([B, S]) not in acts  # S not pairable
    assert legal_actions([A, B, S], IDS, {A, B}, 3) == [select_key(A), select_key(B), select_key(S)]


def test_baselines_replay():
    qs = world()
    agree = [replay(x, agree_then_dearest(A, B, S), 3) for x in qs]
    assert all(t.correct for t in agree) and [t.strategy for t in agree].count("escalate") == 4
    cf = [replay(x, cheapest_first([A, B], S), 4) for x in qs]
    assert all(t.correct for t in cf) and cf[0].turns == [[A], [B]]
    orc = [replay(x, oracle(IDS), 3) for x in qs]
    assert all(t.n_calls == 1 for t in orc) and orc[-1].final == S


# ---- scored policy: the stored scores replay exactly -------------------------------------------------------------

def test_score_states_and_replay(tmp_path):
    qs = world()
    seen = []

    def fn(prompts, actions):  # prefers the pair, then select on agreement, else the strong model
        out = []
        for p, acts in zip(prompts, actions):
            seen.append(p)
            txt = p.messages[-1]["content"]
            def s(a):
                if a == call_key([A, B]):
                    return -0.1
                if a.startswith("select_response") and ("all 2" in txt or S in a):
                    return -0.05
                if a == S and "disagree" in txt:
                    return -0.2
                return -5.0
            out.append([s(a) for a in acts])
        return out

    costs = {A: 0.01, B: 0.02, S: 1.0}
    sc = score_states(qs, POOL, IDS, CFG, fn, costs, [0.0, 1.0], log=lambda m: None)
    save_scores(sc, tmp_path / "s.jsonl")
    sc2 = load_scores(tmp_path / "s.jsonl")
    assert sc2 == json.loads(json.dumps(sc))
    t = [replay(x, ScoredPolicy(sc2, costs, 0.0), 3) for x in qs]
    assert all(x.correct for x in t) and summarise(t)["share_escalated"] == pytest.approx(0.4)
    assert "oneshot" in sc2["agree0"] and state_key([[A, B]]) in sc2["dis0"]
    # tau makes the strong call dearer: at a large tau the disagreeing states pick a cheap answer instead
    assert decide_action(sc2["dis0"][state_key([[A, B]])], costs, 100.0).startswith("select_response")


# ---- pairs --agentic on the built-in example, read by the unchanged trainer -------------------------------------

def test_agentic_pairs_on_the_example_are_read_by_the_trainer(tmp_path, repo):
    from transformers import AutoTokenizer

    from xrouter_lite.agentic.pairs import run_agentic_pairs
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.pairs import PairsConfig
    from xrouter_lite.pool import load_pool
    from xrouter_lite import train

    pool = load_pool(repo / "configs" / "pool_routerbench.yaml")
    cache = tmp_path / "cache.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], cache, pool_path=repo / "configs" / "pool_routerbench.yaml",
                       limit_per_file=60)
    pc = PairsConfig.from_dict({"subset_mode": "full", "max_pairs_per_prompt": 1, "eval_fraction": 0.2, "seed": 0})
    rep = run_agentic_pairs(cache, pool, pc, AgenticConfig(), tmp_path, max_pairs_per_state=1, val_fraction=0.2, log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "dpo_train_data.json").read_text().splitlines()]
    ag = [r for r in rows if r.get("agentic")]
    assert rep["agentic_pairs"] == len(ag) > 0 and len(rows) > len(ag)
    assert {r["depth"] for r in ag} >= {0, 1}
    held = {json.loads(l)["prompt_id"] for l in (tmp_path / "test_cache.jsonl").read_text().splitlines()}
    assert not held & {r["prompt_id"] for r in rows}  # held-out questions never give a pair
    tok = AutoTokenizer.from_pretrained(repo / "models" / "SmolLM2-135M-Instruct")
    out = train.tokenize_pairs(rows[:3] + ag[:5], tok)
    assert len(out.columns["prompt_ids"]) == 8
    assert out.columns["chosen_ids"][-1] == tok(agentic_action_text(ag[4]["chosen_model"]) + tok.eos_token, add_special_tokens=False)["input_ids"]


def test_pairs_agentic_names_an_unknown_offered_model(tmp_path, repo):
    """Regression: an unknown model in --agentic-models raised NameError (PoolError was not imported) instead of a
    one-line error naming the model."""
    from typer.testing import CliRunner

    from xrouter_lite.cli import app
    from xrouter_lite.importers import import_routerbench

    cache = tmp_path / "cache.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], cache, limit_per_file=20)
    res = CliRunner().invoke(app, ["pairs", str(cache), "--pool", str(repo / "configs" / "pool_routerbench.yaml"), "--agentic",
                                   "--agentic-models", "nope,gpt-4-1106-preview", "-o", str(tmp_path / "p")])
    assert res.exit_code == 2 and "nope" in res.output and not isinstance(res.exception, NameError), res.output


# ---- the live runner ---------------------------------------------------------------------------------------------

def _rule_score(prompt, actions):
    txt = prompt.messages[-1]["content"]
    def s(a):
        if a == call_key([A, B]):
            return 0.0
        if "all 2 answers" in txt and a == select_key(A):
            return 0.0
        if a == S:
            return -0.5
        if a == select_key(S):
            return 0.0
        return -9.0
    return [s(a) for a in actions]


def _caller(answers, fail=(), delay=0.05, log=None):
    async def call(m, msgs):
        if log is not None:
            log.append((m, time.perf_counter()))
        await asyncio.sleep(delay)
        if m in fail:
            raise RuntimeError(f"{m} is down")
        return answers[m], {A: 0.001, B: 0.002, S: 0.05}[m], delay
    return call


def _est(spec):
    return {A: 0.001, B: 0.002, S: 0.05}[spec.id]


def test_runner_selects_escalates_in_parallel():
    msgs = [{"role": "user", "content": "Which? A) x B) y"}]
    log = []
    r = asyncio.run(run_agentic(msgs, POOL.subset(IDS), _caller({A: "A", B: "A", S: "B"}, log=log), _rule_score, estimate=_est))
    assert r.routing_strategy == "select" and r.model_used == A and [c["model_id"] for c in r.call_history] == [A, B]
    assert abs(log[0][1] - log[1][1]) < 0.04  # the two cheap models were called at once
    r = asyncio.run(run_agentic(msgs, POOL.subset(IDS), _caller({A: "A", B: "B", S: "B"}), _rule_score, estimate=_est))
    assert r.routing_strategy == "escalate" and r.model_used == S and r.turns_used == 2
    assert r.total_cost == pytest.approx(0.053)


def test_runner_skips_a_failing_model_and_stops_at_the_budget():
    msgs = [{"role": "user", "content": "Which?"}]
    r = asyncio.run(run_agentic(msgs, POOL.subset(IDS), _caller({A: "A", B: "B", S: "B"}, fail={B}), _rule_score, estimate=_est))
    assert r.call_history[1]["error"] and r.model_used == S  # B failed mid-trajectory: skipped, never selected
    # budget: the strong model would overspend, so no escalation; the best-supported answer so far is returned
    r = asyncio.run(run_agentic(msgs, POOL.subset(IDS), _caller({A: "A", B: "B", S: "B"}), _rule_score, estimate=_est, max_cost_usd=0.01))
    assert [c["model_id"] for c in r.call_history] == [A, B] and r.total_cost <= 0.01
    with pytest.raises(AllCallsFailedError):
        asyncio.run(run_agentic(msgs, POOL.subset(IDS), _caller({A: "A", B: "B", S: "C"}, fail={A, B, S}), _rule_score, estimate=_est))
