"""The cost-aware reward R = R_binary x (K - min(lambda x C, cost_max)), on hand values and on the real RouterBench
cache (imported with the project's importer from ../shared/data/routerbench)."""

from __future__ import annotations

import csv
import math
import random

import pytest

from xrouter_lite.reward import RewardConfig, cost_in_unit, offered_rewards, reward


@pytest.fixture(scope="module")
def rb_groups(shared_data, tmp_path_factory, pool_rb):
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.pairs import load_groups

    cache = tmp_path_factory.mktemp("rb") / "offline_cache.jsonl"
    import_routerbench(sorted((shared_data / "routerbench").glob("*.csv")), cache)
    return load_groups(cache, pool_rb, strict=True)


def test_formula_in_each_cost_unit():
    # one correct answer that cost $0.002, the priciest offered answer cost $0.004
    assert reward(True, 0.002, RewardConfig(cost_unit="usd")) == pytest.approx(1 - 0.1 * 0.002)
    assert reward(True, 0.002, RewardConfig(cost_unit="usd_per_1k")) == pytest.approx(1 - 0.1 * 2.0)
    assert reward(True, 0.002, RewardConfig(cost_unit="normalized"), max_offered_cost=0.004) == pytest.approx(0.95)
    assert reward(True, 0.002, RewardConfig(k=2.0, lam=0.5, cost_max=1.0, cost_unit="normalized"), 0.004) == pytest.approx(1.75)
    # a wrong answer scores 0 whatever it cost
    for unit in ("usd", "usd_per_1k", "normalized"):
        assert reward(False, 0.002, RewardConfig(cost_unit=unit), 0.004) == 0.0


def test_cost_cap():
    cfg = RewardConfig(lam=0.1, cost_max=0.5, cost_unit="usd_per_1k")
    assert reward(True, 0.02, cfg) == pytest.approx(0.5)  # lambda x C = 2.0, capped at 0.5
    assert reward(True, 0.03, cfg) == reward(True, 0.02, cfg)  # saturated: a tie
    assert reward(True, 0.004, cfg) == pytest.approx(0.6)


def test_normalized_cost_is_relative_to_the_priciest_offered_answer():
    cfg = RewardConfig()
    r = offered_rewards({"a": (True, 0.001), "b": (True, 0.004), "c": (False, 0.0001)}, cfg)
    assert r == pytest.approx({"a": 1 - 0.1 * 0.25, "b": 0.9, "c": 0.0})
    assert cost_in_unit(0.0, cfg, 0.0) == 0.0  # all-free offered set (local models): no cost term
    with pytest.raises(ValueError, match="needs the most expensive"):
        cost_in_unit(0.001, cfg)


def test_errored_calls_are_never_scored():
    with pytest.raises(ValueError, match="errored"):
        reward(None, 0.001, RewardConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(cost_max=1.0), "cost_max"),
        (dict(k=1.0, cost_max=1.5), "cost_max"),
        (dict(lam=-0.1), "lam"),
        (dict(k=0.0), "k must be"),
        (dict(lam=math.nan), "lam"),
        (dict(cost_unit="dollars"), "cost_unit"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kwargs)


@pytest.mark.parametrize("cost", [math.nan, -0.001, math.inf])
def test_bad_cost_is_refused(cost):
    with pytest.raises(ValueError, match="finite number >= 0"):
        reward(True, cost, RewardConfig(cost_unit="usd"))


def test_correct_always_beats_wrong_and_cheaper_correct_never_loses():
    rng = random.Random(0)
    for _ in range(2000):
        k = rng.uniform(0.5, 2)
        cfg = RewardConfig(
            k=k, lam=rng.choice([0.0, 0.01, 0.1, 1.0, 100.0]), cost_max=rng.uniform(0, k * 0.999),
            cost_unit=rng.choice(["usd", "usd_per_1k", "normalized"]),
        )
        a, b = sorted(rng.uniform(0, 0.05) for _ in range(2))
        top = max(a, b)
        assert reward(True, b, cfg, top) > reward(False, a, cfg, top)
        assert reward(True, a, cfg, top) >= reward(True, b, cfg, top)


