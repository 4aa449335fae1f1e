"""Issue 15 with the `logistic` router (the best one-shot router measured, issue 14): trained on the full cache and
on the cost-ordered cache (--explore 0.08) of each seeded split, evaluated on the split's held-out questions (full
rows): exact curves, AIQ, paired bootstrap of the difference. CPU only; embeddings cached.

    python bench/traversal_savings.py FULL --explore 0.08 --seeds 0 1 2 --out-dir CO_DIR   # the cost-ordered caches
    python bench/traversal_logistic.py FULL CO_DIR --emb-cache EMB.npz [--bootstrap 1000]

On a partial row the skipped models have no label: each model's classifier learns from the questions where its
answer is known (the explored ones, and those the traversal reached it on), as `simple_routers.LogisticRouter` does
with any cache; the cost vector is each model's mean recorded cost on the rows that have it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from router_quality import _embeddings  # noqa: E402

from xrouter_lite.decision import aiq_of_envelopes, envelope  # noqa: E402
from xrouter_lite.evaluate import load_prompts, mean_cost_per_query  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.records import iter_records  # noqa: E402
from xrouter_lite.simple_routers import correctness_classifier, labelled_rows  # noqa: E402


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", type=Path)
    ap.add_argument("co_dir", type=Path)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--C", type=float, default=1.0)
    a = ap.parse_args()
    full, _ = load_prompts(a.full)
    emb = _embeddings(full, a.emb_cache)
    models = sorted(full[0].outcomes)
    rng = np.random.default_rng(0)
    diffs: dict[str, list[float]] = {}
    for seed in a.seeds:
        test = split_prompt_ids({p.prompt_id for p in full}, 0.2, seed)
        co, _ = load_prompts(a.co_dir / f"split{seed}" / "cost_ordered.jsonl")
        tq = sorted((p for p in full if p.prompt_id in test), key=lambda p: p.prompt_id)
        outs = [{m: (o.correct, o.cost) for m, o in p.outcomes.items()} for p in tq]
        Et = np.stack([emb[p.prompt_id] for p in tq])
        envs, stats = {}, {}
        explored = {r.prompt_id for _ln, r in iter_records(a.co_dir / f"split{seed}" / "cost_ordered.jsonl")
                    if r.traversal == "explore"}
        share = len([p for p in co if p.prompt_id in explored and p.prompt_id not in test]) / max(1, len([p for p in co if p.prompt_id not in test]))
        for arm, prompts in (("full", full), ("cost-ordered", co), ("cost-ordered, weighted", co), ("cost-ordered, imputed", co)):
            side = [p for p in prompts if p.prompt_id not in test]
            cpq = mean_cost_per_query(side)  # as the factory's cost vector (explored-only costs: the same AIQ +-0.001)
            top = max(cpq.values())
            cvec = {m: cpq[m] / top for m in models}
            P = {}
            known = 0
            for m in models:
                # weighted: LogisticRouter's inverse-propensity weights (an explored question where the traversal
                # would have stopped before m stands for the unexplored ones m never saw); else every row weighs 1
                idx, y, w = labelled_rows(side, m, explored if arm.endswith("weighted") else None, share)
                rows = [side[i] for i in idx]
                known += len(rows)
                X = np.stack([emb[p.prompt_id] for p in rows])
                if arm.endswith("imputed"):  # the unknown label of m where a cheaper model was right: soft, from the
                    def cheaper_right(p):  # explored questions' rate of m being right there too
                        c = p.outcomes[m].cost
                        return any(o.correct for o in p.outcomes.values() if o.cost < c)
                    ex = [p for p in side if p.prompt_id in explored and cheaper_right(p)]
                    pm = float(np.mean([p.outcomes[m].correct for p in ex])) if ex else 0.5
                    miss = [p for p in side if m not in p.outcomes]
                    if miss:
                        Xm = np.stack([emb[p.prompt_id] for p in miss])
                        X = np.vstack([X, Xm, Xm])
                        y = np.concatenate([y, np.ones(len(miss), bool), np.zeros(len(miss), bool)])
                        w = np.concatenate([w, np.full(len(miss), pm), np.full(len(miss), 1 - pm)])
                P[m] = correctness_classifier(X, y, a.C, sample_weight=w)(Et)
            envs[arm] = [envelope({m: float(P[m][i]) for m in models}, cvec) for i in range(len(tq))]
            stats[arm] = known
        def a_of(arm, cnt=None):
            return aiq_of_envelopes(envs[arm], outs, models, cnt)

        af = a_of("full")
        line = [f"split {seed}: labels known full {stats['full']} / cost-ordered {stats['cost-ordered']}; AIQ full {af:.4f}"]
        for arm in ("cost-ordered", "cost-ordered, weighted", "cost-ordered, imputed"):
            ac = a_of(arm)
            boot = []
            for _ in range(a.bootstrap):
                cnt = np.bincount(rng.integers(0, len(tq), len(tq)), minlength=len(tq))
                boot.append(a_of("full", cnt) - a_of(arm, cnt))
            boot.sort()
            lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
            diffs.setdefault(arm, []).append(af - ac)
            line.append(f"{arm} {ac:.4f}, full - it {af - ac:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        print("; ".join(line), flush=True)
    for arm, d in diffs.items():
        print(f"mean difference (full - {arm}) {np.mean(d):+.4f}")


if __name__ == "__main__":
    main()
