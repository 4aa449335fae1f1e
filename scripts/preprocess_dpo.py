#!/usr/bin/env python
"""Make the DPO preference pairs from an offline cache: the same as `xrouter-lite pairs`.

    python scripts/preprocess_dpo.py outputs/offline_cache.jsonl --pool configs/pool.yaml --eval-fraction 0.2
    python scripts/preprocess_dpo.py --help

Writes dpo_train_data.json (TRL conversational preference format, JSON Lines), dpo_eval_data.json and
test_cache.jsonl (with --eval-fraction) and pairs_report.json; see xrouter_lite/pairs.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xrouter_lite.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["pairs", *sys.argv[1:]], prog_name="preprocess_dpo.py")
