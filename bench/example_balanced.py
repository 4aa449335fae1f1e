"""Issue 13, the built-in example below the hull on pairs.seed 1: would a training slice balanced across the three
datasets help? The example trains on ~25 of its 240 training questions (12 steps of 8 pairs), drawn at random; this
runs the whole example (`xrouter_lite.pipeline.run_pipeline`, the README's first command) with one change: after the
pairs stage, the training file keeps 96 pairs of whole questions taken round-robin across the datasets (seeded), so
all 96 are trained on. Prints the pipeline's own output; the report is in OUT/eval/report.md.

    python bench/example_balanced.py SEED OUT_DIR        # e.g. 1 /tmp/bal/balanced1 (~5 min on 2 cores)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def balanced(rows: list[dict], seed: int, n_pairs: int = 96) -> list[dict]:
    by: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        by.setdefault(r["dataset"], {}).setdefault(r["prompt_id"], []).append(r)
    rng = random.Random(seed)
    order = {d: rng.sample(sorted(g), len(g)) for d, g in sorted(by.items())}
    out: list[dict] = []
    i = 0
    while len(out) < n_pairs and any(i < len(v) for v in order.values()):
        for d in sorted(order):
            if i < len(order[d]) and len(out) < n_pairs:
                out += by[d][order[d][i]]
        i += 1
    return out


def main() -> None:
    import yaml

    import xrouter_lite.pairs as P
    from xrouter_lite.pipeline import run_pipeline

    seed, out_dir = int(sys.argv[1]), Path(sys.argv[2])
    run_pairs = P.run_pairs

    def patched(cache_path, pool, cfg, out_dir=None, **kw):
        rep = run_pairs(cache_path, pool, cfg, out_dir=out_dir, **kw)
        f = Path(out_dir) / "dpo_train_data.json"
        rows = balanced([json.loads(x) for x in f.open()], seed)
        print("balanced slice:", len(rows), "pairs", {d: sum(r["dataset"] == d for r in rows)
                                                    for d in sorted({r["dataset"] for r in rows})}, flush=True)
        with f.open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        return rep

    P.run_pairs = patched
    cfg = yaml.safe_load((REPO / "configs/example_routerbench.yaml").read_text())
    cfg.update(out_dir=str(out_dir), pool=str(REPO / cfg["pool"]))
    cfg["pairs"]["seed"] = seed
    cfg["cache"]["import_routerbench"] = [str(REPO / p) for p in cfg["cache"]["import_routerbench"]]
    cfg["train"]["model_name_or_path"] = str(REPO / cfg["train"]["model_name_or_path"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_pipeline(path, force=True)


if __name__ == "__main__":
    main()
