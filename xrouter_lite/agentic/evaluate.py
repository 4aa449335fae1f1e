"""``xrouter-lite eval --agentic``: replay the agentic policy and every baseline on held-out questions; accuracy,
total cost of all calls, calls per question, share escalated, per dataset; curves over the knob (lambda of the
exact-value table, tau of the trained router); AIQ with paired-bootstrap intervals against each baseline."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from ..metrics import aiq, hull_value, ndch
from ..pool import Pool
from ..reward import RewardConfig
from .baselines import agree_then_dearest, cheapest_first, oracle, per_task_rule
from .policy import ScoredPolicy, decide_action
from .replay import replay, summarise
from .state import AgenticConfig, Question
from .values import InfoValues

LAMS = [0.0, 0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5]
TAUS = [0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0]
AGREE_PAIRS = [
    ("zero-one-ai/Yi-34B-Chat", "mistralai/mixtral-8x7b-chat"),
    ("zero-one-ai/Yi-34B-Chat", "gpt-3.5-turbo-1106"),
    ("mistralai/mixtral-8x7b-chat", "gpt-3.5-turbo-1106"),
    ("zero-one-ai/Yi-34B-Chat", "claude-instant-v1"),
]
CHAINS = [
    ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat"],
    ["mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "gpt-3.5-turbo-1106"],
    ["mistralai/mistral-7b-chat", "zero-one-ai/Yi-34B-Chat"],
    ["mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat"],
]


def pairable_of(pool: Pool, offered: Sequence[str], cfg: AgenticConfig) -> set[str]:
    return {m for m in offered if pool.get(m).tier in cfg.pair_tiers}


def fit_table(train: Sequence[Question], pool: Pool, offered: Sequence[str], cfg: AgenticConfig, lam: float) -> InfoValues:
    c = cfg.model_copy(update={"reward": RewardConfig(k=cfg.reward.k, lam=lam, cost_max=cfg.reward.cost_max)})
    return InfoValues(train, offered, pairable_of(pool, offered, cfg), c)


def curve(name: str, policies: Sequence[tuple[float, object]], qs: Sequence[Question], max_calls: int) -> dict:
    pts = []
    for knob, pol in policies:
        trajs = [replay(q, pol, max_calls) for q in qs]
        s = summarise(trajs)
        s["knob"] = knob
        s["_ok"] = np.array([t.correct for t in trajs], dtype=float)
        s["_cost"] = np.array([t.cost for t in trajs])
        pts.append(s)
    return {"name": name, "points": pts}


def mean_costs(train: Sequence[Question], offered: Sequence[str]) -> dict[str, float]:
    raw = {m: sum(q.outcomes[m].cost for q in train) / max(1, len(train)) for m in offered}
    top = max(raw.values()) or 1.0
    return {m: c / top for m, c in raw.items()}


def oneshot_policy(scores, costs, tau):
    def policy(q, turns):
        if turns:
            return "select_response:" + turns[0][0]
        return decide_action(scores[q.prompt_id]["oneshot"], costs, tau)
    return policy


LOGISTIC_TAUS = [round(0.01 * i, 2) for i in range(0, 101)] + [1.5, 2.0, 3.0, 5.0]
VERIFY_THETAS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.01]  # 1.01: never verify (the one-shot router)


def logistic_oneshot(p_correct, costs, offered, tau):
    """The one-shot `logistic` router's rule (simple_routers.LogisticRouter: argmax P(correct) - tau x c over the
    offered models, P from per-model logistic regressions on the question's embedding): one call, no reading."""
    from ..prompting import select_key

    def policy(q, turns):
        p = p_correct[q.prompt_id]
        m = max(offered, key=lambda m: (p[m] - tau * costs[m], -costs[m]))
        return select_key(m) if turns else m
    return policy


