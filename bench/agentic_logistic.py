"""The logistic-valued agentic policy (agentic/logistic_table.py) on RouterBench's seeded splits (issue 16).

    python bench/agentic_logistic.py --cache CACHE --emb-cache EMB.npz [--seeds 0 1 2] [--bootstrap 300]
                                     [--select-only]

CACHE and EMB as bench/agentic_quality.py (--cluster-table). Per split: the policy's settings (mode, C_cond,
min_rows) are chosen on the validation part (20%) of the training side (``split_validation``): fitted on the rest,
AIQ of its tau curve on validation; the chosen setting is refitted on the whole training side and replayed on the
held-out questions by ``evaluate_agentic`` next to the cluster table, the one-shot logistic router and the other
baselines, as the main curve (paired-bootstrap CIs of new - each). --select-only: print the validation grid only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from agentic_quality import MODELS, _embeddings  # noqa: E402

from xrouter_lite.agentic.evaluate import (  # noqa: E402
    LOGISTIC_TAUS, best_under, curve, evaluate_agentic, format_report, logistic_oneshot, logistic_p, logistic_table_curves,
    mean_costs, pairable_of, split_validation,
)
from xrouter_lite.agentic.logistic_table import LogisticTable  # noqa: E402
from xrouter_lite.agentic.state import AgenticConfig, load_questions  # noqa: E402
from xrouter_lite.metrics import aiq  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402

GRID = [dict(mode="separate", C_cond=c, min_rows=30) for c in (0.3, 1.0, 3.0)] + [dict(mode="shared", C_cond=0.3, min_rows=30)]
TAUS = LOGISTIC_TAUS


def fit_policy(side, emb, offered, pairable, costs, **kw) -> LogisticTable:
    return LogisticTable(side, np.stack([emb[q.prompt_id] for q in side]), offered, pairable, costs, **kw)


def preds_of(t: LogisticTable, qs, emb):
    P = t.predict(np.stack([emb[q.prompt_id] for q in qs]))
    return {q.prompt_id: P[i] for i, q in enumerate(qs)}


def val_aiq(pts, qs, offered):
    cs = np.array([[q.outcomes[m].cost for m in offered] for q in qs]).sum(axis=0)
    return aiq([(p["_cost"].sum(), p["_ok"].mean()) for p in pts], float(cs.min()), float(cs.max()))


def choose(train, emb, pool, offered, cfg, seed, log=print):
    """The setting of best validation AIQ (fit on train minus validation, replayed on validation)."""
    fit, val = split_validation(train, 0.2, seed)
    pairable = pairable_of(pool, offered, cfg)
    costs = mean_costs(fit, offered)
    p_val = logistic_p(fit, val, emb, offered)
    base = val_aiq(curve("v", [(t, logistic_oneshot(p_val, costs, offered, t)) for t in TAUS], val, 3)["points"], val, offered)
    log(f"  seed {seed}: validation AIQ one-shot logistic {base:.4f}")
    res = []
    for kw in GRID:
        t0 = time.perf_counter()
        t = fit_policy(fit, emb, offered, pairable, costs, **kw)
        pr = preds_of(t, val, emb)
        pts = curve("v", [(tau, t.policy(pr, tau)) for tau in TAUS], val, 3)["points"]
        a = val_aiq(pts, val, offered)
        res.append((a, kw, pts))
        log(f"  seed {seed}: validation AIQ {a:.4f} (vs one-shot {a - base:+.4f})  {kw}  [{time.perf_counter() - t0:.0f}s]")
    best = max(res, key=lambda r: r[0])
    dearest = max(offered, key=lambda m: sum(q.outcomes[m].cost for q in train))  # as evaluate_agentic's
    op = best_under(best[2], 0.4 * sum(q.outcomes[dearest].cost for q in val))
    log(f"  seed {seed}: chosen {best[1]} (validation AIQ {best[0]:.4f}); at <=40% of GPT-4's cost on validation: tau "
        f"{op['knob']} ({op['accuracy']:.1%})")
    return best[1], [(a, k) for a, k, _ in res], base, op["knob"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--select-only", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    a = ap.parse_args()
    pool = load_pool(REPO / "configs" / "pool_routerbench.yaml")
    qs = load_questions(a.cache, pool, MODELS)
    cfg = AgenticConfig()
    emb = _embeddings(qs, a.emb_cache)
    res = {}
    for seed in a.seeds:
        ev = split_prompt_ids([q.prompt_id for q in qs], 0.2, seed)
        train = [q for q in qs if q.prompt_id not in ev]
        test = [q for q in qs if q.prompt_id in ev]
        kw, grid, base, op_tau = choose(train, emb, pool, MODELS, cfg, seed)
        if a.select_only:
            continue
        rep = evaluate_agentic(train, test, pool, MODELS, cfg, bootstrap=a.bootstrap, seed=seed, log=lambda m: None,
                               emb=emb, extra_curves=logistic_table_curves(emb, pool, MODELS, cfg, **kw),
                               main="logistic_table")
        rep["chosen_on_validation"] = kw
        rep["validation_grid"] = [{"aiq": x, **k} for x, k in grid]
        rep["validation_oneshot_aiq"] = base
        tp = next(p for p in rep["curves"]["logistic_table"]["points"] if p["knob"] == op_tau)
        rep["logistic_table_operating_point"] = {"tau_on_validation": op_tau, "test": tp}
        print(f"=== split seed {seed}")
        print(format_report(rep))
        print(f"  logistic-valued table: tau {op_tau} chosen on validation (most accurate at <=40% of GPT-4's cost) -> "
              f"test acc {tp['accuracy']:.1%} at {tp['total_cost'] / rep['dearest_cost']:.0%}, {tp['calls_per_question']:.2f} calls/q")
        res[seed] = rep
    if a.select_only:
        return
    print("=== summary over splits (mean, min..max)")
    for k in res[a.seeds[0]]["curves"]:
        v = [res[s]["curves"][k]["aiq"] for s in a.seeds]
        print(f"  AIQ {k:16s} mean {statistics.mean(v):.4f} ({min(v):.4f}..{max(v):.4f}) per split {', '.join(f'{x:.4f}' for x in v)}")
    for k in res[a.seeds[0]]["aiq_vs"]:
        d = [res[s]["aiq_vs"][k]["diff"] for s in a.seeds]
        ci = [res[s]["aiq_vs"][k]["ci95"] for s in a.seeds]
        print(f"  AIQ logistic_table - {k}: mean {statistics.mean(d):+.4f} per split "
              + ", ".join(f"{x:+.4f} [{c[0]:+.4f}, {c[1]:+.4f}]" for x, c in zip(d, ci)))
    for k in ("logistic_table", "logistic_oneshot", "cluster_table"):
        b = [res[s]["curves"][k]["best_at_cap"] for s in a.seeds]
        print(f"  best at <=40% of GPT-4's cost, {k}: " + ", ".join(
            f"{x['accuracy']:.1%} at {x['total_cost'] / res[s]['dearest_cost']:.0%} ({x['calls_per_question']:.2f} calls/q)"
            if x else "none" for x, s in zip(b, a.seeds)))
    for key in ("logistic_table_operating_point", "cluster_table_operating_point"):
        pts = [res[s][key]["test"] for s in a.seeds]
        print(f"  {key} (tau chosen on validation): test " + ", ".join(
            f"{p['accuracy']:.1%} at {p['total_cost'] / res[s]['dearest_cost']:.0%} ({p['calls_per_question']:.2f} calls/q)"
            for p, s in zip(pts, a.seeds)))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "agentic_logistic.json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
