"""Which (question, model) pairs the cache stage calls: the full traversal, or cost-ordered with early stopping.

    xrouter-lite cache --dataset Q.jsonl --pool P.yaml --out C.jsonl --traversal cost-ordered --explore 0.08
    xrouter-lite cache --dataset Q.jsonl --pool P.yaml --traversal cost-ordered --explore 0.08 --dry-run
    xrouter-lite cache --simulate-from runs/rb/full.jsonl --pool configs/pool_routerbench.yaml \\
        --traversal cost-ordered --explore 0.08 --out runs/rb/cost_ordered.jsonl      # replays, calls nothing

- ``full`` (the default): every model answers every question. The router's training data is complete (every
  pair of models compared on every question); the cost is the whole pool's price.
- ``cost-ordered``: per question, the models are called one after the other in ascending *expected* cost (the
  pool's prices x the question's length in tokens + the expected answer length), and the question stops at the
  first correct answer. That answer is the cheapest correct model of the question and every cheaper model is
  known to be wrong: under any lambda > 0 the dearer models, never called, cannot have a higher reward, so the
  best-vs-rest preferences are known without them. Questions run concurrently (``concurrency`` calls in flight).
  ``explore`` (a fraction, seeded per question id so a resumed run draws the same questions) still gets the
  full traversal, so every model's correctness is observed on a sample.

What a cost-ordered cache holds (``records.CacheRecord``): every record it writes carries ``traversal``
(``"cost-ordered"`` or ``"explore"``); the record of the answer that stopped a question carries ``skipped``: the
dearer models not called, with their expected cost in USD. A skipped model is *unknown*, never written as wrong;
``pairs`` makes only the preferences the known labels imply (``xrouter_lite.pairs``).

Resuming: a question's state is read back from the file (the models answered, wrong or right, in order); a run
goes on from the first model without an answer, so a kill -9 at any point repeats no answered pair and loses
none. The budget cap counts the money already recorded in the file (``recorded_spend``): it holds across runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from .pool import ModelSpec, Pool, load_pool
from .records import CacheRecord, iter_records

Traversal = Literal["full", "cost-ordered"]
TRAVERSALS: tuple[str, ...] = get_args(Traversal)
COST_ORDERED = "cost-ordered"
EXPLORE = "explore"

__all__ = [
    "TRAVERSALS",
    "expected_call_cost",
    "order_models",
    "is_explored",
    "recorded_spend",
    "SimulationReport",
    "simulate_traversal",
    "TraversalEstimate",
    "estimate_traversals",
    "arun_cost_ordered",
]


# ---- the order and the exploration sample --------------------------------------------------------------------------


def expected_call_cost(spec: ModelSpec, input_tokens: int, output_tokens: int) -> float:
    """USD a call is expected to cost: the pool's prices x the question's tokens + the expected answer length."""
    return spec.cost(input_tokens, output_tokens)


def order_models(specs: Iterable[ModelSpec], input_tokens: int, est_output_tokens: int = 300,
                 est_reasoning_output_tokens: int = 2000) -> list[tuple[ModelSpec, float]]:
    """The models in ascending expected cost for a question of ``input_tokens`` (ties: the model id), each with
    its expected cost."""
    out = [(s, expected_call_cost(s, input_tokens, est_reasoning_output_tokens if s.reasoning else est_output_tokens))
           for s in specs]
    return sorted(out, key=lambda sc: (sc[1], sc[0].id))


def is_explored(prompt_id: str, fraction: float, seed: int = 0) -> bool:
    """Whether a question is in the exploration sample: a hash of (seed, id) below ``fraction``. Depends on
    nothing but the id, so a resumed run, another order or another file draws the same questions."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    h = hashlib.sha256(f"explore\x1f{seed}\x1f{prompt_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def recorded_spend(path: str | Path) -> float:
    """USD recorded in a cache file (``cache.recorded_spend``: the one definition; re-exported for the runners here)."""
    from .cache import recorded_spend as spend

    return spend(path)


def complete_rows(prompts: list) -> list:
    """The questions (``evaluate.LabeledPrompt``) labelled for every model that appears anywhere in ``prompts``: in
    a cost-ordered cache, its exploration sample (and the questions no model got right). What the evaluation's
    baselines that learn from every model's label may use."""
    present = {m for p in prompts for m in p.outcomes}
    return [p for p in prompts if len(p.outcomes) == len(present)]


def explored_ids(cache: str | Path) -> set[str] | None:
    """The exploration sample of a cost-ordered cache (question ids whose lines say ``"traversal": "explore"``);
    None for a cache with no cost-ordered line (a full traversal: every label is known)."""
    from .records import iter_records

    explored, ordered = set(), False
    for _ln, r in iter_records(cache):
        if r.traversal == "explore":
            explored.add(r.prompt_id)
        elif r.traversal == "cost-ordered":
            ordered = True
    return explored if ordered else None


def _input_tokens(prompt: str, system_prompt: str | None = None) -> int:
    from .cache import _count_tokens, _messages

    return sum(_count_tokens(m["content"]) + 4 for m in _messages(prompt, system_prompt)) + 3


# ---- replaying a recorded full cache ---------------------------------------------------------------------------------


@dataclass
class SimulationReport:
    """What a traversal would have called and cost on a recorded full cache."""

    source: str
    traversal: str
    explore: float
    seed: int
    questions: int = 0
    explored_questions: int = 0
    stopped_early: int = 0  # cost-ordered questions stopped before their last model
    all_wrong: int = 0  # cost-ordered questions where no model was right (every model called)
    missing_pairs: int = 0  # pairs the recorded cache lacks (not counted on either side)
    full_calls: int = 0
    full_cost_usd: float = 0.0
    calls: int = 0
    cost_usd: float = 0.0
    calls_by_model: dict[str, int] = field(default_factory=dict)
    out: str | None = None

    @property
    def cost_fraction(self) -> float:
        return self.cost_usd / self.full_cost_usd if self.full_cost_usd else 0.0

    @property
    def calls_fraction(self) -> float:
        return self.calls / self.full_calls if self.full_calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(cost_fraction=round(self.cost_fraction, 6), calls_fraction=round(self.calls_fraction, 6),
                 cost_saved_usd=round(self.full_cost_usd - self.cost_usd, 6), calls_saved=self.full_calls - self.calls)
        return d


def simulate_traversal(
    source: str | Path,
    pool: Pool,
    traversal: str = COST_ORDERED,
    *,
    explore: float = 0.0,
    seed: int = 0,
    out: str | Path | None = None,
    models: list[str] | None = None,
    ids: set[str] | None = None,
    est_output_tokens: int = 300,
    est_reasoning_output_tokens: int = 2000,
    system_prompt: str | None = None,
) -> SimulationReport:
    """Replay ``traversal`` on a recorded full cache (RouterBench's recorded answers, or a full run's file),
    calling nothing: per question the models are "called" in the traversal's order and their recorded answer is
    taken. With ``out``, the records the traversal would have written (with ``traversal`` / ``skipped``) are
    written there, atomically, in the cache format: a cost-ordered cache to train on, for nothing.

    ``ids`` limits the replay to those questions (e.g. a split's training part)."""
    from .cache import latest_records

    if traversal not in TRAVERSALS:
        raise ValueError(f"unknown traversal {traversal!r} (choose from {', '.join(TRAVERSALS)})")
    specs = [pool.get(m) for m in models] if models else list(pool)
    wanted = {s.id for s in specs}
    rep = SimulationReport(source=str(source), traversal=traversal, explore=explore, seed=seed)
    by_q: dict[str, dict[str, CacheRecord]] = defaultdict(dict)
    for rec in latest_records(source, include_errors=False):
        if rec.model_name in wanted and rec.is_correct is not None and (ids is None or rec.prompt_id in ids):
            by_q[rec.prompt_id][rec.model_name] = rec
    calls: Counter = Counter()
    f = tmp = None
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        f = tmp.open("w", encoding="utf-8")
    try:
        for pid, recs in by_q.items():
            rep.questions += 1
            rep.missing_pairs += len(specs) - len(recs)
            rep.full_calls += len(recs)
            rep.full_cost_usd += sum(r.cost for r in recs.values())
            first = next(iter(recs.values()))
            explored = traversal == COST_ORDERED and is_explored(pid, explore, seed)
            rep.explored_questions += explored
            order = order_models(specs, _input_tokens(first.prompt, system_prompt), est_output_tokens,
                                 est_reasoning_output_tokens)
            written: list[CacheRecord] = []
            if traversal == "full" or explored:
                for s, _ in order:
                    if s.id in recs:
                        written.append(recs[s.id])
                tag = EXPLORE if explored else None
                for r in written:
                    r.traversal = tag
            else:
                skipped: dict[str, float] = {}
                stop = None
                for i, (s, _) in enumerate(order):
                    r = recs.get(s.id)
                    if r is None:
                        continue
                    r.traversal = COST_ORDERED
                    written.append(r)
                    if r.is_correct:
                        stop = r
                        skipped = {t.id: round(c, 10) for t, c in order[i + 1:] if t.id in recs}
                        break
                if stop is None:
                    rep.all_wrong += 1
                elif skipped:
                    stop.skipped = skipped
                    rep.stopped_early += 1
            for r in written:
                rep.calls += 1
                rep.cost_usd += r.cost
                calls[r.model_name] += 1
                if f is not None:
                    f.write(r.to_json() + "\n")
        if f is not None:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, out)
            rep.out = str(out)
    except BaseException:
        if f is not None:
            f.close()
            tmp.unlink(missing_ok=True)
        raise
    rep.calls_by_model = dict(calls.most_common())
    return rep


