"""The cluster table (agentic/table.py): the agentic policy that serves without a trained LLM. Its one decision
function drives the replay (evaluation) and the live runner (serving) to the same trajectories; a live request
through the server with the cluster router (real all-MiniLM-L6-v2) escalates, selects and skips a failing model."""

import asyncio

import httpx

from xrouter_lite.agentic.replay import replay, summarise
from xrouter_lite.agentic.runner import run_agentic
from xrouter_lite.agentic.state import AgenticConfig, QOutcome, Question
from xrouter_lite.agentic.table import ClusterTable, default_clusters
from xrouter_lite.pool import ModelSpec, Pool
from xrouter_lite.records import CacheRecord, RecordWriter, TokenUsage
from xrouter_lite.reward import RewardConfig

A, B, S = "cheap", "spare", "strong"
IDS = [A, B, S]
COST = {A: 0.001, B: 0.002, S: 0.05}
CFG = AgenticConfig(max_calls=3, reward=RewardConfig(k=1.0, lam=0.5, cost_max=0.8), min_support=1)


def _q(pid, reads, correct, prompt=None):
    return Question(pid, "d", "mc", prompt or f"question {pid}", {
        m: QOutcome(ok, COST[m], f"The answer is {r}", r) for m, r, ok in zip(IDS, reads, correct)})


def world():
    """Cluster 0 ('easy'): the cheap answers agree and are right. Cluster 1 ('hard'): they disagree, only the strong
    model is right, and in cluster 1 even agreeing cheap answers are wrong."""
    qs = [_q(f"e{i}", ["A", "A", "A"], [True, True, True]) for i in range(6)]
    qs += [_q(f"d{i}", ["A", "B", "C"], [False, False, True]) for i in range(4)]
    qs += [_q(f"h{i}", ["A", "A", "B"], [False, False, True]) for i in range(5)]
    return qs, [0] * 10 + [1] * 5


def test_table_learns_per_cluster_and_the_tau_knob():
    qs, cl = world()
    t = ClusterTable(qs, cl, IDS, {A, B}, CFG)
    of = {q.prompt_id: c for q, c in zip(qs, cl)}
    trajs = {q.prompt_id: replay(q, t.policy(of, 0.5), 3) for q in qs}
    assert trajs["e0"].turns == [[A, B]] and trajs["e0"].final == A  # agree -> select
    assert trajs["d0"].turns == [[A, B], [S]] and trajs["d0"].final == S  # disagree -> escalate
    assert trajs["h0"].turns == [[S]] and trajs["h0"].final == S  # the hard cluster goes straight to the strong model
    assert summarise(list(trajs.values()))["accuracy"] == 1.0
    # tau 0 (the reward's lambda): accuracy at any price, so the strong model at once (no waiting for a second turn)
    t2 = [replay(q, t.policy(of, 0.0), 3) for q in qs]
    assert all(x.turns == [[S]] for x in t2)
    assert default_clusters(1764) == 15 and default_clusters(10) == 2


def _caller(q, fail=()):
    async def call(m, msgs):
        await asyncio.sleep(0.001)
        if m in fail:
            raise RuntimeError(f"{m} is down")
        return q.outcomes[m].response, COST[m], 0.001
    return call


def test_live_runner_makes_the_replays_trajectories_and_skips_a_failure():
    qs, cl = world()
    t = ClusterTable(qs, cl, IDS, {A, B}, CFG)
    of = {q.prompt_id: c for q, c in zip(qs, cl)}
    pool = Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", input_price=1, output_price=1, context_window=4096,
                           max_output_tokens=64, tier="premium" if m == S else "budget") for m in IDS])
    for q in qs:
        rep = replay(q, t.policy(of, 0.5), 3)

        def decide(turns, acts, q=q):
            return t.decide(of[q.prompt_id], {c.model_id: c.read for tt in turns for c in tt if c.error is None}, acts, 0.5)

        live = asyncio.run(run_agentic([{"role": "user", "content": q.prompt}], pool.subset(IDS), _caller(q), None,
                                       decide=decide, estimate=lambda s: COST[s.id]))
        assert [[c["model_id"] for c in live.call_history if c["turn"] == k + 1] for k in range(live.turns_used)] == rep.turns
        assert live.model_used == rep.final
    # a failing cheap model mid-trajectory: never selected, the policy goes on (escalates: one answer is no agreement)
    q = qs[0]

    def decide(turns, acts):
        return t.decide(0, {c.model_id: c.read for tt in turns for c in tt if c.error is None}, acts, 0.5)

    live = asyncio.run(run_agentic([{"role": "user", "content": q.prompt}], pool.subset(IDS), _caller(q, fail={B}),
                                   None, decide=decide, estimate=lambda s: COST[s.id]))
    assert live.call_history[1]["error"] and live.model_used != B