def logistic_verify(p_correct, costs, offered, tau, theta, dearest):
    """The one-shot logistic choice m1, verified when unsure: P(m1) >= theta: call m1 alone and answer with it;
    else call m1 and the next best non-dearest model m2 at once: their read answers agree -> m1's answer, else call
    the dearest model and answer with it. theta > 1: the plain one-shot router."""
    from ..prompting import call_key, select_key

    def policy(q, turns):
        p = p_correct[q.prompt_id]
        rank = sorted(offered, key=lambda m: (-(p[m] - tau * costs[m]), costs[m]))
        m1 = rank[0]
        called = [m for t in turns for m in t]
        if not called:
            if p[m1] >= theta or m1 == dearest:
                return m1
            m2 = next((m for m in rank[1:] if m != dearest), None)
            return call_key([m1, m2]) if m2 else m1
        if dearest in called:
            return select_key(dearest)
        if len(called) == 1:
            return select_key(called[0])
        r = [q.outcomes[m].read for m in called]
        return select_key(called[0]) if r[0] is not None and all(x == r[0] for x in r) else dearest
    return policy


def logistic_p(train, test, emb, offered, C: float = 1.0):
    """P(correct) of each offered model on each test question, as LogisticRouter computes it (C = its default)."""
    from ..simple_routers import correctness_classifier

    X = np.stack([emb[q.prompt_id] for q in train])
    Xt = np.stack([emb[q.prompt_id] for q in test])
    cols = {m: correctness_classifier(X, [q.outcomes[m].correct for q in train], C)(Xt) for m in offered}
    return {q.prompt_id: {m: float(cols[m][i]) for m in offered} for i, q in enumerate(test)}


def logistic_table_curves(emb, pool: Pool, offered: Sequence[str], cfg: AgenticConfig, taus=None, **kw):
    """``extra_curves`` of ``evaluate_agentic``: the logistic-valued table (``logistic_table.py``; ``kw`` its
    settings, default those chosen on the validation parts of three RouterBench splits) fitted on the training side,
    replayed over ``taus`` (default ``LOGISTIC_TAUS``, the one-shot logistic router's)."""
    from .logistic_table import LogisticTable

    def extra(train, test):
        t = LogisticTable(train, np.stack([emb[q.prompt_id] for q in train]), offered, pairable_of(pool, offered, cfg),
                          mean_costs(train, offered), turn_penalty=cfg.turn_penalty, **kw)
        P = t.predict(np.stack([emb[q.prompt_id] for q in test]))
        preds = {q.prompt_id: P[i] for i, q in enumerate(test)}
        return {"logistic_table": ("logistic-valued table (tau)",
                                   [(tau, t.policy(preds, tau, cfg.max_calls)) for tau in (taus or LOGISTIC_TAUS)])}

    return extra


def split_validation(train: Sequence[Question], fraction: float, seed: int) -> tuple[list[Question], list[Question]]:
    ids = sorted(q.prompt_id for q in train)
    random.Random(f"agentic-val\x1f{seed}").shuffle(ids)
    val = set(ids[: round(fraction * len(ids))])
    return [q for q in train if q.prompt_id not in val], [q for q in train if q.prompt_id in val]


def best_under(points, cost_cap: float):
    ok = [p for p in points if p["total_cost"] <= cost_cap + 1e-12]
    return max(ok, key=lambda p: (p["accuracy"], -p["total_cost"])) if ok else None


