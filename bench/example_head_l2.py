"""The built-in example's decision head at fixed L2 penalties, per seed of the example's split (issue 13).

    python bench/example_head_l2.py RUN [RUN ...] [--out FILE]

RUN: an output folder of `xrouter-lite run --config C` where C is configs/example_routerbench.yaml with `out_dir` and
`pairs.seed` changed (it has `pairs.val_fraction`, so RUN holds val_cache.jsonl, test_cache.jsonl, router/ and
eval/decisions.jsonl). The router scores the validation questions once, offered the evaluation's four models (raw
log-probs, no head; kept in RUN/val_scores.json), then a head is fitted at each L2 of the grid (and by 5-fold CV) and
applied to the held-out decisions' raw scores: AIQ of the exact curve against the single models' hull on the same
held-out questions, and the raw rule's. Prints one line per RUN.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GRID = [None, 0.1, 1, 3, 10, 30, 100, 300, 1000, 1e4, 1e6]


def offered_of(run: Path) -> list[str]:
    for line in open(run / "eval" / "decisions.jsonl"):
        return json.loads(line)["offered"]
    raise SystemExit(f"{run}/eval/decisions.jsonl: empty")


def val_scores(run: Path, offered: list[str]) -> list[dict]:
    path = run / "val_scores.json"
    if path.exists():
        return json.loads(path.read_text())
    from xrouter_lite.decision import raw_scores
    from xrouter_lite.evaluate import load_prompts
    from xrouter_lite.pool import load_pool

    pool = load_pool(REPO / "configs" / "pool_routerbench.yaml")
    prompts, _ = load_prompts(run / "val_cache.jsonl", offered, require_complete=True)
    scores = raw_scores(str(run / "router"), prompts, pool, offered, batch_size=4)  # as the pipeline's head stage
    out = [{"prompt_id": p.prompt_id, "dataset": p.dataset, "scores": sc,
            "correct": {m: p.outcomes[m].correct for m in offered}} for p, sc in zip(prompts, scores)]
    path.write_text(json.dumps(out))
    return out


def sweep(run: Path) -> dict[str, float]:
    from xrouter_lite.decision import aiq_of_envelopes, envelope, fit_head
    from xrouter_lite.evaluate import load_prompts
    from xrouter_lite.metrics import aiq

    offered = offered_of(run)
    val = val_scores(run, offered)
    dec: dict[str, dict] = {}
    for line in open(run / "eval" / "decisions.jsonl"):
        r = json.loads(line)
        if r.get("router") == "lora":
            dec.setdefault(r["prompt_id"], r)
    test, _ = load_prompts(run / "test_cache.jsonl", offered, require_complete=True)
    test = [p for p in test if p.prompt_id in dec]
    outc = [{m: (p.outcomes[m].correct, p.outcomes[m].cost) for m in offered} for p in test]
    costs = [dec[p.prompt_id]["costs"] for p in test]
    raw = [dec[p.prompt_id].get("router_scores") or dec[p.prompt_id]["base_scores"] for p in test]  # without a head

    def curve(utils):
        return aiq_of_envelopes([envelope(u, c) for u, c in zip(utils, costs)], outc, offered)

    single = [(sum(o[m][1] for o in outc), sum(o[m][0] for o in outc) / len(outc)) for m in offered]
    res = {"hull": aiq(single, min(c for c, _ in single), max(c for c, _ in single)), "raw": curve(raw)}
    for l2 in GRID:
        h = fit_head([v["scores"] for v in val], [v["correct"] for v in val], l2=l2)
        res[f"cv({h.l2:g})" if l2 is None else f"l2={l2:g}"] = curve([h.p_correct(s) for s in raw])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the lines here")
    a = ap.parse_args()
    lines = []
    for run in a.runs:
        r = sweep(run)
        h = r.pop("hull")
        lines.append(f"{run.name} hull {h:.4f} | " + " ".join(f"{k} {v:.4f} ({v - h:+.3f})" for k, v in r.items()))
        print(lines[-1], flush=True)
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