def _write_cache(path, qs):
    with RecordWriter(path) as w:
        for q in qs:
            for m, o in q.outcomes.items():
                w.write(CacheRecord(q.prompt_id, q.dataset, q.prompt, "A", m, o.response, o.correct, TokenUsage(),
                                    o.cost, 0.01, None, "mc"))


def colour_and_topology():
    """The live tests' training questions (two clear topics for real MiniLM embeddings): colour questions where the
    cheap answers agree and are right (10) or disagree and only the strong model is right (10), and topology
    questions where the spare and the strong model are right (10); >= min_support (8) in each branch."""
    things = ("tomato", "strawberry", "cherry", "fire truck", "ruby", "brick", "frog", "leaf", "cucumber", "pea",
              "lobster", "apple", "lettuce", "emerald", "cardinal bird", "lime", "kiwi", "broccoli", "poppy", "olive")
    easy = [f"What colour is a {x}? A) red B) green" for x in things]
    hard = [f"Prove the theorem about {x} in algebraic topology. A) yes B) no" for x in
            ("homotopy groups", "fibrations", "spectral sequences", "cohomology rings", "covering spaces", "CW complexes",
             "knots", "manifolds", "simplicial sets", "loop spaces")]
    qs = [_q(f"e{i}", ["A", "A", "A"] if i < 10 else ["A", "B", "B"], [True, True, True] if i < 10 else [False, False, True], p)
          for i, p in enumerate(easy)]
    return qs + [_q(f"h{i}", ["A", "B", "B"], [False, True, True], p) for i, p in enumerate(hard)]


def fake_pool(up):
    """The three models (cheap, spare: budget; strong: premium) served by the fake upstream ``up``."""
    return Pool([ModelSpec(id=m, litellm_model=f"openai/{m}", api_base=up.base_url, input_price=p, output_price=p,
                           context_window=8192, max_output_tokens=256, tier="premium" if m == S else "budget")
                 for m, p in ((A, 0.1), (B, 0.2), (S, 5.0))])


def test_live_server_router_agentic_with_the_cluster_router(tmp_path):
    """serve --router cluster --train-cache CACHE: model router-agentic-<tau> runs the cluster table live against
    the fake upstream (real MiniLM embeddings; two clear topics)."""
    from xrouter_lite.fake_upstream import FakeUpstream
    from xrouter_lite.routing import load_router
    from xrouter_lite.serve import ServeSettings, create_app

    from test_agentic_serve import Live

    cache = tmp_path / "train.jsonl"
    _write_cache(cache, colour_and_topology())
    with FakeUpstream() as up:
        pool = fake_pool(up)
        router = load_router("cluster", pool=pool, train_cache=cache)
        settings = ServeSettings(upstream_timeout_s=5.0, train_cache=cache)
        app = create_app(pool=pool, router=router, settings=settings)
        with Live(app, start_s=120) as srv:
            import time

            t0 = time.monotonic()  # the table is built at start-up, in the background, before any agentic request
            while getattr(app.state.server, "agentic_table", None) is None and time.monotonic() - t0 < 60:
                time.sleep(0.1)
            assert app.state.server.agentic_table is not None

            def ask(text, model="router-agentic-0.5"):
                r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                               json={"model": model, "messages": [{"role": "user", "content": text}]})
                assert r.status_code == 200, r.text
                return r.json()["router_metadata"]

            up.control(answers={A: "A", B: "A", S: "A"}, script={})
            md = ask("What colour is a grape? A) red B) green")
            assert [c["model_id"] for c in md["call_history"]] == [A, B] and md["routing_strategy"] == "select"
            up.control(answers={A: "A", B: "B", S: "B"}, script={})
            md = ask("What colour is a grape? A) red B) green")  # disagreeing cheap answers: escalate
            assert [c["model_id"] for c in md["call_history"]] == [A, B, S] and md["routing_strategy"] == "escalate"
            assert md["model_used"] == S
            # the topology cluster: the spare model alone is right there, so it is called directly
            md = ask("Prove the theorem about homology groups in algebraic topology. A) yes B) no")
            assert [c["model_id"] for c in md["call_history"]] == [B] and md["routing_strategy"] == "direct"
            assert md["tau"] == 0.5 and md["decisions"]
