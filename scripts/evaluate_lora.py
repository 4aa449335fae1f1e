#!/usr/bin/env python
"""Evaluate a trained LoRA router against the baselines (same options as ``xrouter-lite eval``).

    python scripts/evaluate_lora.py --adapter runs/lora --test-cache runs/pairs/test_cache.jsonl \
        --train-cache runs/cache/offline_cache.jsonl --pool configs/pool_routerbench.yaml --out runs/eval

Writes report.json, report.md, curve.png and decisions.jsonl to --out (see xrouter_lite/evaluate.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xrouter_lite.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["eval", *sys.argv[1:]])
