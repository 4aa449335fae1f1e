"""The logistic-valued agentic policy (agentic/logistic_table.py): per-question values from logistic regressions on
the embedding; its root is the one-shot logistic router; one decision function drives the replay and the live
runner to the same trajectories; a failing model mid-trajectory is skipped."""

import asyncio

import numpy as np

from xrouter_lite.agentic.evaluate import logistic_oneshot, logistic_p
from xrouter_lite.agentic.logistic_table import LogisticTable, majority
from xrouter_lite.agentic.replay import replay
from xrouter_lite.agentic.runner import run_agentic
from xrouter_lite.pool import ModelSpec, Pool

from test_agentic_table import COST, IDS, A, B, S, _caller, _q, _write_cache, colour_and_topology, fake_pool

NORM = {m: c / COST[S] for m, c in COST.items()}


def world(n=40, seed=0):
    """Region E (easy): the cheap answers agree and are right. Region M (mixed, one blob): half the questions like E,
    half where the cheap answers disagree and only the strong model is right; the embedding cannot tell them apart."""
    rng = np.random.default_rng(seed)
    e, m = np.zeros(8), np.zeros(8)
    e[0], m[1] = 6.0, 6.0
    qs, X = [], []
    for i in range(n):
        qs.append(_q(f"e{i}", ["A", "A", "A"], [True, True, True]))
        X.append(e + rng.normal(0, 0.3, 8))
    for i in range(n):
        qs.append(_q(f"m{i}", ["A", "A", "A"] if i % 2 else ["A", "B", "C"], [True, True, True] if i % 2 else [False, False, True]))
        X.append(m + rng.normal(0, 0.3, 8))
    return qs, np.array(X, dtype=np.float32)


def table(qs, X, pairable=frozenset({A, B})):
    return LogisticTable(qs, X, IDS, set(pairable), NORM, C=100.0, C_cond=100.0, min_rows=5)


def test_agreement_where_the_embedding_cannot_tell_and_the_tau_knob():
    qs, X = world()
    t = table(qs, X)
    P = t.predict(X)
    preds = {q.prompt_id: P[i] for i, q in enumerate(qs)}
    tr = {q.prompt_id: replay(q, t.policy(preds, 0.5), 3) for q in qs}
    assert tr["e0"].turns == [[A]] and tr["e0"].correct  # easy by its embedding: the one-shot choice, one call
    assert tr["m1"].turns == [[A, B]] and tr["m1"].final == A  # mixed region: the cheap pair; agree -> select
    assert tr["m0"].turns == [[A, B], [S]] and tr["m0"].final == S  # disagree -> escalate to the strong model
    assert all(x.correct for x in tr.values())
    # tau 0: accuracy at any price: the strong model at once in the mixed region (no second turn)
    assert replay(qs[41], t.policy(preds, 0.0), 3).turns == [[S]]


def test_root_is_the_one_shot_logistic_router():
    """Without a pair to call, the policy is exactly the one-shot logistic router (same classifiers, same rule)."""
    qs, X = world(seed=1)
    rng = np.random.default_rng(3)
    for q in qs:  # noisier labels so that the classifiers' probabilities are not all 0 or 1
        for m in IDS:
            if rng.random() < 0.2:
                q.outcomes[m].correct = not q.outcomes[m].correct
    t = LogisticTable(qs, X, IDS, set(), NORM)
    P = t.predict(X)
    preds = {q.prompt_id: P[i] for i, q in enumerate(qs)}
    emb = {q.prompt_id: X[i] for i, q in enumerate(qs)}
    p_log = logistic_p(qs, qs, emb, IDS)
    for tau in (0.0, 0.1, 0.3, 0.6, 1.0, 3.0):
        one, new = logistic_oneshot(p_log, NORM, IDS, tau), t.policy(preds, tau)
        assert [new(q, []) for q in qs] == [one(q, []) for q in qs]


def test_sparse_condition_gets_its_smoothed_mean_and_majority_rule():
    qs, X = world(n=6)
    t = LogisticTable(qs, X, IDS, {A, B}, NORM, min_rows=30)
    p = t.predict(X[:1])[0]
    # 9 agreeing training rows (6 easy + 3 mixed), all right: (9 + 1) / (9 + 2)
    assert abs(p[t.index[("sel", A, B, True, A)]] - 10 / 11) < 1e-9
    # the stacked regressions (one matrix product) give each classifier's own probabilities
    assert np.allclose(t.predict(X), np.stack([f(X) for f in t._fns], axis=1), atol=1e-5)
    assert majority([A, B, S], {A: "1", B: "2", S: "2"}, NORM) == S
    assert majority([A, B, S], {A: "1", B: "1", S: "2"}, NORM) == B  # the dearer of the agreeing two
    assert majority([A, B, S], {A: None, B: None, S: None}, NORM) == S


