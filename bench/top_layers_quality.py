"""Two routers' held-out decisions, split by split: exact-curve AIQ of each and a paired bootstrap of the difference,
for the decision head's P(correct) (``base_scores``, the serving rule when a head is fitted) and for the raw
log-probs (``router_scores``). Used for issue 13's question "does LoRA on the top layers only (``lora_top_layers``)
route as well as LoRA on every layer, at the same number of pairs?" (docs/BENCHMARKS.md).

    python bench/top_layers_quality.py --cache CACHE.jsonl \
        --a docs/results/quality/splits/decisions_s{s}_test_head.jsonl.gz \
        --b docs/results/quality/top8/decisions_s{s}_test_head.jsonl.gz --splits 0 1 2 [--bootstrap 500]

CACHE: the imported RouterBench training files (every model's correctness and cost per question). ``{s}`` in a path
is replaced by the split number. Only the tau = 0 rows of a decisions file are read (every candidate's score and
normalised cost are in each row; the exact curve over tau is recomputed from them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xrouter_lite.decision import aiq_of_envelopes, envelope  # noqa: E402
from xrouter_lite.evaluate import load_prompts  # noqa: E402


def read(path: str) -> dict[str, dict]:
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rt") as f:
        return {r["prompt_id"]: r for r in map(json.loads, f) if r.get("tau", 0) == 0.0}


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--a", required=True, help="decisions of router A (path, {s} = split)")
    ap.add_argument("--b", required=True, help="decisions of router B (path, {s} = split)")
    ap.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bootstrap", type=int, default=500)
    a = ap.parse_args()
    prompts, _ = load_prompts(a.cache)
    by_id = {p.prompt_id: p for p in prompts}
    rng = np.random.default_rng(0)
    for key in ("base_scores", "router_scores"):
        for s in a.splits:
            A, B = read(a.a.format(s=s)), read(a.b.format(s=s))
            ids = sorted(A)
            if set(ids) != set(B):
                raise SystemExit(f"split {s}: the two decisions files hold different questions")
            models = sorted(A[ids[0]]["offered"])
            outs = [{m: (by_id[i].outcomes[m].correct, by_id[i].outcomes[m].cost) for m in models} for i in ids]
            env_a = [envelope(A[i][key], A[i]["costs"]) for i in ids]
            env_b = [envelope(B[i][key], B[i]["costs"]) for i in ids]

            def aiq_of(envs, cnt=None):
                return aiq_of_envelopes(envs, outs, models, cnt)

            boot = []
            for _ in range(a.bootstrap):
                cnt = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))
                boot.append(aiq_of(env_b, cnt) - aiq_of(env_a, cnt))
            boot.sort()
            lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
            qa, qb = aiq_of(env_a), aiq_of(env_b)
            print(f"{key} split {s}: A {qa:.4f} B {qb:.4f} B - A {qb - qa:+.4f} [{lo:+.4f}, {hi:+.4f}]", flush=True)


if __name__ == "__main__":
    main()