def evaluate_agentic(
    train: Sequence[Question], test: Sequence[Question], pool: Pool, offered: Sequence[str], cfg: AgenticConfig, *,
    lams: Sequence[float] = LAMS, taus: Sequence[float] = TAUS, scores=None, val_scores_split=None,
    val_fraction: float = 0.2, cost_share_cap: float = 0.4, bootstrap: int = 1000, seed: int = 0, log=print,
    emb=None, n_clusters: int | None = None, extra_curves=None, main: str | None = None,
) -> dict:
    """Every curve on ``test``; the operating point of each tunable policy chosen on a validation part of ``train``
    (most accurate at <= ``cost_share_cap`` of the dearest model's cost there), then reported on ``test``.
    ``emb`` (prompt_id -> all-MiniLM-L6-v2 embedding of train and test questions): also the cluster table
    (``table.py``: k-means of the training embeddings, then the exact-value table per cluster; the main curve).
    ``extra_curves(train, test) -> {key: (name, [(knob, policy), ...])}``: more policies replayed on ``test``;
    ``main``: the curve the others are compared with (default the cluster table, else the agentic router)."""
    mc = cfg.max_calls
    dearest = max(offered, key=lambda m: sum(q.outcomes[m].cost for q in train))
    fit, val = split_validation(train, val_fraction, seed)
    curves = {}
    # the exact-value table (tuned on validation, refitted on the whole training side)
    val_pts = curve("table", [(l, fit_table(fit, pool, offered, cfg, l).act) for l in lams], val, mc)["points"]
    cap_val = cost_share_cap * sum(q.outcomes[dearest].cost for q in val)
    pick = best_under(val_pts, cap_val)
    tables = {l: fit_table(train, pool, offered, cfg, l) for l in lams}
    curves["table"] = curve("exact-value table (lambda)", [(l, tables[l].act) for l in lams], test, mc)
    costs = mean_costs(train, offered)
    ct_pick = None
    if emb is not None:
        from .table import ClusterTable, fit_clusters, nearest

        def ctable(side, qs):
            cents, labels = fit_clusters(np.stack([emb[q.prompt_id] for q in side]), n_clusters, seed)
            t = ClusterTable(side, labels, offered, pairable_of(pool, offered, cfg), cfg)
            cl = dict(zip((q.prompt_id for q in qs), nearest(cents, np.stack([emb[q.prompt_id] for q in qs]))))
            return t, cl

        t_fit, cl_val = ctable(fit, val)
        v_pts = curve("cluster table", [(l, t_fit.policy(cl_val, l)) for l in lams], val, mc)["points"]
        ct_pick = best_under(v_pts, cap_val)
        t_all, cl_test = ctable(train, test)
        curves["cluster_table"] = curve("cluster table (MiniLM k-means; tau = lambda)", [(l, t_all.policy(cl_test, l)) for l in lams], test, mc)
        p_log = logistic_p(train, test, emb, offered)
        curves["logistic_oneshot"] = curve("one-shot logistic router (MiniLM; tau)",
                                           [(t, logistic_oneshot(p_log, costs, offered, t)) for t in LOGISTIC_TAUS], test, mc)
        # the logistic router verified by agreement when unsure: theta chosen on validation (AIQ of its tau curve)
        p_val = logistic_p(fit, val, emb, offered)
        c_fit = mean_costs(fit, offered)
        val_cost = np.array([[q.outcomes[m].cost for m in offered] for q in val]).sum(axis=0)

        def val_aiq(th):
            pts = curve("v", [(t, logistic_verify(p_val, c_fit, offered, t, th, dearest)) for t in LOGISTIC_TAUS[::4]], val, mc)["points"]
            return aiq([(p["_cost"].sum(), p["_ok"].mean()) for p in pts], float(val_cost.min()), float(val_cost[offered.index(dearest)]))

        theta = max(VERIFY_THETAS, key=val_aiq)
        log(f"  logistic + verify: theta {theta} chosen on validation")
        curves["logistic_verify"] = curve(f"logistic router, verified by agreement when P < {theta} (tau)",
                                          [(t, logistic_verify(p_log, costs, offered, t, theta, dearest)) for t in LOGISTIC_TAUS], test, mc)
    if extra_curves is not None:
        for k, (name, pols) in extra_curves(train, test).items():
            curves[k] = curve(name, pols, test, mc)
    if scores is not None:
        curves["agentic"] = curve("agentic router (tau)", [(t, ScoredPolicy(scores, costs, t)) for t in taus], test, mc)
        curves["oneshot"] = curve("one-shot router (tau)", [(t, oneshot_policy(scores, costs, t)) for t in taus], test, mc)
    curves["per_task"] = curve("per-task rule (tau)", [(t, per_task_rule(train, offered, t)) for t in [0, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2]], test, mc)
    curves["agree"] = curve("cascade: two cheap agree, else dearest", [(i, agree_then_dearest(a, b, dearest)) for i, (a, b) in enumerate(AGREE_PAIRS) if a in offered and b in offered], test, mc)
    chains = [c for c in CHAINS if all(m in offered for m in c)] or [sorted((m for m in offered if m != dearest), key=costs.get)[:3]]
    curves["cheapest_first"] = curve(
        "cascade: cheapest first, stop when two agree", [(i, cheapest_first(c, dearest)) for i, c in enumerate(chains)], test, 4
    )
    curves["oracle"] = curve("oracle", [(0, oracle(offered))], test, mc)
    singles = curve("single models", [(m, _single(m)) for m in offered], test, mc)

    n = len(test)
    ok_single = np.stack([p["_ok"] for p in singles["points"]])
    cost_single = np.stack([p["_cost"] for p in singles["points"]])
    di = offered.index(dearest)

    def aiq_of(name, idx):
        pts = [(p["_cost"][idx].sum(), p["_ok"][idx].mean()) for p in curves[name]["points"]]
        cs = cost_single[:, idx].sum(axis=1)
        return aiq(pts, float(cs.min()), float(cs[di]))

    main = main or ("cluster_table" if "cluster_table" in curves else ("agentic" if "agentic" in curves else "table"))
    full = np.arange(n)

    def margins(k, idx):
        """main's hull (its own points, in accuracy over total cost) at each point of k, minus that point's accuracy"""
        hull = ndch([(p["_cost"][idx].sum(), p["_ok"][idx].mean()) for p in curves[main]["points"]])
        return [hull_value(hull, p["_cost"][idx].sum()) - p["_ok"][idx].mean() for p in curves[k]["points"]]

    rng = np.random.default_rng(seed)
    boots = {k: [] for k in curves if k not in (main, "oracle")}
    mboots = {k: [] for k in boots}
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        a = aiq_of(main, idx)
        for k in boots:
            boots[k].append(a - aiq_of(k, idx))
            mboots[k].append(margins(k, idx))
    ref_cost = float(cost_single[di].sum())
    report = {
        "n_test": n, "n_train": len(train), "dearest": dearest, "dearest_accuracy": float(ok_single[di].mean()),
        "dearest_cost": ref_cost, "main": main, "curves": {}, "aiq_vs": {},
        "singles": {m: {"accuracy": p["accuracy"], "total_cost": p["total_cost"]} for m, p in zip(offered, singles["points"])},
    }
    for k, c in curves.items():
        report["curves"][k] = {
            "name": c["name"], "aiq": aiq_of(k, full),
            "points": [{kk: v for kk, v in p.items() if not kk.startswith("_")} for p in c["points"]],
            "best_at_cap": _strip(best_under(c["points"], cost_share_cap * ref_cost)),
        }
    for k, b in boots.items():
        b = sorted(b)
        report["aiq_vs"][k] = {"diff": aiq_of(main, full) - aiq_of(k, full), "ci95": [b[int(0.025 * len(b))], b[int(0.975 * len(b)) - 1]]}
        mb = np.array(mboots[k])  # [bootstrap, points]
        report["aiq_vs"][k]["margin_at_points"] = [
            {"knob": p["knob"], "cost_share": p["total_cost"] / ref_cost, "accuracy": p["accuracy"], "margin": m,
             "ci95": [float(np.quantile(mb[:, j], 0.025)), float(np.quantile(mb[:, j], 0.975))]}
            for j, (p, m) in enumerate(zip(curves[k]["points"], margins(k, full)))]
    if pick is not None:
        tp = next(p for p in curves["table"]["points"] if p["knob"] == pick["knob"])
        report["table_operating_point"] = {"lam_on_validation": pick["knob"], "validation": _strip(pick), "test": _strip(tp)}
    if ct_pick is not None:
        tp = next(p for p in curves["cluster_table"]["points"] if p["knob"] == ct_pick["knob"])
        report["cluster_table_operating_point"] = {"tau_on_validation": ct_pick["knob"], "validation": _strip(ct_pick), "test": _strip(tp)}
    if scores is not None and val_scores_split is not None:
        vq = val_scores_split
        vpts = curve("agentic", [(t, ScoredPolicy(scores, costs, t)) for t in taus], vq, mc)["points"]
        vp = best_under(vpts, cost_share_cap * sum(q.outcomes[dearest].cost for q in vq))
        if vp is not None:
            tp = next(p for p in curves["agentic"]["points"] if p["knob"] == vp["knob"])
            report["agentic_operating_point"] = {"tau_on_validation": vp["knob"], "validation": _strip(vp), "test": _strip(tp)}
    return report