def test_hand_checked_routerbench_rows(rb_groups):
    """Three rows read by hand in the CSVs: the reward order is the cost order of the correct answers, wrong ones last."""
    cfg = RewardConfig()  # normalized, lambda 0.1, cap 0.5
    # mbpp.dev.92: 7 correct, 4 wrong; the cheapest answer overall (mistral-7b, $0.0000538) is wrong
    g = rb_groups["mbpp-mbpp.dev.92"].valid()
    assert g["mistralai/mistral-7b-chat"] == (False, pytest.approx(5.38e-05))
    assert g["gpt-4-1106-preview"] == (True, pytest.approx(0.0064))
    r = offered_rewards(g, cfg)
    order = sorted(r, key=lambda m: -r[m])
    assert order[:7] == [
        "WizardLM/WizardLM-13B-V1.2",  # $0.0000678
        "meta/code-llama-instruct-34b-chat",  # $0.00020176
        "gpt-3.5-turbo-1106",  # $0.00024
        "claude-instant-v1",  # $0.000548
        "claude-v1",  # $0.004616
        "claude-v2",  # $0.005456
        "gpt-4-1106-preview",  # $0.0064, the priciest: R = 1 - 0.1
    ]
    assert r["gpt-4-1106-preview"] == pytest.approx(0.9)
    assert r["WizardLM/WizardLM-13B-V1.2"] == pytest.approx(1 - 0.1 * 6.78e-05 / 0.0064)
    assert {r[m] for m in order[7:]} == {0.0}
    # arc-challenge.test.1108: claude-v1 and claude-v2 cost exactly the same ($0.004264): equal rewards
    r = offered_rewards(rb_groups["arc-challenge-arc-challenge.test.1108"].valid(), cfg)
    assert max(r, key=r.get) == "mistralai/mixtral-8x7b-chat"
    assert r["claude-v1"] == r["claude-v2"] > r["gpt-4-1106-preview"] > 0
    assert r["claude-instant-v1"] == 0.0  # wrong, although cheaper than 4 correct models
    # winogrande.dev.949: only 4 correct; the best is WizardLM ($0.0001056)
    r = offered_rewards(rb_groups["winogrande-winogrande.dev.949"].valid(), cfg)
    assert sorted((m for m in r if r[m] > 0), key=lambda m: -r[m]) == [
        "WizardLM/WizardLM-13B-V1.2", "mistralai/mixtral-8x7b-chat", "meta/llama-2-70b-chat", "claude-v1"
    ]


@pytest.mark.parametrize("cfg", [RewardConfig(), RewardConfig(cost_unit="usd_per_1k", lam=0.01), RewardConfig(cost_unit="usd", lam=10.0)])
def test_best_reward_model_is_routerbench_oracle_on_every_row(rb_groups, shared_data, cfg):
    """RouterBench's own `oracle_model_to_route_to` column (the cheapest correct model) is the highest-reward model
    on every question some model answered correctly; the others are all-wrong."""
    agree = no_correct = 0
    for name in ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv"):
        with open(shared_data / "routerbench" / name, newline="", encoding="utf-8") as f:
            csv.field_size_limit(1 << 30)
            for row in csv.DictReader(f):
                pid = f"{row['eval_name']}-{row['sample_id']}"
                if pid not in rb_groups:  # rows skipped by the importer (empty cells)
                    continue
                r = offered_rewards(rb_groups[pid].valid(), cfg)
                if max(r.values()) == 0:
                    assert row["oracle_model_to_route_to"] == "no_model_correct"
                    no_correct += 1
                    continue
                assert max(r, key=r.get) == row["oracle_model_to_route_to"], pid
                agree += 1
    assert agree == 2151 and no_correct == 54
