"""Agentic mode on RouterBench (issue 16): curves and AIQ (paired bootstrap) on seeded splits.

    python bench/agentic_quality.py --cache CACHE [--scores-dir DIR] [--seeds 0 1 2] [--bootstrap 1000]
                                    [--cluster-table --emb-cache EMB.npz]

CACHE: the offline cache of RouterBench's three training files (`xrouter-lite import routerbench
../shared/data/routerbench/*.csv --out CACHE --pool configs/pool_routerbench.yaml`). Each seed splits the questions
80/20 exactly as `pairs --eval-fraction 0.2 --seed S` does; a validation part (20%) of the training side picks the
operating points. Without --scores-dir: the exact-value table (teacher) against the baselines, CPU only. With
--scores-dir DIR (DIR/sS/eval/agentic_scores.jsonl from bench/agentic_gpu.sh): the trained router's agentic and
one-shot curves too. Prints each split's report and a summary over splits; writes agentic_quality.json to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.agentic.evaluate import evaluate_agentic, format_report, split_validation  # noqa: E402
from xrouter_lite.agentic.policy import load_scores  # noqa: E402
from xrouter_lite.agentic.state import AgenticConfig, load_questions  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402

MODELS = ["mistralai/mistral-7b-chat", "mistralai/mixtral-8x7b-chat", "zero-one-ai/Yi-34B-Chat", "gpt-3.5-turbo-1106",
          "claude-instant-v1", "gpt-4-1106-preview"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--scores-dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--taus", default="0,1,2,3,5,7,10,20,50,100",
                    help="the trained router's taus: those bench/agentic_gpu.sh scored (TAUS there)")
    ap.add_argument("--cluster-table", action="store_true", help="also the cluster table (MiniLM k-means; the main curve)")
    ap.add_argument("--emb-cache", type=Path, help="all-MiniLM-L6-v2 embeddings of the cache's questions (.npz; made if missing)")
    ap.add_argument("--n-clusters", type=int, default=None, help="cluster table: k (default round(sqrt(N / 8)))")
    a = ap.parse_args()
    pool = load_pool(REPO / "configs" / "pool_routerbench.yaml")
    qs = load_questions(a.cache, pool, MODELS)
    cfg = AgenticConfig()
    emb = _embeddings(qs, a.emb_cache) if a.cluster_table else None
    res = {}
    for seed in a.seeds:
        ev = split_prompt_ids([q.prompt_id for q in qs], 0.2, seed)
        train = [q for q in qs if q.prompt_id not in ev]
        test = [q for q in qs if q.prompt_id in ev]
        scores = val = None
        if a.scores_dir:
            scores = load_scores(a.scores_dir / f"s{seed}" / "eval" / "agentic_scores.jsonl")
            _fit, val = split_validation(train, 0.2, seed)
        rep = evaluate_agentic(train, test, pool, MODELS, cfg, scores=scores, val_scores_split=val,
                               taus=[float(x) for x in a.taus.split(",")],
                               bootstrap=a.bootstrap, seed=seed, log=lambda m: None, emb=emb, n_clusters=a.n_clusters)
        print(f"=== split seed {seed}")
        print(format_report(rep))
        res[seed] = rep
    main_c = res[a.seeds[0]]["main"]
    print("=== summary over splits (mean, min..max)")
    for k in res[a.seeds[0]]["curves"]:
        v = [res[s]["curves"][k]["aiq"] for s in a.seeds]
        print(f"  AIQ {k:16s} mean {statistics.mean(v):.4f} ({min(v):.4f}..{max(v):.4f}) per split {', '.join(f'{x:.4f}' for x in v)}")
    for k in res[a.seeds[0]]["aiq_vs"]:
        d = [res[s]["aiq_vs"][k]["diff"] for s in a.seeds]
        lo = [res[s]["aiq_vs"][k]["ci95"][0] for s in a.seeds]
        print(f"  AIQ {main_c} - {k}: mean {statistics.mean(d):+.4f} ({min(d):+.4f}..{max(d):+.4f}); CI lower ends {', '.join(f'{x:+.4f}' for x in lo)}")
    for key in ("table_operating_point", "cluster_table_operating_point", "agentic_operating_point"):
        pts = [res[s].get(key) for s in a.seeds]
        if all(pts):
            acc = [p["test"]["accuracy"] for p in pts]
            share = [p["test"]["total_cost"] / res[s]["dearest_cost"] for p, s in zip(pts, a.seeds)]
            print(f"  {key}: test accuracy {', '.join(f'{x:.1%}' for x in acc)} at {', '.join(f'{x:.0%}' for x in share)} of GPT-4's cost")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "agentic_quality.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


def _embeddings(qs, path):
    """prompt_id -> all-MiniLM-L6-v2 embedding (normalised; the cluster router's encoder), cached in ``path``."""
    import numpy as np

    if path is not None and path.exists():
        z = np.load(path, allow_pickle=False)
        have = dict(zip(z["ids"], z["emb"]))
        if all(q.prompt_id in have for q in qs):
            return have
    from xrouter_lite.simple_routers import embed_texts, load_encoder

    e = embed_texts(load_encoder("cpu"), [q.prompt for q in qs])
    if path is not None:
        np.savez(path, ids=np.array([q.prompt_id for q in qs]), emb=e)
    return {q.prompt_id: v for q, v in zip(qs, e)}


if __name__ == "__main__":
    main()