def test_live_runner_makes_the_replays_trajectories_and_skips_a_failure():
    qs, X = world()
    t = table(qs, X)
    P = t.predict(X)
    preds = {q.prompt_id: P[i] for i, q in enumerate(qs)}
    pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", input_price=1, output_price=1, context_window=4096,
                           max_output_tokens=64, tier="premium" if m == S else "budget") for m in IDS])

    def decider(p, tau=0.5):
        def decide(turns, acts):
            reads = {c.model_id: c.read for tt in turns for c in tt if c.error is None}
            failed = [c.model_id for tt in turns for c in tt if c.error is not None]
            return t.decide(p, reads, acts, tau, failed)
        return decide

    for q in qs[::3] + [qs[40], qs[41]]:
        rep = replay(q, t.policy(preds, 0.5), 3)
        live = asyncio.run(run_agentic([{"role": "user", "content": q.prompt}], pool.subset(IDS), _caller(q), None,
                                       decide=decider(preds[q.prompt_id]), estimate=lambda s: COST[s.id]))
        assert [[c["model_id"] for c in live.call_history if c["turn"] == k + 1] for k in range(live.turns_used)] == rep.turns
        assert live.model_used == rep.final
    # the spare model fails in the pair: one answer is no agreement, so the policy escalates (never selects B)
    q = qs[41]
    live = asyncio.run(run_agentic([{"role": "user", "content": q.prompt}], pool.subset(IDS), _caller(q, fail={B}),
                                   None, decide=decider(preds[q.prompt_id]), estimate=lambda s: COST[s.id]))
    assert [c["model_id"] for c in live.call_history] == [A, B, S] and live.call_history[1]["error"]
    assert live.model_used == S and live.routing_strategy == "escalate"


def test_eval_agentic_replays_it_as_the_main_curve():
    """eval --agentic --router logistic's evaluation: the logistic-valued table is the main curve, compared with the
    one-shot logistic router and the cluster table by paired bootstrap."""
    from xrouter_lite.agentic.evaluate import evaluate_agentic, logistic_table_curves
    from xrouter_lite.agentic.state import AgenticConfig

    qs, X = world(n=80)
    emb = {q.prompt_id: X[i] for i, q in enumerate(qs)}
    pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", input_price=1, output_price=1, context_window=4096,
                           max_output_tokens=64, tier="premium" if m == S else "budget") for m in IDS])
    cfg = AgenticConfig()
    train, test = [q for i, q in enumerate(qs) if i % 4 < 2], [q for i, q in enumerate(qs) if i % 4 >= 2]
    rep = evaluate_agentic(train, test, pool, IDS, cfg, bootstrap=20, log=lambda m: None, emb=emb, lams=[0.1, 0.5],
                           extra_curves=logistic_table_curves(emb, pool, IDS, cfg, taus=[0.0, 0.5, 2.0]),
                           main="logistic_table")
    assert rep["main"] == "logistic_table" and {"logistic_oneshot", "cluster_table"} <= set(rep["aiq_vs"])
    pts = rep["curves"]["logistic_table"]["points"]
    assert [p["knob"] for p in pts] == [0.0, 0.5, 2.0] and pts[1]["share_escalated"] > 0


def test_live_server_router_agentic_with_the_logistic_router(tmp_path):
    """serve --router logistic --train-cache CACHE: model router-agentic-<tau> runs the logistic-valued table live
    against the fake upstream (real all-MiniLM-L6-v2): agreement -> select, disagreement -> escalate, a failing
    model mid-trajectory skipped."""
    import httpx

    from xrouter_lite.fake_upstream import FakeUpstream
    from xrouter_lite.routing import load_router
    from xrouter_lite.serve import ServeSettings, create_app

    from test_agentic_serve import Live

    # colour questions: the cheap answers agree and are right, or disagree and only the strong model is right; the
    # topology questions: the spare and the strong model are right
    cache = tmp_path / "train.jsonl"
    _write_cache(cache, colour_and_topology())
    with FakeUpstream() as up:
        pool = fake_pool(up)
        router = load_router("logistic", pool=pool, train_cache=cache)
        settings = ServeSettings(upstream_timeout_s=5.0, train_cache=cache)
        with Live(create_app(pool=pool, router=router, settings=settings), start_s=120) as srv:
            def ask(text, model="router-agentic-0.3"):
                r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                               json={"model": model, "messages": [{"role": "user", "content": text}]})
                assert r.status_code == 200, r.text
                return r.json()["router_metadata"]

            grape = "What colour is a grape? A) red B) green"
            up.control(answers={A: "A", B: "A", S: "A"}, script={})
            md = ask(grape)
            assert [c["model_id"] for c in md["call_history"]] == [A, B] and md["routing_strategy"] == "select"
            up.control(answers={A: "A", B: "B", S: "B"}, script={})
            md = ask(grape)  # disagreeing cheap answers: escalate
            assert [c["model_id"] for c in md["call_history"]] == [A, B, S] and md["routing_strategy"] == "escalate"
            assert md["model_used"] == S and md["tau"] == 0.3 and md["decisions"]
            up.control(answers={A: "A", B: "A", S: "A"}, script={B: ["500"] * 5})
            md = ask(grape)  # the spare model fails: one answer is no agreement, so escalate; B never selected
            assert [c["model_id"] for c in md["call_history"]] == [A, B, S] and md["call_history"][1]["error"]
            assert md["model_used"] == S
