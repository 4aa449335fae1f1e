"""The router's decision rule (xrouter_lite/decision.py): the decision head (fit, save, load, one rule for evaluation
and serving), the exact curves whose figures do not depend on a tau list, and the validation split it is fitted on."""

import json
import random

import pytest

from xrouter_lite import metrics
from xrouter_lite.decision import (
    HEAD_FILE,
    DecisionHead,
    HeadError,
    envelope,
    exact_curve,
    fit_head,
    load_head,
    route_scores,
)
from xrouter_lite.router import decide

MODELS = ["cheap", "mid", "dear"]
COSTS = {"cheap": 0.01, "mid": 0.1, "dear": 1.0}


def _synthetic(n, seed=0):
    """Questions of two kinds: 'easy' (everyone right) and 'hard' (only dear right). The router's scores show the
    kind only through the pattern of the whole vector (cheap close to dear when easy), not through one score."""
    rng = random.Random(seed)
    scores, correct, outcomes = [], [], []
    for _ in range(n):
        easy = rng.random() < 0.5
        base = rng.gauss(0, 3)  # a per-question offset: one model's own score says nothing
        s = {"cheap": base + (-1 if easy else -4) + rng.gauss(0, 0.5), "mid": base - 2 + rng.gauss(0, 0.5),
             "dear": base + rng.gauss(0, 0.5)}
        c = {"cheap": easy, "mid": easy and rng.random() < 0.8, "dear": True}
        scores.append(s)
        correct.append(c)
        outcomes.append({m: (c[m], COSTS[m]) for m in MODELS})
    return scores, correct, outcomes


def test_envelope_agrees_with_decide_at_every_tau():
    rng = random.Random(1)
    for _ in range(200):
        u = {m: rng.random() for m in MODELS}
        c = {m: rng.choice([0.0, 0.2, 0.5, 1.0]) for m in MODELS}
        env = envelope(u, c)
        # just after each breakpoint (exactly at one, the two lines tie up to rounding), and anywhere else
        taus = [0.0] + [t * (1 + 1e-9) + 1e-12 for t, _ in env] + [rng.random() * 5 for _ in range(20)]
        for tau in taus:
            piece = [m for t, m in env if t <= tau][-1]
            assert piece == decide(u, c, tau)[0], (u, c, tau, env)


def test_exact_curve_holds_every_point_of_any_tau_list_and_its_aiq_does_not_depend_on_one():
    scores, _, outcomes = _synthetic(120)
    costs = [COSTS] * len(scores)
    pts = exact_curve(scores, costs, outcomes)
    exact = {(round(p["total_cost"], 9), round(p["accuracy"], 9)) for p in pts}
    grid = [0.0] + [10 ** (k / 50) for k in range(-200, 200)]
    for tau in grid:
        chosen = [decide(s, COSTS, tau)[0] for s in scores]
        point = (round(sum(o[m][1] for o, m in zip(outcomes, chosen)), 9),
                 round(sum(o[m][0] for o, m in zip(outcomes, chosen)) / len(chosen), 9))
        assert point in exact
    xy = lambda ps: [(p["total_cost"], p["accuracy"]) for p in ps]
    lo, hi = 0.01 * len(scores), 1.0 * len(scores)
    coarse = [p for p in pts if p["tau"] in (0.0, pts[-1]["tau"])]
    assert metrics.aiq(xy(pts), lo, hi) >= metrics.aiq(xy(coarse), lo, hi)
    # bootstrap weights: weight 2 on a question is the same as the question twice
    w = [2] + [1] * (len(scores) - 1)
    twice = exact_curve([scores[0]] + scores, [COSTS] * (len(scores) + 1), [outcomes[0]] + outcomes)
    got = xy(exact_curve(scores, costs, outcomes, weights=w))
    assert len(got) == len(xy(twice))
    for (c1, q1), (c2, q2) in zip(got, xy(twice)):
        assert c1 == pytest.approx(c2) and q1 == pytest.approx(q2)


