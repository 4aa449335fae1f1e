"""Router quality on RouterBench from decisions files: the comparison of issue 14, and hull margins of one run.

The comparison (every figure of docs/BENCHMARKS.md "Router quality: decision head, exact curves, three seeded splits"):

    python bench/router_quality.py --cache runs/q/cache.jsonl --knn --bootstrap 1000 \
        --split 0 S0/eval_test/decisions.jsonl S0/eval_val/decisions.jsonl --split 1 ... --split 2 ...

For each seeded split (the pairs stage's own split: ``--eval-fraction 0.2`` held out, then ``--val-fraction 0.25`` of
the rest for validation) it reads the router's candidate scores on the held-out questions and on the validation
questions, fits the decision head on the VALIDATION scores only (``xrouter_lite.decision.fit_head``, as
``xrouter-lite fit-head`` does), and computes on the held-out questions the EXACT curve (every breakpoint of tau) of:
the router's raw rule (logp - tau x c), the router with its decision head (P(correct) - tau x c), the per-task rule
(best single model per dataset on the training side: knows the task label), kNN on all-MiniLM-L6-v2 (``--knn``; the
KNNRouter's encoder and formula on cached embeddings) and an ensemble head over router scores + kNN. It prints AIQ,
the cost (share of the strongest model's) of the cheapest point within 1 point of it and of the first point at 85%,
which fifths of the curve's cost range hold a point, the AIQ differences with 95% paired-bootstrap intervals (the same
resampled questions for every curve), and the mean and spread across splits (``--json`` keeps it all).

Hull margins of one run (the earlier check):

    python bench/router_quality.py runs/quality/eval/decisions.jsonl runs/quality/test_cache.jsonl
    python bench/router_quality.py DECISIONS TEST_CACHE --taus 0 3 15 300 --bootstrap 2000

Reads an evaluation's ``decisions.jsonl`` (or ``.jsonl.gz``) (every candidate's score and normalised cost per question, so the
router's decision under any ``tau`` is re-derived without the model) and the held-out ``test_cache.jsonl`` (every
model's recorded correctness and cost). For each tau it prints the router's accuracy and total cost, the accuracy of
the single models' non-decreasing convex hull at that same cost, the margin above it, and a 95% paired-bootstrap
interval of that margin: questions are resampled, and the router's point, the single models' points and their hull
are recomputed on each resample. A margin whose interval lies above 0 is "more accurate than every single model at
the same cost" beyond the noise of this many test questions. The best single model per dataset (chosen on the
test set itself: an optimistic reference) and the oracle are printed for scale.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.evaluate import load_prompts  # noqa: E402
from xrouter_lite.metrics import hull_value, ndch  # noqa: E402
from xrouter_lite.router import decide  # noqa: E402


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def load(decisions: Path, test_cache: Path):
    # the evaluation's own reader: errored and ungraded records left out, the later of two answers kept
    prompts, _ = load_prompts(test_cache)
    outcome = {p.prompt_id: {m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in prompts}
    dataset = {p.prompt_id: p.dataset or "-" for p in prompts}
    rows = []
    with _open(decisions) as f:
        for n, line in enumerate(f, 1):
            d = json.loads(line)
            pid = d["prompt_id"]
            if pid not in outcome:
                raise SystemExit(f"{decisions}:{n}: prompt {pid!r} is not in {test_cache}")
            if not d.get("base_scores"):
                raise SystemExit(f"{decisions}:{n}: no candidate scores (a generate-mode evaluation cannot be re-derived)")
            rows.append((pid, d["base_scores"], d["costs"]))
    return rows, outcome, dataset


def point(idx, picks, outcome):
    """(total cost, accuracy) of choosing picks[i] for question idx[i]."""
    cost = acc = 0.0
    for i in idx:
        ok, c = outcome[i][picks[i]]
        acc += ok
        cost += c
    return cost, acc / len(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("decisions", type=Path, nargs="?")
    ap.add_argument("test_cache", type=Path, nargs="?")
    ap.add_argument("--taus", type=float, nargs="*", help="default: the taus of report.json beside the decisions")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", nargs=3, action="append", metavar=("SEED", "TEST_DECISIONS", "VAL_DECISIONS"),  # VAL "-": the run's own head
                    help="comparison mode: one seeded split's held-out and validation decisions (repeat per split)")
    ap.add_argument("--cache", type=Path, help="comparison mode: the whole imported cache the splits were made from")
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--knn", action="store_true", help="comparison mode: add kNN and the kNN ensemble (MiniLM on the CPU)")
    ap.add_argument("--knn-k", type=int, default=10)
    ap.add_argument("--emb-cache", type=Path, help="where to keep the MiniLM embeddings between runs (.npz)")
    ap.add_argument("--json", type=Path, help="comparison mode: write every figure here")
    a = ap.parse_args()
    if a.split:
        if a.cache is None:
            ap.error("--split needs --cache")
        compare(a)
        return
    if a.decisions is None or a.test_cache is None:
        ap.error("give DECISIONS TEST_CACHE, or --cache with --split ...")

    rows, outcome, dataset = load(a.decisions, a.test_cache)
    taus = a.taus
    if not taus:
        rep = a.decisions.parent / "report.json"
        rep = rep if rep.exists() else a.decisions.parent / a.decisions.name.replace("decisions", "report").replace(".jsonl.gz", ".json")
        taus = json.loads(rep.read_text(encoding="utf-8"))["config"]["taus"] if rep.exists() else [0.0, 1.0, 10.0, 100.0]
    pids = [pid for pid, _, _ in rows]
    models = sorted(set.intersection(*(set(outcome[p]) for p in pids)))
    picks_by_tau = {t: {pid: decide(s, c, t)[0] for pid, s, c in rows} for t in taus}
    singles = {m: {pid: m for pid in pids} for m in models}
    oracle = {}
    for pid in pids:
        right = [(outcome[pid][m][1], m) for m in models if outcome[pid][m][0]]
        oracle[pid] = min(right)[1] if right else min((outcome[pid][m][1], m) for m in models)[1]
    per_ds_best = {}
    for ds in sorted(set(dataset[p] for p in pids)):
        ids = [p for p in pids if dataset[p] == ds]
        pts = {m: point(ids, singles[m], outcome) for m in models}
        per_ds_best[ds] = max(models, key=lambda m: (pts[m][1], -pts[m][0]))  # most accurate, then cheapest
    best_ds = {pid: per_ds_best[dataset[pid]] for pid in pids}

    def stats(idx):
        hull = ndch([point(idx, singles[m], outcome) for m in models])
        out = {}
        for t in taus:
            c, q = point(idx, picks_by_tau[t], outcome)
            out[t] = (q, c, hull_value(hull, c))
        return out

    full = stats(pids)
    rng = random.Random(a.seed)
    boots = defaultdict(list)
    for _ in range(a.bootstrap):
        idx = [pids[rng.randrange(len(pids))] for _ in pids]
        for t, (q, c, h) in stats(idx).items():
            boots[t].append(q - h)

    print(f"{a.decisions}: {len(pids)} held-out questions, {len(models)} models, {a.bootstrap} bootstrap resamples")
    print(f"{'model':36s} {'accuracy':>8s} {'total $':>9s}")
    for m in sorted(models, key=lambda m: point(pids, singles[m], outcome)[0]):
        c, q = point(pids, singles[m], outcome)
        print(f"{m:36s} {q:8.1%} {c:9.4f}")
    c, q = point(pids, best_ds, outcome)
    print(f"{'best single per dataset (on test)':36s} {q:8.1%} {c:9.4f}  " + ", ".join(f"{k}: {v.split('/')[-1]}" for k, v in per_ds_best.items()))
    c, q = point(pids, oracle, outcome)
    print(f"{'oracle (cheapest correct)':36s} {q:8.1%} {c:9.4f}")
    print()
    print(f"{'tau':>8s} {'accuracy':>8s} {'total $':>9s} {'hull at $':>9s} {'margin':>7s} {'95% CI':>17s}  calls")
    for t in taus:
        q, c, h = full[t]
        b = sorted(boots[t])
        lo, hi = b[int(0.025 * len(b))], b[int(0.975 * len(b)) - 1]
        share = defaultdict(int)
        for pid in pids:
            share[picks_by_tau[t][pid].split("/")[-1]] += 1
        top = ", ".join(f"{m} {n / len(pids):.0%}" for m, n in sorted(share.items(), key=lambda kv: -kv[1])[:3])
        flag = " *" if lo > 0 else ""
        print(f"{t:8g} {q:8.1%} {c:9.4f} {h:9.1%} {100 * (q - h):+6.1f} [{100 * lo:+5.1f}, {100 * hi:+5.1f}] pt{flag}  {top}")
    print("margin: router accuracy minus the single models' hull at the router's cost, in points; * = CI above 0")


# ==== issue 14: the whole comparison over seeded splits (router raw / router + decision head / per-task rule / kNN) ====


def _split_ids(prompts, seed: int, eval_fraction: float, val_fraction: float):
    """The pairs stage's own split (pairs.split_prompt_ids): held-out, then validation from the training side."""
    from xrouter_lite.pairs import split_prompt_ids

    ids = {p.prompt_id for p in prompts}
    test = split_prompt_ids(ids, eval_fraction, seed)
    val = split_prompt_ids(ids - test, val_fraction, seed)
    return test, val, ids - test - val


