"""Stage 1: the offline cache. Every question x every pool model, called once, graded, one line per pair.

    xrouter-lite cache --dataset data/examples/gsm8k_sample.jsonl --pool configs/pool.yaml \\
        --out runs/gsm8k/offline_cache.jsonl --concurrency 32 --budget-usd 5
    xrouter-lite cache --config configs/cache_gsm8k.yaml --limit 20 --dry-run     # cost estimate, calls nothing

In code: ``run_cache(CacheConfig(...))`` (blocking, Ctrl-C safe) or ``await arun_cache(cfg)``;
``estimate_cache_cost(cfg)`` for the dry run; ``latest_records(path)`` to read a cache with one record per pair.

The file (``records.CacheRecord`` lines, appended with ``records.RecordWriter``) and its invariants:

- A pair (prompt_id, model_name) is written once per run: its answer, or its error after the retries it deserved.
- **At most one successful record per pair, ever.** A run schedules only pairs that have no successful record
  yet, so a resumed run never repeats a paid call. Errored pairs are retried by the next run; the error line stays
  in the file (append-only: nothing written is ever rewritten) and the retry's answer comes after it.
- Readers take, per pair, the successful record if there is one, else the newest error: ``latest_records(path)``
  does this in two streaming passes, holding only a ``key -> line`` index in memory. A reader that simply keeps the
  records with ``error is None`` gets exactly one record per answered pair, too. ``compact_cache(path)`` rewrites
  the file to one line per pair (atomically) for those who want a clean file.
- A kill -9 can tear the last line; it is dropped and reported (``records``), and that pair is redone.
- Lines are flushed one by one (a killed process loses nothing it wrote) and fsync'ed every ``FSYNC_INTERVAL_S``
  seconds (in a thread, so the event loop never stalls) and on exit; what a power cut may lose is redone by the
  next run.

Money: ``budget_usd`` is a hard cap. Before a call is scheduled, its worst-case cost is reserved: an upper bound of
its prompt tokens (UTF-8 bytes + template overhead; a byte-level BPE token is at least one byte) plus its full
output budget (``max_tokens``, or a reasoning model's larger budget) at the pool's prices. When
spent + reserved + the next reservation would cross the budget, scheduling waits for in-flight calls to settle
(their actual cost replaces their reservation) and stops for good when even an idle pipeline cannot fit the next
call. So the money spent never passes the budget, provided providers honour ``max_tokens`` (the summary reports
any call whose actual cost exceeded its reservation). The cap is on the cache file, not on one run: the cost
already recorded in the file is counted as spent when a run starts, so re-running the same command (the way to
resume, also after a kill -9) never records more than the cap; raising the cap is the way to spend more. (A call
cut by a kill -9 while in flight may still be billed by its provider without a record; it is redone.)

Which pairs and how: this module runs the full traversal; ``traversal: cost-ordered`` (cheapest first, stop at the
first correct answer, ``explore``) is run by ``xrouter_lite.traversal`` and ``batch: true`` (provider batch jobs) by
``xrouter_lite.batch``, on the same file with the same invariants.

Concurrency: ``concurrency`` workers take (question, model) items from a bounded queue fed by a producer that
streams the question file, so memory stays flat for any number of pairs. ``rate_limit_rpm`` spaces the requests
(retries included) to each model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, load_config
from .pool import ModelSpec, Pool, load_pool
from .records import CacheFormatError, CacheRecord, ReadReport, RecordWriter, TokenUsage, iter_records, repair_torn_tail

__all__ = [
    "CacheConfig",
    "CacheConfigError",
    "CacheIndex",
    "CacheSummary",
    "ModelEstimate",
    "load_cache_config",
    "scan_cache",
    "latest_records",
    "compact_cache",
    "estimate_cache_cost",
    "arun_cache",
    "run_cache",
    "print_estimate",
    "print_summary",
    "RateLimiter",
    "BudgetGuard",
    "FSYNC_INTERVAL_S",
]

FSYNC_INTERVAL_S = 2.0


# ---- configuration -----------------------------------------------------------------------------------------------


class CacheConfigError(ConfigError):
    """A cache config is invalid; the message names the file and the field (``config.ConfigError``'s format)."""


class CacheConfig(BaseModel):
    """Everything the cache stage needs. YAML keys are these field names; CLI flags override them."""

    model_config = ConfigDict(extra="forbid")

    dataset: Path | None = Field(None, description="question file (JSONL: GSM8K or generic)")
    format: Literal["auto", "gsm8k", "generic"] = "auto"
    dataset_name: str | None = Field(None, description="overrides the dataset name of every question")
    pool: Path = Path("configs/pool.yaml")
    out: Path = Path("runs/offline_cache.jsonl")
    models: list[str] | None = Field(None, description="model ids to call (default: the whole pool)")
    limit: int | None = Field(None, ge=0, description="first N questions of the file")
    concurrency: int = Field(16, ge=1, le=4096)
    rate_limit_rpm: float | None = Field(None, gt=0, description="requests per minute, per model")
    budget_usd: float | None = Field(None, ge=0)
    max_tokens: int = Field(1024, ge=1)
    reasoning_max_tokens: int = Field(16384, ge=1, description="output budget of reasoning models")
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    transport: Literal["auto", "litellm", "direct"] = Field(
        "auto", description="auto: a direct HTTP POST for openai/<name> models with an api_base, litellm otherwise")
    retry_base_delay_s: float = Field(0.5, ge=0, description="first back-off; doubles per retry (with jitter)")
    retry_after_cap_s: float = Field(60.0, ge=0, description="longest Retry-After honoured")
    system_prompt: str | None = None
    dry_run: bool = False
    est_output_tokens: int = Field(300, ge=0, description="dry run: expected answer length")
    est_reasoning_output_tokens: int = Field(2000, ge=0, description="dry run: expected length, reasoning models")
    # which pairs are called (xrouter_lite.traversal) and how (xrouter_lite.batch)
    traversal: Literal["full", "cost-ordered"] = Field(
        "full", description="full: every model answers every question; cost-ordered: cheapest first, stop when right")
    explore: float = Field(0.0, ge=0, le=1, description="cost-ordered: fraction of questions still fully traversed")
    explore_seed: int = Field(0, description="seed of the exploration sample (drawn per question id)")
    batch: bool = Field(False, description="submit the calls as provider batch jobs (OpenAI-compatible /v1/batches)")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between polls of a batch job")
    batch_completion_window: str = Field("24h", description="the batch jobs' completion window")

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


def load_cache_config(path: str | Path | None = None, **overrides: Any) -> CacheConfig:
    """Read a YAML config (if given) and apply ``overrides`` whose value is not None (``config.load_config``)."""
    return load_config(CacheConfig, path, overrides, what="cache config", error=CacheConfigError)


# ---- reading a cache -----------------------------------------------------------------------------------------------


@dataclass
class CacheIndex:
    """What a cache file holds, per pair: answered (``ok``) or only errored so far (``errored``)."""

    ok: set[tuple[str, str]] = field(default_factory=set)
    errored: set[tuple[str, str]] = field(default_factory=set)
    lines: int = 0
    duplicate_ok: int = 0
    torn_last_line: bool = False
    bad_lines: list[str] = field(default_factory=list)


def scan_cache(path: str | Path, *, strict: bool = True) -> CacheIndex:
    """Stream a cache file into a key index (no answers kept in memory). A missing file is an empty cache."""
    idx = CacheIndex()
    path = Path(path)
    if not path.exists():
        return idx
    rep = ReadReport()
    for _, rec in iter_records(path, strict=strict, report=rep):
        idx.lines += 1
        k = rec.key
        if rec.ok:
            if k in idx.ok:
                idx.duplicate_ok += 1
            idx.ok.add(k)
            idx.errored.discard(k)
        elif k not in idx.ok:
            idx.errored.add(k)
    idx.torn_last_line = rep.torn_last_line
    idx.bad_lines = rep.bad_lines
    return idx


def latest_records(
    path: str | Path, *, include_errors: bool = True, strict: bool = True, report: ReadReport | None = None
) -> Iterator[CacheRecord]:
    """Yield exactly one record per (prompt_id, model_name): its successful record (the last one, should a file
    hold several), else its newest error (skipped when ``include_errors`` is False). Records come in file order.

    Two streaming passes; memory holds only ``key -> (line, ok)``.
    """
    path = Path(path)
    chosen: dict[tuple[str, str], tuple[int, bool]] = {}
    rep = report if report is not None else ReadReport()
    for lineno, rec in iter_records(path, strict=strict, report=rep):
        prev = chosen.get(rec.key)
        if rec.ok or prev is None or not prev[1]:
            chosen[rec.key] = (lineno, rec.ok)
    for lineno, rec in iter_records(path, strict=strict, report=ReadReport()):
        line, ok = chosen.get(rec.key, (-1, False))
        if line == lineno and (ok or include_errors):
            yield rec


@dataclass
class CompactStats:
    kept: int
    dropped: int
    errors_kept: int


def compact_cache(path: str | Path, out: str | Path | None = None, *, drop_errors: bool = False) -> CompactStats:
    """Rewrite a cache with one line per pair (``latest_records``), atomically (temp file + rename).

    ``out`` defaults to ``path`` itself. With ``drop_errors``, pairs that only ever errored are left out.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cache file not found: {path}")
    target = Path(out) if out is not None else path
    tmp = target.with_name(target.name + ".compact.tmp")
    kept = errors = total = 0
    for _ in iter_records(path):
        total += 1
    with tmp.open("w", encoding="utf-8") as f:
        for rec in latest_records(path, include_errors=not drop_errors):
            f.write(rec.to_json() + "\n")
            kept += 1
            errors += 0 if rec.ok else 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return CompactStats(kept=kept, dropped=total - kept, errors_kept=errors)


# ---- planning and estimating -----------------------------------------------------------------------------------


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    msgs.append({"role": "user", "content": prompt})
    return msgs


def _select_models(cfg: CacheConfig, pool: Pool) -> list[ModelSpec]:
    if not cfg.models:
        return list(pool)
    seen: set[str] = set()
    out = []
    for m in cfg.models:
        if m in seen:
            continue
        seen.add(m)
        try:
            out.append(pool.get(m))
        except KeyError as e:
            raise CacheConfigError(f"--models: {e.args[0]}") from None
    return out


def _questions(cfg: CacheConfig):
    from .data import load_questions

    if cfg.dataset is None:
        raise CacheConfigError("no dataset given: pass --dataset PATH (or set `dataset:` in the config)")
    kw: dict[str, Any] = {"fmt": cfg.format, "limit": cfg.limit}
    if cfg.dataset_name:
        kw["dataset_name"] = cfg.dataset_name
    return load_questions(cfg.dataset, **kw)


def _worst_case_cost(spec: ModelSpec, prompt_upper: int, cfg: CacheConfig) -> float:
    from .llm import max_output_budget

    return spec.cost(prompt_upper, max_output_budget(spec, cfg.sampling(), cfg.reasoning_max_tokens))


@dataclass
class ModelEstimate:
    """The dry run's figures for one model (pairs still to call)."""

    model_id: str
    pairs: int = 0
    input_tokens: int = 0
    expected_output_tokens: int = 0
    expected_cost_usd: float = 0.0
    worst_case_cost_usd: float = 0.0
    already_done: int = 0


_encoder = None


def _count_tokens(text: str) -> int:
    """Approximate prompt tokens with OpenAI's o200k encoding (litellm ships it offline); bytes/4 if unavailable."""
    global _encoder
    if _encoder is None:
        try:
            from .llm import configure_litellm

            configure_litellm()
            import litellm.litellm_core_utils.default_encoding  # noqa: F401  (points tiktoken at litellm's files)
            import tiktoken

            _encoder = tiktoken.get_encoding("o200k_base")
        except Exception:
            _encoder = False
    if _encoder is False:
        return max(1, len(text.encode("utf-8")) // 4)
    return len(_encoder.encode(text, disallowed_special=()))


def estimate_cache_cost(cfg: CacheConfig, pool: Pool | None = None) -> list[ModelEstimate]:
    """Dry run: per model, the pairs still to call and their expected / worst-case cost. Calls nothing."""
    from .llm import max_output_budget

    pool = pool or load_pool(cfg.pool)
    specs = _select_models(cfg, pool)
    index = scan_cache(cfg.out) if Path(cfg.out).exists() else CacheIndex()
    rows = {s.id: ModelEstimate(s.id) for s in specs}
    _check_tasks_ok = _task_checker()
    for q in _questions(cfg):
        _check_tasks_ok(q)
        msgs = _messages(q.prompt, cfg.system_prompt)
        n_in = sum(_count_tokens(m["content"]) + 4 for m in msgs) + 3
        upper = None
        for s in specs:
            r = rows[s.id]
            if (q.id, s.id) in index.ok:
                r.already_done += 1
                continue
            if upper is None:
                from .llm import estimate_prompt_tokens_upper

                upper = estimate_prompt_tokens_upper(msgs)
            budget = max_output_budget(s, cfg.sampling(), cfg.reasoning_max_tokens)
            n_out = min(budget, cfg.est_reasoning_output_tokens if s.reasoning else cfg.est_output_tokens)
            r.pairs += 1
            r.input_tokens += n_in
            r.expected_output_tokens += n_out
            r.expected_cost_usd += s.cost(n_in, n_out)
            r.worst_case_cost_usd += s.cost(upper, budget)
    return list(rows.values())


def _task_checker():
    from .grading import TASKS, can_grade

    def check(q) -> None:
        if not can_grade(q.task):
            why = "cannot be graded here" if q.task in TASKS else "is unknown"
            raise CacheConfigError(
                f"question {q.id!r}: task {q.task!r} {why}; the cache stage grades every answer "
                f"(gradable tasks: gsm8k, math, mc, exact)"
            )

    return check


# ---- running -------------------------------------------------------------------------------------------------------


def _lock_cache_file(out: Path) -> int:
    """Open (creating) the cache file and take an exclusive advisory lock on it; returns the descriptor, whose
    closing releases the lock. Where ``fcntl`` is missing (Windows) no lock is taken."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CacheConfigError(f"{out}: another cache run is writing to this file; wait for it or use another --out") from None
    return fd


class RateLimiter:
    """Spaces requests evenly: at most ``rpm`` per minute, no bursts."""

    def __init__(self, rpm: float):
        self.interval = 60.0 / rpm
        self._next = 0.0

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        t = max(now, self._next)
        self._next = t + self.interval
        if t > now:
            await asyncio.sleep(t - now)


def recorded_spend(path: str | Path) -> float:
    """USD recorded in a cache file: the sum of every line's ``cost`` (answers and errors alike, superseded lines
    too: money spent stays spent). A missing file has spent nothing."""
    path = Path(path)
    if not path.exists():
        return 0.0
    total = 0.0
    for _, rec in iter_records(path, strict=False, report=ReadReport()):
        total += float(rec.cost or 0.0)
    return total


class BudgetGuard:
    """Reserve-then-settle accounting that never lets already spent + spent + reserved pass the limit.

    ``already_spent`` is the money recorded in the cache file before this run (``recorded_spend``): the budget
    is a cap on the whole file, not per run, so no sequence of runs, kills and resumes records more than it."""

    def __init__(self, limit_usd: float | None, already_spent: float = 0.0):
        self.limit = limit_usd
        self.already_spent = already_spent
        self.spent = 0.0  # this run
        self.reserved = 0.0
        self.overruns = 0  # calls whose actual cost exceeded their reservation
        self._cond = asyncio.Condition()

    async def reserve(self, amount: float) -> bool:
        """Wait until ``amount`` fits; False when it cannot fit even with nothing in flight."""
        async with self._cond:
            while True:
                if self.limit is None or self.already_spent + self.spent + self.reserved + amount <= self.limit + 1e-12:
                    self.reserved += amount
                    return True
                if self.reserved <= 1e-15:
                    return False
                await self._cond.wait()

    async def settle(self, reserved: float, actual: float) -> None:
        async with self._cond:
            self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual
            if actual > reserved + 1e-12:
                self.overruns += 1
            self._cond.notify_all()


@dataclass
class ModelTally:
    ok: int = 0
    errors: int = 0
    correct: int = 0
    cost_usd: float = 0.0


@dataclass
class CacheSummary:
    out: str
    pairs_total: int = 0
    already_done: int = 0
    errored_before: int = 0
    planned: int = 0
    ok: int = 0
    errors: int = 0
    not_scheduled: int = 0
    spent_usd: float = 0.0
    budget_usd: float | None = None
    spent_before_usd: float = 0.0  # recorded in the file before this run (counted against budget_usd)
    budget_overruns: int = 0
    stopped: str = "complete"  # complete | budget | interrupted
    torn_tail_dropped: bool = False
    elapsed_s: float = 0.0
    per_model: dict[str, ModelTally] = field(default_factory=dict)
    traversal: dict[str, Any] | None = None  # cost-ordered / batch figures (xrouter_lite.traversal, .batch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(q, spec: ModelSpec, *, response=None, is_correct=None, in_tok=0, out_tok=0, cost=0.0, latency=0.0,
            error=None) -> CacheRecord:
    return CacheRecord(
        prompt_id=q.id, dataset=q.dataset, prompt=q.prompt, reference=q.reference, model_name=spec.id,
        response=response, is_correct=is_correct, token_usage=TokenUsage(in_tok, out_tok), cost=cost,
        latency_s=round(latency, 4), error=error, task=q.task,
    )


def _graded_record(q, spec: ModelSpec, text: str, *, in_tok: int, out_tok: int, cost: float,
                   latency: float = 0.0) -> CacheRecord:
    """The record of a paid answer, graded; a grader failure keeps the answer, with the failure as its error (the
    cache, the cost-ordered traversal and the batch collector write answers through this one function)."""
    from .grading import is_correct

    kw = dict(response=text, in_tok=in_tok, out_tok=out_tok, cost=cost, latency=latency)
    try:
        ok = is_correct(q.task, text, q.reference)
    except Exception as e:  # a grader failure must not lose the paid answer silently
        return _record(q, spec, error=f"grading failed: {type(e).__name__}: {e}", **kw)
    return _record(q, spec, is_correct=ok, **kw)


def _tally(summary, rec: CacheRecord, cost: float) -> None:
    """Count a written record into the run's summary (totals and its model's line)."""
    t = summary.per_model[rec.model_name]
    if rec.ok:
        summary.ok += 1
        t.ok += 1
        t.correct += bool(rec.is_correct)
    else:
        summary.errors += 1
        t.errors += 1
    t.cost_usd += cost


class _Progress:
    """A rich progress bar on a terminal; a plain line every 10 s otherwise; nothing when disabled."""

    def __init__(self, console, total: int, enabled: bool | None):
        self.console = console
        self.enabled = console.is_terminal if enabled is None else enabled
        self.live = self.enabled and console.is_terminal
        self.total = total
        self._last = time.monotonic()
        self._p = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(
                TextColumn("[bold]cache"), BarColumn(), MofNCompleteColumn(),
                TextColumn("[red]{task.fields[errors]} errors"), TextColumn("[green]${task.fields[spent]:.4f}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            )
            self._task = self._p.add_task("cache", total=total, errors=0, spent=0.0)

    def __enter__(self):
        if self._p is not None:
            self._p.start()
        return self

    def update(self, done: int, errors: int, spent: float) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done, errors=errors, spent=spent)
        elif self.enabled and time.monotonic() - self._last >= 10:
            self._last = time.monotonic()
            self.console.print(f"cache: {done}/{self.total} calls, {errors} errors, ${spent:.4f} spent")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()


async def arun_cache(
    cfg: CacheConfig,
    *,
    pool: Pool | None = None,
    console=None,
    progress: bool | None = None,
    stop_event: asyncio.Event | None = None,
) -> CacheSummary:
    """Run the cache stage (see the module docstring). Returns the summary; the file holds every record made.

    ``stop_event`` (e.g. set by a SIGINT handler) stops it cleanly: nothing more is scheduled, in-flight calls are
    cancelled (no record: the next run redoes them), the file is closed intact.
    """
    from rich.console import Console

    from .llm import LLMCallError, RetryPolicy, acall_model, estimate_prompt_tokens_upper, uses_direct_transport

    if cfg.batch:  # traversal hook: provider batch APIs (xrouter_lite.batch)
        from .batch import arun_batch

        return await arun_batch(cfg, pool=pool, console=console, progress=progress, stop_event=stop_event)
    if cfg.traversal == "cost-ordered":  # traversal hook (xrouter_lite.traversal)
        from .traversal import arun_cost_ordered

        return await arun_cost_ordered(cfg, pool=pool, console=console, progress=progress, stop_event=stop_event)
    console = console or Console(stderr=True)
    pool = pool or load_pool(cfg.pool)
    specs = _select_models(cfg, pool)
    for s in specs:
        try:
            uses_direct_transport(s, cfg.transport)
        except ValueError as e:
            raise CacheConfigError(f"transport: {e}") from None
    out = Path(cfg.out)
    t_start = time.perf_counter()
    summary = CacheSummary(out=str(out), budget_usd=cfg.budget_usd)
    summary.per_model = {s.id: ModelTally() for s in specs}

    sync_fd = _lock_cache_file(out)  # one writer per file: two runs at once could both call a pair
    try:
        summary.torn_tail_dropped = repair_torn_tail(out)
        if summary.torn_tail_dropped:
            console.print(f"[yellow]{out}: dropped a torn last line (a write cut by a crash); that pair is redone")
        index = scan_cache(out)
        if index.duplicate_ok:
            console.print(f"[yellow]{out}: {index.duplicate_ok} pair(s) have more than one successful record; "
                          "readers keep the last (see latest_records)")

        # planning pass: validate tasks, count what is left (streams the file; keeps nothing)
        check = _task_checker()
        for q in _questions(cfg):
            check(q)
            for s in specs:
                summary.pairs_total += 1
                k = (q.id, s.id)
                if k in index.ok:
                    summary.already_done += 1
                else:
                    summary.planned += 1
                    summary.errored_before += k in index.errored
        writer = RecordWriter(out, fsync_every=1 << 60)  # flushed per line; fsync'ed below, off the event loop
    except BaseException:
        os.close(sync_fd)
        raise

    sampling = cfg.sampling()
    policy = RetryPolicy(max_retries=cfg.max_retries, base_delay_s=cfg.retry_base_delay_s,
                         retry_after_cap_s=cfg.retry_after_cap_s)
    budget = BudgetGuard(cfg.budget_usd, recorded_spend(out) if cfg.budget_usd is not None else 0.0)
    summary.spent_before_usd = budget.already_spent
    limiters = {s.id: RateLimiter(cfg.rate_limit_rpm) for s in specs} if cfg.rate_limit_rpm else {}
    queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.concurrency)
    stop_event = stop_event or asyncio.Event()
    scheduled = 0
    done = 0

    prog = _Progress(console, summary.planned, progress)

    async def produce() -> None:
        nonlocal scheduled
        for q in _questions(cfg):
            msgs = None
            upper = 0
            for s in specs:
                if (q.id, s.id) in index.ok:
                    continue
                if msgs is None:
                    msgs = _messages(q.prompt, cfg.system_prompt)
                    upper = estimate_prompt_tokens_upper(msgs)
                reserve = _worst_case_cost(s, upper, cfg) if cfg.budget_usd is not None else 0.0
                if not await budget.reserve(reserve):
                    summary.stopped = "budget"
                    break
                await queue.put((q, s, msgs, reserve))
                scheduled += 1
            if summary.stopped == "budget":
                break
        for _ in range(cfg.concurrency):  # one end-of-work marker per worker
            await queue.put(None)

    async def work() -> None:
        nonlocal done
        while True:
            item = await queue.get()
            if item is None:
                return
            q, s, msgs, reserve = item
            actual = 0.0
            try:
                lim = limiters.get(s.id)
                try:
                    text, meta = await acall_model(
                        s, msgs, sampling, timeout_s=cfg.timeout_s, retry_policy=policy,
                        before_attempt=lim.acquire if lim else None, reasoning_min_tokens=cfg.reasoning_max_tokens,
                        transport=cfg.transport,
                    )
                except LLMCallError as e:
                    rec = _record(q, s, error=str(e))
                else:
                    actual = meta.cost
                    rec = _graded_record(q, s, text, in_tok=meta.input_tokens, out_tok=meta.output_tokens,
                                         cost=meta.cost, latency=meta.latency_s)
                writer.write(rec)  # synchronous: a cancellation can never tear a line
                _tally(summary, rec, actual)
                done += 1
            finally:
                await budget.settle(reserve, actual)
            prog.update(done, summary.errors, budget.spent)

    failure, cancelled = await run_workers(produce, work, cfg.concurrency, stop_event, sync_fd, prog, writer)
    if stop_event.is_set():
        summary.stopped = "interrupted"
    summary.spent_usd = budget.spent
    summary.budget_overruns = budget.overruns
    summary.not_scheduled = summary.planned - scheduled
    summary.elapsed_s = time.perf_counter() - t_start
    if failure is not None:
        raise failure
    if cancelled:
        raise asyncio.CancelledError
    return summary


async def run_workers(produce, work, concurrency: int, stop_event: asyncio.Event, sync_fd: int, prog, writer
                      ) -> tuple[BaseException | None, bool]:
    """The cache runners' shared supervision (``arun_cache`` and ``traversal.arun_cost_ordered``): one producer,
    ``concurrency`` workers, a periodic fsync of ``sync_fd`` off the event loop; stops at the first failure, at
    ``stop_event`` or when the workers are done; then cancels what runs (on a stop or a failure), closes the writer
    (flush + fsync), the lock's descriptor and the HTTP sessions. Returns (the first failure, whether this was
    cancelled from outside); the caller fills its summary, then raises the failure or ``CancelledError``."""
    from .llm import aclose as aclose_http

    async def fsync_periodically() -> None:
        # an fsync takes milliseconds and would stall every in-flight call if done on the event loop
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FSYNC_INTERVAL_S)
            await loop.run_in_executor(None, os.fsync, sync_fd)

    producer = asyncio.ensure_future(produce())
    workers = [asyncio.ensure_future(work()) for _ in range(concurrency)]
    stopper = asyncio.ensure_future(stop_event.wait())
    syncer = asyncio.ensure_future(fsync_periodically())
    failure: BaseException | None = None
    cancelled = False
    try:
        with prog:
            pending: set[asyncio.Future] = {producer, *workers, stopper}
            while True:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for f in finished:
                    if f is not stopper and not f.cancelled() and f.exception() is not None:
                        failure = f.exception()
                if failure is not None or stopper in finished or all(w.done() for w in workers):
                    break
    except asyncio.CancelledError:  # cancelled from outside: clean up like a stop, then re-raise (the caller)
        cancelled = True
        stop_event.set()
    finally:
        if stop_event.is_set() or failure is not None:
            for f in (producer, *workers):
                f.cancel()
        stopper.cancel()
        syncer.cancel()
        await asyncio.gather(producer, *workers, stopper, syncer, return_exceptions=True)
        writer.close()  # flush + fsync
        os.close(sync_fd)
        await aclose_http()
    return failure, cancelled


def run_cache(cfg: CacheConfig, *, pool: Pool | None = None, console=None, progress: bool | None = None
              ) -> CacheSummary:
    """Blocking ``arun_cache``. The first Ctrl-C (or SIGTERM) stops cleanly and returns the summary; a second
    Ctrl-C aborts at once (the file stays valid: every line is written whole)."""

    async def main() -> CacheSummary:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []

        def on_signal(sig) -> None:
            if not stop.is_set():
                stop.set()
                if console is not None:
                    console.print("[yellow]stopping: cancelling in-flight calls (Ctrl-C again to abort)")
            else:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
                pass
        try:
            return await arun_cache(cfg, pool=pool, console=console, progress=progress, stop_event=stop)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


# ---- reporting -----------------------------------------------------------------------------------------------------


def print_estimate(rows: list[ModelEstimate], console=None, cfg: CacheConfig | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="offline cache: estimated cost (dry run, nothing called)")
    for col in ("model", "pairs to call", "done", "input tok", "exp. output tok", "expected $", "worst case $"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    tot = ModelEstimate("TOTAL")
    for r in rows:
        t.add_row(r.model_id, f"{r.pairs:,}", f"{r.already_done:,}", f"{r.input_tokens:,}",
                  f"{r.expected_output_tokens:,}", f"{r.expected_cost_usd:.4f}", f"{r.worst_case_cost_usd:.4f}")
        tot.pairs += r.pairs
        tot.already_done += r.already_done
        tot.input_tokens += r.input_tokens
        tot.expected_output_tokens += r.expected_output_tokens
        tot.expected_cost_usd += r.expected_cost_usd
        tot.worst_case_cost_usd += r.worst_case_cost_usd
    t.add_section()
    t.add_row("[bold]TOTAL", f"{tot.pairs:,}", f"{tot.already_done:,}", f"{tot.input_tokens:,}",
              f"{tot.expected_output_tokens:,}", f"[bold]{tot.expected_cost_usd:.4f}", f"{tot.worst_case_cost_usd:.4f}")
    console.print(t)
    note = ("input tokens counted with OpenAI's o200k encoding (other providers' tokenizers differ a little); "
            "expected output assumes")
    if cfg is not None:
        note += f" {cfg.est_output_tokens} tokens per answer ({cfg.est_reasoning_output_tokens} for reasoning models)"
    else:
        note += " the configured answer lengths"
    console.print(f"[dim]{note}; worst case = every call uses its whole output budget.")


def print_summary(s: CacheSummary, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"offline cache: {s.out}")
    for col in ("model", "answered", "errors", "accuracy", "cost $"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for mid, m in s.per_model.items():
        acc = f"{m.correct / m.ok:.1%}" if m.ok else "-"
        t.add_row(mid, str(m.ok), str(m.errors), acc, f"{m.cost_usd:.5f}")
    console.print(t)
    lines = [
        f"pairs: {s.pairs_total} in total, {s.already_done} already answered, {s.planned} to call "
        f"({s.errored_before} of them errored before)",
        f"this run: {s.ok} answered, {s.errors} errors, ${s.spent_usd:.5f} spent in {s.elapsed_s:.1f} s",
    ]
    if s.budget_usd is not None:
        lines.append(f"budget: ${s.budget_usd:.4f} for the whole cache file: ${s.spent_before_usd:.5f} recorded before "
                     f"this run + ${s.spent_usd:.5f} this run (never exceeded by reservations; overruns: "
                     f"{s.budget_overruns})")
    if s.stopped == "budget":
        lines.append(f"[yellow]stopped by the budget: {s.not_scheduled} pair(s) not called; the cap covers everything "
                     "the file records: raise --budget-usd and re-run to continue")
    elif s.stopped == "interrupted":
        lines.append(f"[yellow]interrupted: {s.planned - s.ok - s.errors} pair(s) not done; re-run the same command "
                     "to resume")
    if s.errors:
        lines.append(f"[yellow]{s.errors} errored pair(s) are retried by the next run")
    if s.torn_tail_dropped:
        lines.append("[yellow]a torn last line (from a crash) was dropped and its pair redone")
    from .traversal import summary_lines

    lines += summary_lines(s)
    for line in lines:
        console.print(line)


def config_from_cli(config: Path | None, **cli: Any) -> CacheConfig:
    """Merge a YAML config with CLI options (those not None win)."""
    return load_cache_config(config, **cli)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `xrouter-lite cache` or scripts/generate_offline_cache.py")