def test_head_reads_the_whole_score_vector_and_beats_the_raw_rule(tmp_path):
    scores, correct, outcomes = _synthetic(400, seed=2)
    head = fit_head(scores[:200], correct[:200])
    test_s, test_o = scores[200:], outcomes[200:]
    p = [head.p_correct(s) for s in test_s]
    # calibrated enough to tell the kinds apart: cheap's P(correct) is high exactly on the easy questions
    easy = [o["cheap"][0] for o in test_o]
    hi = [q["cheap"] for q, e in zip(p, easy) if e]
    lo = [q["cheap"] for q, e in zip(p, easy) if not e]
    assert min(hi) > 0.5 > max(lo)
    n = len(test_s)
    lo_c, hi_c = 0.01 * n, 1.0 * n
    xy = lambda ps: [(q["total_cost"], q["accuracy"]) for q in ps]
    a_head = metrics.aiq(xy(exact_curve(p, [COSTS] * n, test_o)), lo_c, hi_c)
    a_raw = metrics.aiq(xy(exact_curve(test_s, [COSTS] * n, test_o)), lo_c, hi_c)
    assert a_head > a_raw + 0.02
    # saved next to the adapter, read back identical; the same rule decides
    path = head.save(tmp_path)
    assert path.name == HEAD_FILE
    again = load_head(tmp_path)
    assert again.p_correct(test_s[0]) == pytest.approx(p[0])
    m, adj, util, used = route_scores(test_s[0], COSTS, 0.3, again)
    assert used and util == pytest.approx(p[0]) and m == decide(p[0], COSTS, 0.3)[0]
    # another offered set: the head does not apply, the raw rule decides and says so
    sub = {k: v for k, v in test_s[0].items() if k != "mid"}
    m, _, util, used = route_scores(sub, COSTS, 0.3, again)
    assert not used and util == sub and m == decide(sub, COSTS, 0.3)[0]
    assert load_head(tmp_path / "nowhere") is None


def test_the_head_is_checked_against_the_raw_rule_on_validation():
    """With the questions' costs, fit_head measures (cross-fitted) whether its rule beats the raw rule there: it does
    where the kind shows only in the score vector's pattern, it does not where the raw scores already rank perfectly."""
    scores, correct, outcomes = _synthetic(200, seed=3)
    costs = [{m: COSTS[m] for m in MODELS}] * len(scores)
    cv = fit_head(scores, correct, costs=costs).info["cv_aiq"]
    assert cv["head"] > cv["raw"] + 1e-4  # the head wins beyond rounding
    perfect = [{m: (10.0 if c[m] else -10.0) - 5 * COSTS[m] for m in MODELS} for c in correct]
    cv = fit_head(perfect, correct, costs=costs).info["cv_aiq"]
    assert cv["raw"] >= cv["head"] - 1e-4 and not cv["head"] > cv["raw"] + 1e-4
    assert "cv_aiq" not in fit_head(scores, correct).info  # not measured without costs


def test_bad_head_files_name_the_file(tmp_path):
    (tmp_path / HEAD_FILE).write_text("{not json")
    with pytest.raises(HeadError, match=HEAD_FILE):
        load_head(tmp_path)
    good = DecisionHead(models=["a", "b"], coef=[[0, 0], [0, 0]], intercept=[0, 0])
    bad = {**good.__dict__, "coef": [[0, 0]]}
    (tmp_path / HEAD_FILE).write_text(json.dumps(bad))
    with pytest.raises(HeadError, match="coef"):
        load_head(tmp_path)
    with pytest.raises(HeadError, match="same models"):
        fit_head([{"a": 0, "b": 1}] * 5 + [{"a": 0}], [{"a": True, "b": False}] * 6)


def test_metrics_holes_and_cheapest_point():
    pts = [(0.0, 0.5), (1.0, 0.6), (10.0, 0.9)]
    assert metrics.cost_fifths_covered(pts) == [True, False, False, False, True]
    assert metrics.cheapest_reaching(pts, 0.6) == (1.0, 0.6)
    assert metrics.cheapest_reaching(pts, 0.95) is None
    assert all(metrics.cost_fifths_covered([(k, 0.5) for k in range(11)]))


def test_pairs_validation_part_comes_from_the_training_side_only(repo, tmp_path):
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.pairs import PairsConfig, run_pairs
    from xrouter_lite.pool import load_pool

    cache = tmp_path / "c.jsonl"
    import_routerbench([repo / "data" / "examples" / "routerbench_sample.csv"], cache)
    pool = load_pool(repo / "configs" / "pool_routerbench.yaml")
    rep = run_pairs(cache, pool, PairsConfig(eval_fraction=0.2, val_fraction=0.25, subset_mode="full"), out_dir=tmp_path)
    ids = lambda name: {json.loads(x)["prompt_id"] for x in (tmp_path / name).read_text().splitlines()}
    test, val, train = ids("test_cache.jsonl"), ids("val_cache.jsonl"), ids("dpo_train_data.json")
    assert val and test and train and not (val & test) and not (val & train) and not (test & train)
    assert rep.prompts_val == len(val) and rep.prompts_eval == len(test)
    assert len(val) == round(0.25 * (rep.prompts_read - len(test)))
    # the held-out split is the same with or without a validation part
    run_pairs(cache, pool, PairsConfig(eval_fraction=0.2, subset_mode="full"), out_dir=tmp_path / "b")
    assert {json.loads(x)["prompt_id"] for x in (tmp_path / "b" / "test_cache.jsonl").read_text().splitlines()} == test