def _embeddings(prompts, path: Path | None, truncation_side: str = "right"):
    """all-MiniLM-L6-v2 embeddings of every prompt (the KNNRouter's encoder and settings), cached in ``path``.
    ``truncation_side`` "left": a prompt over 256 word pieces keeps its end (the question of a few-shot prompt)."""
    import numpy as np

    ids = [p.prompt_id for p in prompts]
    if path is not None and path.exists():
        z = np.load(path, allow_pickle=False)
        if list(z["ids"]) == ids:
            return {i: e for i, e in zip(ids, z["emb"])}
    from xrouter_lite.simple_routers import embed_texts, load_encoder

    enc = load_encoder("cpu")
    enc.tokenizer.truncation_side = truncation_side
    emb = embed_texts(enc, [p.prompt for p in prompts])
    if path is not None:
        np.savez(path, ids=np.array(ids), emb=emb)
    return {i: e for i, e in zip(ids, emb)}


def label_matrices(cache: Path, emb_cache: Path | None):
    """A full cache as matrices, question order of the file: (prompts, models (sorted), prompt ids, correctness Y and
    cost C (questions x models), MiniLM embeddings E (questions x 384))."""
    import numpy as np

    from xrouter_lite.evaluate import load_prompts

    full, _ = load_prompts(cache)
    emb = _embeddings(full, emb_cache)
    models = sorted(full[0].outcomes)
    ids = [p.prompt_id for p in full]
    Y = np.array([[p.outcomes[m].correct for m in models] for p in full], dtype=int)
    C = np.array([[p.outcomes[m].cost for m in models] for p in full])
    return full, models, ids, Y, C, np.stack([emb[i] for i in ids])