def _single(m):
    def policy(q, turns):
        return "select_response:" + m if turns else m
    return policy


def _strip(p):
    return None if p is None else {k: v for k, v in p.items() if not k.startswith("_") and k != "per_dataset"}


def format_report(rep: dict) -> str:
    ref = rep["dearest_cost"]
    lines = [f"{rep['n_test']} held-out questions; reference {rep['dearest']}: {rep['dearest_accuracy']:.1%} at ${ref:.4f}"]
    for k, c in rep["curves"].items():
        b = c["best_at_cap"]
        bs = f"best at <=40% cost: {b['accuracy']:.1%} at {b['total_cost'] / ref:.0%}" if b else "no point at <=40% cost"
        lines.append(f"  {c['name']:48s} AIQ {c['aiq']:.4f}  {bs}")
        for p in c["points"]:
            lines.append(
                f"      knob {str(p['knob'])[:28]:>28s}: acc {p['accuracy']:.1%}  cost {p['total_cost'] / ref:6.1%} of dearest  "
                f"calls/q {p['calls_per_question']:.2f}  escalated {p['share_escalated']:.0%}"
            )
    for k, v in rep["aiq_vs"].items():
        lines.append(f"  AIQ {rep['main']} - {k}: {v['diff']:+.4f}  95% CI [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]")
        for m in v.get("margin_at_points", []):
            lines.append(f"      at {k} point {str(m['knob'])[:12]} ({m['accuracy']:.1%} at {m['cost_share']:.0%}): {rep['main']} hull "
                         f"{100 * m['margin']:+.1f} pt [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]")
    if "table_operating_point" in rep:
        o = rep["table_operating_point"]
        lines.append(f"  table: lambda {o['lam_on_validation']} chosen on validation -> test acc {o['test']['accuracy']:.1%} at {o['test']['total_cost'] / ref:.0%}")
    if "cluster_table_operating_point" in rep:
        o = rep["cluster_table_operating_point"]
        lines.append(f"  cluster table: tau {o['tau_on_validation']} chosen on validation -> test acc {o['test']['accuracy']:.1%} at {o['test']['total_cost'] / ref:.0%}")
    if "agentic_operating_point" in rep:
        o = rep["agentic_operating_point"]
        lines.append(f"  agentic: tau {o['tau_on_validation']} chosen on validation -> test acc {o['test']['accuracy']:.1%} at {o['test']['total_cost'] / ref:.0%}")
    return "\n".join(lines)


