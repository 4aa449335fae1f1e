#!/usr/bin/env python
"""Build the offline cache: a thin shell over `xrouter-lite cache` (same options, same code).

    python scripts/generate_offline_cache.py --config configs/cache_gsm8k.yaml --dry-run
    python scripts/generate_offline_cache.py --dataset data/examples/gsm8k_sample.jsonl --out runs/cache.jsonl
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xrouter_lite.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["cache", *sys.argv[1:]], prog_name="generate_offline_cache.py")