def _knn(emb, train_ids, query_ids, outcome, models, k: int = 10):
    """KNNRouter.p_correct on cached embeddings: the mean correctness of each model over the k most similar
    training prompts (cosine)."""
    import numpy as np

    tr = sorted(train_ids)
    E = np.stack([emb[i] for i in tr])
    Y = np.array([[float(outcome[i][m][0]) for m in models] for i in tr])
    Q = np.stack([emb[i] for i in query_ids])
    top = np.argpartition(-(Q @ E.T), k - 1, axis=1)[:, :k]
    return [dict(zip(models, Y[t].mean(0))) for t in top]


def _metrics(pts, singles, strong):
    from xrouter_lite import metrics

    cs = [c for c, _ in singles.values()]
    xy = [(p["total_cost"], p["accuracy"]) for p in pts]
    sc, sq = singles[strong]
    near = metrics.cheapest_reaching(xy, sq - 0.01)
    at85 = metrics.cheapest_reaching(xy, 0.85)
    return {
        "aiq": metrics.aiq(xy, min(cs), max(cs)),
        "share_within_1pt_of_strong": near[0] / sc if near else None,
        "share_at_85": at85[0] / sc if at85 else None,
        "fifths": metrics.cost_fifths_covered(xy),
        "n_points": len(xy),
    }