def lora_score_fn(router, max_prompt_tokens: int | None = 8192):
    """score_fn over a loaded ``LoRARouter``: the rendered state (``prompting.encode_prompt``) and every action's
    tokens (``prompting.encode_agentic_action``), scored by the router's own packed scorer."""
    from ..prompting import encode_agentic_action, encode_prompt

    cache: dict[str, list[int]] = {}

    def act(a):
        if a not in cache:
            cache[a] = encode_agentic_action(router.tokenizer, a)
        return cache[a]

    def fn(prompts, actions):
        ids = [encode_prompt(router.tokenizer, p, max_prompt_tokens) for p in prompts]
        return router._score_batch(ids, [[act(a) for a in acts] for acts in actions])

    return fn


def run_eval_cli(*, train_cache, test_cache, pool, out_dir, adapter=None, base_model=None, max_calls=3, models=None,
                 taus=None, seed=0, val_fraction=0.2, bootstrap=1000, batch_size=8, device=None, max_queries=None,
                 log=print, router=None, n_clusters=None) -> str:
    """``router="cluster"``: the cluster table too (the policy ``serve --router cluster`` runs for router-agentic),
    on all-MiniLM-L6-v2 embeddings of the training and held-out questions; ``router="logistic"``: the cluster table
    and the logistic-valued table (``serve --router logistic``'s router-agentic policy; the main curve)."""
    import json
    from pathlib import Path

    from ..pool import load_pool
    from .pairs import default_offered
    from .policy import load_scores, save_scores, score_states
    from .state import load_questions

    for p in (train_cache, test_cache):
        if not Path(p).exists():
            raise FileNotFoundError(f"cache file not found: {p}")
    the_pool = load_pool(pool)
    cfg = AgenticConfig(max_calls=max_calls)
    from ..records import iter_records

    test_ids = {r.prompt_id for _ln, r in iter_records(test_cache)}
    train = [q for q in load_questions(train_cache, the_pool, models) if q.prompt_id not in test_ids]
    offered = models or default_offered(the_pool, train, cfg)
    test = load_questions(test_cache, the_pool, offered)
    if not test:
        raise ValueError(f"{test_cache}: no question with a valid answer of every offered model ({', '.join(offered)})")
    if max_queries:
        rnd = random.Random(f"agentic-sample\x1f{seed}")
        test = sorted(rnd.sample(test, min(max_queries, len(test))), key=lambda q: q.prompt_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taus = list(taus or TAUS)
    scores = val = None
    if adapter:
        from ..router import LoRARouter

        _fit, val = split_validation(train, val_fraction, seed)
        if max_queries:
            val = val[:max_queries]
        sp = out / "agentic_scores.jsonl"
        router = LoRARouter(base_model, adapter, mode="score", device=device, batch_size=batch_size)
        scores = score_states(val + test, the_pool, offered, cfg, lora_score_fn(router), mean_costs(train, offered), taus,
                              batch=batch_size, log=log)
        save_scores(scores, sp)
        scores = load_scores(sp)
    emb = extra = None
    if router not in (None, "lora", "cluster", "logistic"):
        raise ValueError(f"eval --agentic --router {router!r}: the agentic policies are the LoRA router's (--adapter), "
                         "the cluster table's (--router cluster) and the logistic-valued table's (--router logistic)")
    if router in ("cluster", "logistic"):
        from ..simple_routers import embed_texts, load_encoder

        qs = train + test
        log(f"agentic: embedding {len(qs)} questions (all-MiniLM-L6-v2) for the {router} policy")
        e = embed_texts(load_encoder(device), [q.prompt for q in qs])
        emb = {q.prompt_id: v for q, v in zip(qs, e)}
    if router == "logistic":
        extra = logistic_table_curves(emb, the_pool, offered, cfg)
    rep = evaluate_agentic(train, test, the_pool, offered, cfg, taus=taus, scores=scores, val_scores_split=val,
                           val_fraction=val_fraction, bootstrap=bootstrap, seed=seed, log=log, emb=emb,
                           n_clusters=n_clusters, extra_curves=extra, main="logistic_table" if extra else None)
    rep["offered"] = offered
    text = format_report(rep)
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text("```\n" + text + "\n```\n", encoding="utf-8")
    return text
