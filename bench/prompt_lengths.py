"""Router prompt length in tokens (p50/p95/max), as rendered by ``prompting.render_prompt``.

    python bench/prompt_lengths.py            # all GSM8K test questions and all RouterBench prompts
    python bench/prompt_lengths.py --limit 200

Measured for: the full 18-model pool (configs/pool.yaml) on GSM8K test questions and on RouterBench prompts, and
the 11-model RouterBench pool (configs/pool_routerbench.yaml) on RouterBench prompts; each in Qwen2.5 tokens
(the exact offline tokenizer of xrouter_lite.qwen, native tools path of its chat template) and SmolLM2 tokens
(its template has no tools support, so the same tool block is injected into the system message). Also the fixed
part: the prompt with an empty query.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from xrouter_lite.pairs import length_stats  # noqa: E402
from xrouter_lite.pool import load_pool  # noqa: E402
from xrouter_lite.prompting import build_router_prompt, encode_prompt  # noqa: E402


def gsm8k_questions(limit: int | None) -> list[str]:
    path = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["question"])
            if limit and len(out) >= limit:
                break
    return out


def routerbench_prompts(limit: int | None) -> list[str]:
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.records import iter_records

    csvs = sorted(glob.glob(str(REPO.parent / "shared" / "data" / "routerbench" / "*.csv")))
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "rb.jsonl"
        import_routerbench(csvs, cache)
        seen: dict[str, str] = {}
        for _, rec in iter_records(cache):
            seen.setdefault(rec.prompt_id, rec.prompt)
    texts = list(seen.values())
    return texts[:limit] if limit else texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=0, help="at most this many questions per dataset (0: all)")
    args = ap.parse_args()
    limit = args.limit or None

    from transformers import AutoTokenizer

    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.qwen import qwen_tokenizer

    toks = {"Qwen2.5": qwen_tokenizer(), "SmolLM2": AutoTokenizer.from_pretrained(str(smollm2_path()))}
    pool18 = list(load_pool(REPO / "configs" / "pool.yaml"))
    pool11 = list(load_pool(REPO / "configs" / "pool_routerbench.yaml"))
    data = {"GSM8K test": gsm8k_questions(limit), "RouterBench": routerbench_prompts(limit)}
    cases = [("18-model pool", pool18, "GSM8K test"), ("18-model pool", pool18, "RouterBench"),
             ("11-model RouterBench pool", pool11, "RouterBench")]

    print(f"{'pool':<26} {'queries':<12} {'n':>5} {'tokenizer':<8} {'empty query':>11} {'p50':>6} {'p95':>6} {'max':>6}")
    t0 = time.perf_counter()
    for pool_name, pool, dname in cases:
        for tname, tok in toks.items():
            base = len(encode_prompt(tok, build_router_prompt("", pool), None))
            lens = [len(encode_prompt(tok, build_router_prompt(q, pool), None)) for q in data[dname]]
            s = length_stats(lens)
            print(f"{pool_name:<26} {dname:<12} {s['n']:>5} {tname:<8} {base:>11} {s['p50']:>6} {s['p95']:>6} {s['max']:>6}")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