def compare(args) -> dict:
    import numpy as np

    from xrouter_lite.decision import (
        _features, _fit_logistic, aiq_of_envelopes, curve_of_envelopes, envelope, fit_head, read_scores,
    )
    from xrouter_lite.evaluate import load_prompts, mean_cost_per_query
    from xrouter_lite.metrics import aiq

    prompts, _ = load_prompts(args.cache)
    by = {p.prompt_id: p for p in prompts}
    models = sorted(prompts[0].outcomes)
    outcome = {p.prompt_id: {m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in prompts}
    emb = _embeddings(prompts, args.emb_cache) if args.knn else None
    rng = np.random.default_rng(args.seed)
    results = {}
    for seed, test_dec, val_dec in args.split:
        seed = int(seed)
        test_ids, val_ids, fit_ids = _split_ids(prompts, seed, args.eval_fraction, args.val_fraction)
        test_s = read_scores(test_dec)
        val_s = None if val_dec == "-" else read_scores(val_dec)  # "-": the head that decided (base_scores) is read
        if set(test_s) != test_ids:
            raise SystemExit(f"{test_dec}: its questions are not split {seed}'s held-out questions")
        if val_s is not None and set(val_s) != val_ids:
            raise SystemExit(f"{val_dec}: its questions are not split {seed}'s validation questions")
        tq = sorted(test_ids)
        side = [by[i] for i in fit_ids | val_ids]  # the training side: costs and the per-task rule
        cpq = mean_cost_per_query(side)
        top = max(cpq.values())
        cvec = {m: cpq[m] / top for m in models}
        outs = [outcome[i] for i in tq]
        singles = {m: (sum(o[m][1] for o in outs), sum(o[m][0] for o in outs) / len(outs)) for m in models}
        strong = max(models, key=lambda m: (singles[m][1], -singles[m][0]))
        # utilities of each rule on the held-out questions (every choice made on the training side only)
        util: dict[str, list[dict[str, float]]] = {}
        util["router (raw scores)"] = [test_s[i] for i in tq]
        vq = sorted(val_ids)
        vcorrect = [{m: outcome[i][m][0] for m in models} for i in vq]
        if val_s is None:
            with _open(Path(test_dec)) as f:
                p_head = {d["prompt_id"]: d["base_scores"] for d in map(json.loads, f) if d.get("valid", True)}
            util["router + decision head"] = [p_head[i] for i in tq]
            head = None
        else:
            head = fit_head([val_s[i] for i in vq], vcorrect)
            util["router + decision head"] = [head.p_correct(test_s[i]) for i in tq]
        acc: dict[str, dict[str, list[int]]] = {}
        for p in side:
            a = acc.setdefault(p.dataset, {m: [0, 0] for m in models})
            for m in models:
                a[m][0] += p.outcomes[m].correct
                a[m][1] += 1
        util["best single per dataset (task label)"] = [{m: acc[by[i].dataset][m][0] / acc[by[i].dataset][m][1] for m in models} for i in tq]
        if emb is not None:
            util["kNN (MiniLM, k=10)"] = _knn(emb, fit_ids | val_ids, tq, outcome, models, args.knn_k)
        if emb is not None and val_s is not None:
            # ensemble: the head over the router's log-softmax scores AND kNN's P(correct) (kNN on the fit part only)
            kv = _knn(emb, fit_ids, vq, outcome, models, args.knn_k)
            kt = _knn(emb, fit_ids, tq, outcome, models, args.knn_k)
            Xv = np.hstack([_features([[val_s[i][m] for m in models] for i in vq]), [[d[m] for m in models] for d in kv]])
            Xt = np.hstack([_features([[test_s[i][m] for m in models] for i in tq]), [[d[m] for m in models] for d in kt]])
            Yv = np.array([[float(c[m]) for m in models] for c in vcorrect])
            mu, sd = Xv.mean(0), Xv.std(0) + 1e-9  # standardised (kNN's [0, 1] and log-probs' tens), l2 by CV on validation
            Xv, Xt = (Xv - mu) / sd, (Xt - mu) / sd
            parts = np.array_split(np.random.default_rng(0).permutation(len(Xv)), 5)
            best = None
            for lam in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0):
                loss = 0.0
                for k in range(5):
                    te = parts[k]
                    tr = np.concatenate([parts[j] for j in range(5) if j != k])
                    for j in range(len(models)):
                        w = _fit_logistic(Xv[tr], Yv[tr, j], lam)
                        q = np.clip(1 / (1 + np.exp(-(w[0] + Xv[te] @ w[1:]))), 1e-6, 1 - 1e-6)
                        loss -= float(np.sum(Yv[te, j] * np.log(q) + (1 - Yv[te, j]) * np.log(1 - q)))
                if best is None or loss < best[0]:
                    best = (loss, lam)
            P = np.zeros((len(tq), len(models)))
            for j in range(len(models)):
                w = _fit_logistic(Xv, Yv[:, j], best[1])
                P[:, j] = 1 / (1 + np.exp(-(w[0] + Xt @ w[1:])))
            util["router + kNN ensemble head"] = [dict(zip(models, r)) for r in P]
        envs = {k: [envelope(u, cvec) for u in us] for k, us in util.items()}
        full = {k: _metrics(curve_of_envelopes(e, outs), singles, strong) for k, e in envs.items()}
        full["single models' hull"] = {"aiq": aiq(list(singles.values()), min(c for c, _ in singles.values()), max(c for c, _ in singles.values()))}
        # paired bootstrap of the AIQ differences: the same resampled questions for every curve
        diffs = {}
        pairs = [(a, b) for a in ("router + decision head", "router (raw scores)", "router + kNN ensemble head") if a in envs
                 for b in ("best single per dataset (task label)", "kNN (MiniLM, k=10)") if b in envs]
        pairs.append(("router + decision head", "router (raw scores)"))
        boot = {pr: [] for pr in pairs}
        for _ in range(args.bootstrap):
            cnt = np.bincount(rng.integers(0, len(tq), len(tq)), minlength=len(tq))
            a = {k: aiq_of_envelopes(envs[k], outs, models, cnt) for k in {x for pr in pairs for x in pr}}
            for pr in pairs:
                boot[pr].append(a[pr[0]] - a[pr[1]])
        for pr in pairs:
            b = sorted(boot[pr])
            diffs[f"{pr[0]} - {pr[1]}"] = {
                "aiq_diff": full[pr[0]]["aiq"] - full[pr[1]]["aiq"],
                "ci95": [b[int(0.025 * len(b))], b[int(0.975 * len(b)) - 1]] if b else None,
            }
        results[seed] = {"n_test": len(tq), "n_val": len(vq), "n_fit": len(fit_ids), "strong": strong,
                         "strong_point": singles[strong], "head_l2": head.l2 if head else None, "curves": full, "diffs": diffs}
        print(f"\n== split {seed}: {len(tq)} held-out, {len(vq)} validation, {len(fit_ids)} training questions; "
              f"strong = {strong} {100 * singles[strong][1]:.1f}% at ${singles[strong][0]:.3f}; head l2 " + (f"{head.l2:g}" if head else "(the run's own)"))
        print(f"{'curve':40s} {'AIQ':>6s} {'pts':>5s} {'<=1pt of strong at':>19s} {'85% at':>8s} fifths")
        for k, m in full.items():
            if "n_points" not in m:
                print(f"{k:40s} {m['aiq']:6.3f}")
                continue
            f = lambda v: "never" if v is None else f"{100 * v:.0f}% cost"
            print(f"{k:40s} {m['aiq']:6.3f} {m['n_points']:5d} {f(m['share_within_1pt_of_strong']):>19s} "
                  f"{f(m['share_at_85']):>8s} {''.join('x' if x else '.' for x in m['fifths'])}")
        for k, d in diffs.items():
            ci = d["ci95"]
            print(f"  AIQ {k}: {d['aiq_diff']:+.4f}" + (f"  95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))
    # across splits
    print(f"\n== across {len(results)} split(s): mean (sd) [min, max]")
    names = list(next(iter(results.values()))["curves"])
    summary = {}
    for k in names:
        v = [r["curves"][k]["aiq"] for r in results.values()]
        summary[k] = {"aiq_mean": float(np.mean(v)), "aiq_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "aiq": v}
        print(f"{k:40s} AIQ {np.mean(v):.4f} ({summary[k]['aiq_sd']:.4f}) [{min(v):.4f}, {max(v):.4f}]")
    for k in next(iter(results.values()))["diffs"]:
        v = [r["diffs"][k]["aiq_diff"] for r in results.values()]
        summary[k] = {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "per_split": v}
        print(f"AIQ {k}: {np.mean(v):+.4f} ({summary[k]['sd']:.4f}) per split " + ", ".join(f"{x:+.4f}" for x in v))
    out = {"splits": results, "summary": summary, "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