def print_simulation(rep: SimulationReport, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    what = rep.traversal + (f" + explore {rep.explore:g} (seed {rep.seed})" if rep.traversal == COST_ORDERED else "")
    console.print(f"[bold]simulated {what}[/bold] on {rep.source} (recorded answers; nothing called)")
    console.print(f"questions: {rep.questions} ({rep.explored_questions} explored, {rep.stopped_early} stopped early, "
                  f"{rep.all_wrong} with no correct model)")
    console.print(f"calls: {rep.calls:,} of {rep.full_calls:,} ({rep.calls_fraction:.1%}; {rep.full_calls - rep.calls:,} saved)")
    console.print(f"cost:  ${rep.cost_usd:.4f} of ${rep.full_cost_usd:.4f} ({rep.cost_fraction:.1%}; "
                  f"${rep.full_cost_usd - rep.cost_usd:.4f} saved)")
    if rep.missing_pairs:
        console.print(f"[yellow]{rep.missing_pairs} (question, model) pair(s) are not in the recorded cache (left out)")
    if rep.out:
        console.print(f"wrote {rep.out}")


# ---- the dry run: each traversal's expected cost ---------------------------------------------------------------------


@dataclass
class TraversalEstimate:
    traversal: str
    calls: float
    expected_cost_usd: float
    note: str = ""


def estimate_traversals(cfg, pool: Pool | None = None, default_accuracy: float = 0.5) -> list[TraversalEstimate]:
    """Dry run of every traversal (calls nothing): the full traversal's expected cost, and the cost-ordered one's
    under each model's accuracy: observed in the cache file when it holds >= 20 of the model's answers, else
    ``default_accuracy`` (answers taken as independent across models). Pairs already answered cost nothing."""
    from .cache import _questions, _select_models, scan_cache

    pool = pool or load_pool(cfg.pool)
    specs = _select_models(cfg, pool)
    out = Path(cfg.out)
    acc: dict[str, float] = {}
    seen: Counter = Counter()
    right: Counter = Counter()
    if out.exists():
        for rec in latest_records_ok(out):
            seen[rec.model_name] += 1
            right[rec.model_name] += bool(rec.is_correct)
    for s in specs:
        acc[s.id] = right[s.id] / seen[s.id] if seen[s.id] >= 20 else default_accuracy
    done = scan_cache(out).ok if out.exists() else set()
    full_calls = full_cost = co_calls = co_cost = full_batch = co_batch = 0.0
    batchable = all(s.has_batch_price for s in specs)

    def out_tok(s: ModelSpec) -> int:
        return cfg.est_reasoning_output_tokens if s.reasoning else cfg.est_output_tokens

    for q in _questions(cfg):
        n_in = _input_tokens(q.prompt, cfg.system_prompt)
        order = order_models(specs, n_in, cfg.est_output_tokens, cfg.est_reasoning_output_tokens)
        bc = {s.id: s.batch_cost(n_in, out_tok(s)) if batchable else 0.0 for s, _ in order}
        for s, c in order:
            if (q.id, s.id) not in done:
                full_calls += 1
                full_cost += c
                full_batch += bc[s.id]
        if is_explored(q.id, cfg.explore, cfg.explore_seed):
            for s, c in order:
                if (q.id, s.id) not in done:
                    co_calls += 1
                    co_cost += c
                    co_batch += bc[s.id]
            continue
        p_reach = 1.0
        for s, c in order:
            if (q.id, s.id) not in done:
                co_calls += p_reach
                co_cost += p_reach * c
                co_batch += p_reach * bc[s.id]
            p_reach *= 1.0 - acc[s.id]
    src = "observed in the cache" if any(seen[s.id] >= 20 for s in specs) else f"{default_accuracy:.0%} assumed"
    rows = [
        TraversalEstimate("full", full_calls, full_cost, "every model answers every question"),
        TraversalEstimate(COST_ORDERED, co_calls, co_cost,
                          f"explore {cfg.explore:g}; per-model accuracy {src}; stops at the first correct answer"),
    ]
    if batchable:
        rows += [TraversalEstimate("full --batch", full_calls, full_batch, "the pool's batch prices"),
                 TraversalEstimate(COST_ORDERED + " --batch", co_calls, co_batch, "the pool's batch prices, in rounds")]
    return rows


def latest_records_ok(path: Path):
    from .cache import latest_records

    return latest_records(path, include_errors=False, strict=False)


def print_traversal_estimates(rows: list[TraversalEstimate], console=None, chosen: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="cost of each traversal (dry run, nothing called)")
    for col in ("traversal", "expected calls", "expected $", "vs full", "how"):
        t.add_column(col, justify="left" if col in ("traversal", "how") else "right")
    full = rows[0].expected_cost_usd or 1.0
    for r in rows:
        mark = " (chosen)" if r.traversal == chosen else ""
        t.add_row(r.traversal + mark, f"{r.calls:,.0f}", f"{r.expected_cost_usd:.4f}",
                  f"{r.expected_cost_usd / full:.1%}", r.note)
    console.print(t)


# ---- the live cost-ordered run ---------------------------------------------------------------------------------------


async def arun_cost_ordered(cfg, *, pool: Pool | None = None, console=None, progress: bool | None = None,
                            stop_event: asyncio.Event | None = None):
    """Run the cache stage with ``traversal: cost-ordered`` (see the module docstring); returns a
    ``cache.CacheSummary`` with ``traversal`` figures. Same file, locking, retries, budget and Ctrl-C behaviour
    as the full traversal (``cache.arun_cache``)."""
    from rich.console import Console

    from . import cache as C
    from .llm import LLMCallError, RetryPolicy, acall_model, estimate_prompt_tokens_upper, uses_direct_transport
    from .records import RecordWriter, repair_torn_tail

    console = console or Console(stderr=True)
    pool = pool or load_pool(cfg.pool)
    specs = C._select_models(cfg, pool)
    for s in specs:
        try:
            uses_direct_transport(s, cfg.transport)
        except ValueError as e:
            raise C.CacheConfigError(f"transport: {e}") from None
    out = Path(cfg.out)
    t_start = time.perf_counter()
    summary = C.CacheSummary(out=str(out), budget_usd=cfg.budget_usd)
    summary.per_model = {s.id: C.ModelTally() for s in specs}
    tv = summary.traversal = {"traversal": COST_ORDERED, "explore": cfg.explore, "explore_seed": cfg.explore_seed,
                              "questions": 0, "explored": 0, "complete_before": 0, "stopped_early": 0,
                              "skipped_pairs": 0}

    sync_fd = C._lock_cache_file(out)
    try:
        summary.torn_tail_dropped = repair_torn_tail(out)
        # per pair: the newest successful record's correctness (None: only errors so far)
        state: dict[tuple[str, str], bool | None] = {}
        for _, rec in iter_records(out):
            if rec.ok:
                state[rec.key] = bool(rec.is_correct)
            else:
                state.setdefault(rec.key, None)
        spent_before = recorded_spend(out)
        check = C._task_checker()
        for q in C._questions(cfg):
            check(q)
            summary.pairs_total += len(specs)
        writer = RecordWriter(out, fsync_every=1 << 60)
    except BaseException:
        os.close(sync_fd)
        raise

    sampling = cfg.sampling()
    policy = RetryPolicy(max_retries=cfg.max_retries, base_delay_s=cfg.retry_base_delay_s,
                         retry_after_cap_s=cfg.retry_after_cap_s)
    budget = C.BudgetGuard(cfg.budget_usd)
    budget.spent = spent_before  # the cap holds across runs: money recorded in the file counts
    limiters = {s.id: C.RateLimiter(cfg.rate_limit_rpm) for s in specs} if cfg.rate_limit_rpm else {}
    stop_event = stop_event or asyncio.Event()
    calls = asyncio.Semaphore(cfg.concurrency)
    queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.concurrency)
    out_of_budget = asyncio.Event()
    done = 0
    prog = C._Progress(console, summary.pairs_total, progress)

    async def call(q, s: ModelSpec, msgs, upper: int, tag: str, skipped: dict[str, float] | None = None):
        """One paid call, written as one record; returns its correctness (None: errored or not made)."""
        nonlocal done
        if out_of_budget.is_set():
            return None
        reserve = C._worst_case_cost(s, upper, cfg) if cfg.budget_usd is not None else 0.0
        if not await budget.reserve(reserve):
            summary.stopped = "budget"
            out_of_budget.set()
            return None
        actual = 0.0
        try:
            async with calls:
                lim = limiters.get(s.id)
                try:
                    text, meta = await acall_model(
                        s, msgs, sampling, timeout_s=cfg.timeout_s, retry_policy=policy,
                        before_attempt=lim.acquire if lim else None, reasoning_min_tokens=cfg.reasoning_max_tokens,
                        transport=cfg.transport,
                    )
                except LLMCallError as e:
                    rec = C._record(q, s, error=str(e))
                else:
                    actual = meta.cost
                    rec = C._graded_record(q, s, text, in_tok=meta.input_tokens, out_tok=meta.output_tokens,
                                           cost=meta.cost, latency=meta.latency_s)
                rec.traversal = tag
                if rec.ok and rec.is_correct and skipped:
                    rec.skipped = skipped
                writer.write(rec)  # synchronous: never torn by a cancellation
                C._tally(summary, rec, actual)
                done += 1
                return rec.is_correct if rec.ok else None
        finally:
            await budget.settle(reserve, actual)
            prog.update(done, summary.errors, budget.spent)

    async def one_question(q) -> None:
        order = order_models(specs, _input_tokens(q.prompt, cfg.system_prompt), cfg.est_output_tokens,
                             cfg.est_reasoning_output_tokens)
        msgs = C._messages(q.prompt, cfg.system_prompt)
        upper = estimate_prompt_tokens_upper(msgs)
        tv["questions"] += 1
        if is_explored(q.id, cfg.explore, cfg.explore_seed):
            tv["explored"] += 1
            todo = [s for s, _ in order if state.get((q.id, s.id)) is None]
            summary.already_done += len(order) - len(todo)
            summary.planned += len(todo)
            await asyncio.gather(*(call(q, s, msgs, upper, EXPLORE) for s in todo))
            return
        for i, (s, _) in enumerate(order):
            known = state.get((q.id, s.id))
            if known is not None:  # answered by an earlier run (a resumed question)
                summary.already_done += 1
                if known:
                    tv["complete_before"] += 1
                    tv["skipped_pairs"] += len(order) - i - 1
                    return
                continue
            if stop_event.is_set() or out_of_budget.is_set():
                return
            summary.planned += 1
            rest = {t.id: round(c, 10) for t, c in order[i + 1:]}
            ok = await call(q, s, msgs, upper, COST_ORDERED, rest)
            if ok is None:  # errored (retried by the next run) or not made: the later models wait for it
                return
            if ok:
                if rest:
                    tv["stopped_early"] += 1
                    tv["skipped_pairs"] += len(rest)
                return

    async def produce() -> None:
        for q in C._questions(cfg):
            if out_of_budget.is_set() or stop_event.is_set():
                break
            await queue.put(q)
        for _ in range(cfg.concurrency):
            await queue.put(None)

    async def work() -> None:
        while True:
            q = await queue.get()
            if q is None:
                return
            await one_question(q)

    failure, cancelled = await C.run_workers(produce, work, cfg.concurrency, stop_event, sync_fd, prog, writer)
    if stop_event.is_set():
        summary.stopped = "interrupted"
    summary.spent_usd = budget.spent - spent_before
    summary.budget_overruns = budget.overruns
    summary.elapsed_s = time.perf_counter() - t_start
    if failure is not None:
        raise failure
    if cancelled:
        raise asyncio.CancelledError
    return summary


def summary_lines(summary) -> list[str]:
    tv = getattr(summary, "traversal", None) or {}
    if tv.get("batch"):
        from .batch import summary_lines as batch_lines

        return batch_lines(summary)
    if not tv:
        return []
    return [
        f"traversal: cost-ordered, explore {tv['explore']:g} (seed {tv['explore_seed']}): {tv['questions']} questions "
        f"seen, {tv['explored']} explored (every model), {tv['stopped_early']} stopped at a correct answer this run "
        f"({tv['complete_before']} already complete); {tv['skipped_pairs']} pairs skipped (unknown, not wrong)",
    ]


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
