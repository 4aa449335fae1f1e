"""Issue 16, ninth session: a margin on the logistic-valued table's pair calls (a pair is called only if its value
beats every single call by more than d), at the table's default setting (separate, C_cond 1, min_rows 30), judged on
the validation parts of the training sides only (``val``: ``agentic_logistic.choose``) or replayed on the held-out
questions (``test``: ``evaluate_agentic``, 300 paired resamples against the one-shot logistic router).

    python bench/agentic_pair_margin.py val 0,0.005,0.01,0.02,0.04 --cache CACHE --emb-cache EMB.npz

CACHE and EMB as bench/agentic_logistic.py. The margin is not a setting of ``LogisticTable`` (it lost): the bench
subtracts it from the pair calls' root values for the duration of the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import agentic_logistic  # noqa: E402
from agentic_quality import MODELS, _embeddings  # noqa: E402

from xrouter_lite.agentic.evaluate import evaluate_agentic, logistic_table_curves  # noqa: E402
from xrouter_lite.agentic.logistic_table import LogisticTable, call_key  # noqa: E402
from xrouter_lite.agentic.state import AgenticConfig, load_questions  # noqa: E402
from xrouter_lite.pairs import split_prompt_ids  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402

DEFAULT = dict(mode="separate", C_cond=1.0, min_rows=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["val", "test"])
    ap.add_argument("margins", help="comma-separated margins d")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--emb-cache", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    a = ap.parse_args()
    pool, cfg = load_pool(REPO / "configs" / "pool_routerbench.yaml"), AgenticConfig()
    qs = load_questions(a.cache, pool, MODELS)
    emb = _embeddings(qs, a.emb_cache)
    margin = [0.0]
    root_values = LogisticTable.root_values

    def with_margin(self, p, tau):
        q = root_values(self, p, tau)
        for x, y in self.pairs:
            q[call_key([x, y])] -= margin[0]
        return q

    LogisticTable.root_values = with_margin
    agentic_logistic.GRID = [DEFAULT]
    try:
        for seed in a.seeds:
            held = split_prompt_ids([q.prompt_id for q in qs], 0.2, seed)
            train = [q for q in qs if q.prompt_id not in held]
            test = [q for q in qs if q.prompt_id in held]
            for d in (float(x) for x in a.margins.split(",")):
                margin[0] = d
                if a.mode == "val":
                    print(f"margin {d}", flush=True)
                    agentic_logistic.choose(train, emb, pool, MODELS, cfg, seed)
                    continue
                rep = evaluate_agentic(train, test, pool, MODELS, cfg, bootstrap=300, seed=seed, log=lambda m: None, emb=emb,
                                       extra_curves=logistic_table_curves(emb, pool, MODELS, cfg, **DEFAULT),
                                       main="logistic_table")
                vs = rep["aiq_vs"]["logistic_oneshot"]
                print(f"seed {seed} margin {d}: table {rep['curves']['logistic_table']['aiq']:.4f} one-shot "
                      f"{rep['curves']['logistic_oneshot']['aiq']:.4f} diff {vs['diff']:+.4f} {vs['ci95']}", flush=True)
    finally:
        LogisticTable.root_values = root_values


if __name__ == "__main__":
    main()
