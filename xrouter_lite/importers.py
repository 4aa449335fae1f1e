"""Importers of recorded model runs into the offline cache format (``records.CacheRecord`` lines).

RouterBench (Hu et al., 2024; the zero-shot CSVs redistributed in shuhao02/RouterDC) holds, per question, the
real answers of 11 models, whether each was correct and what each cost. ``import_routerbench`` turns such CSVs
into cache lines, one per (question, model), so the DPO-pair and evaluation stages can run without any API::

    xrouter-lite import routerbench ../shared/data/routerbench/*.csv --out runs/rb/offline_cache.jsonl

How each field is filled:

- ``prompt_id`` = ``<eval_name>-<sample_id>``. sample_ids can repeat; a repeat among the imported rows gets
  ``-dup1``, ``-dup2``, ... in file order (deterministic; counted in the summary).
- ``dataset`` = ``eval_name`` (arc-challenge, mbpp, winogrande, ...); ``task`` from ``EVAL_TASKS`` (mc, code,
  gsm8k, math; None for an eval this module does not know, which then cannot be re-graded).
- ``prompt`` = the string inside the ``prompt`` cell (a Python-list literal, read with ``ast.literal_eval``).
- ``response`` = the string inside ``M|model_response`` (same kind of literal).
- ``is_correct`` = RouterBench's own grade in column ``M`` (1.0 / 0.0), kept as recorded.
- ``cost`` = ``M|total_cost``, the real recorded USD of that call.
- ``reference``: RouterBench has no gold-answer column. For mc and gsm8k questions the importer infers it
  from the answers RouterBench graded correct (``grading.extract_answer`` of each; kept when they all agree,
  e.g. "B"); otherwise (code questions, nobody correct, disagreement) it stores "". Counted in the summary.
- ``token_usage`` = 0 / 0 and ``latency_s`` = 0: RouterBench does not record them.

A row with an empty cell (or an unreadable one) for any model is skipped whole and counted by reason, so every
imported question has all its models. Model columns must be ids of the pool file (``configs/pool_routerbench.yaml``
by default); an unknown column is an error naming the file and column. The CSVs are streamed row by row (the
``csv`` module with a large field limit): memory is constant apart from the set of prompt ids, and with
``limit_per_file`` + ``seed`` a first counting pass picks the sampled rows so order is kept.

An existing output file is never clobbered silently: its (prompt_id, model) pairs are kept and skipped
(re-running an import is a no-op) unless ``overwrite=True``. A new file (and ``overwrite=True``) is written beside
the output as ``.NAME.importing`` and renamed into place only when the import has succeeded: a failed or
interrupted import leaves no file behind and the old one untouched. Importing nothing at all (no complete row, e.g.
a header-only CSV) is an error.
"""

from __future__ import annotations

import ast
import csv
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import packaged_config
from .grading import extract_answer
from .pool import Pool, load_pool
from .records import CacheRecord, RecordWriter, TokenUsage, iter_records

__all__ = [
    "EVAL_TASKS",
    "ROUTERBENCH_FIXED_COLUMNS",
    "RouterBenchImportError",
    "ModelTotals",
    "ImportSummary",
    "task_for_eval",
    "routerbench_models",
    "iter_routerbench",
    "import_routerbench",
]

def default_pool_path() -> Path:
    """``configs/pool_routerbench.yaml`` of the current directory, else the copy shipped with the package."""
    return packaged_config("configs/pool_routerbench.yaml")

EVAL_TASKS: dict[str, str] = {
    "arc-challenge": "mc",
    "winogrande": "mc",
    "hellaswag": "mc",
    "mmlu": "mc",
    "mbpp": "code",
    "gsm8k": "gsm8k",
    "math": "math",
}
"""RouterBench ``eval_name`` -> grading task (an eval named ``mmlu-...`` maps like ``mmlu``)."""

ROUTERBENCH_FIXED_COLUMNS = ("", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to")
_REQUIRED = ("sample_id", "prompt", "eval_name")
_SUFFIXES = ("|model_response", "|total_cost")


class RouterBenchImportError(ValueError):
    """A RouterBench CSV cannot be imported; the message names the file (and line or column)."""


def task_for_eval(eval_name: str) -> str | None:
    """The grading task of a RouterBench eval, or None when unknown."""
    if eval_name in EVAL_TASKS:
        return EVAL_TASKS[eval_name]
    for prefix, task in EVAL_TASKS.items():
        if eval_name.startswith(prefix + "-") or eval_name.startswith(prefix + "_"):
            return task
    return None


@dataclass
class ModelTotals:
    n: int = 0
    correct: int = 0
    cost: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class ImportSummary:
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_imported: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    skipped_examples: list[str] = field(default_factory=list)  # "file:line: reason", first 20
    rows_not_sampled: int = 0
    duplicate_ids: int = 0
    records_written: int = 0
    records_already_present: int = 0
    references_inferred: int = 0
    references_empty: int = 0
    per_model: dict[str, ModelTotals] = field(default_factory=dict)
    per_dataset: Counter = field(default_factory=Counter)
    oracle_correct: int = 0
    oracle_cost: float = 0.0

    def skip(self, where: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < 20:
            self.skipped_examples.append(f"{where}: {reason}")

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def format(self) -> str:
        """A plain-text report (what the CLI prints)."""
        lines = [
            f"files: {', '.join(self.files)}",
            f"rows read: {self.rows_read}; imported: {self.rows_imported}; skipped: {self.rows_skipped}"
            + (f"; not sampled: {self.rows_not_sampled}" if self.rows_not_sampled else ""),
        ]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n}: {reason}")
        lines.append(
            f"records written: {self.records_written}"
            + (f" (already present, kept: {self.records_already_present})" if self.records_already_present else "")
        )
        lines.append(f"duplicate sample ids renamed (-dupN): {self.duplicate_ids}")
        lines.append(
            f"references inferred from correct answers: {self.references_inferred}; left empty: {self.references_empty}"
        )
        lines.append("datasets: " + ", ".join(f"{k} {v}" for k, v in sorted(self.per_dataset.items())))
        if self.per_model:
            width = max(len(m) for m in self.per_model)
            lines.append(f"{'model':<{width}}  {'questions':>9}  {'accuracy':>8}  {'total cost':>11}")
            for m, t in sorted(self.per_model.items(), key=lambda kv: -kv[1].accuracy):
                lines.append(f"{m:<{width}}  {t.n:>9}  {t.accuracy:>8.1%}  ${t.cost:>10.4f}")
            if self.rows_imported:
                lines.append(
                    f"{'oracle (cheapest correct)':<{width}}  {self.rows_imported:>9}  "
                    f"{self.oracle_correct / self.rows_imported:>8.1%}  ${self.oracle_cost:>10.4f}"
                )
        return "\n".join(lines)


def _set_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # Windows' C long
            limit //= 10


def routerbench_models(header: Sequence[str], where: str, pool: Pool | None = None) -> list[str]:
    """The model ids of a RouterBench header, checked: each has its three columns and (given a pool) is in it."""
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise RouterBenchImportError(f"{where}: not a RouterBench CSV: missing column(s) {', '.join(missing)}")
    cols = set(header)
    models = [c for c in header if c not in ROUTERBENCH_FIXED_COLUMNS and "|" not in c]
    if not models:
        raise RouterBenchImportError(f"{where}: no model columns found")
    for m in models:
        for suf in _SUFFIXES:
            if m + suf not in cols:
                raise RouterBenchImportError(f"{where}: model column {m!r} has no {m + suf!r} column")
    for c in header:
        if "|" in c:
            base, _, suf = c.partition("|")
            if base not in models:
                raise RouterBenchImportError(f"{where}: column {c!r} has no correctness column {base!r}")
    if pool is not None:
        unknown = [m for m in models if m not in pool]
        if unknown:
            raise RouterBenchImportError(
                f"{where}: column(s) {', '.join(repr(u) for u in unknown)} are not models of the pool {pool.source} "
                f"(known: {', '.join(pool.ids)}); add them to the pool file or pass --pool"
            )
    return models


def _literal_text(cell: str) -> str:
    """The text of a Python-list literal cell like "['B\\n']" (several strings are joined by newlines)."""
    v = ast.literal_eval(cell)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return "\n".join(v)
    raise ValueError(f"expected a list of strings, got {type(v).__name__}")


def _row_problem(row: dict[str, str | None], models: list[str]) -> str | None:
    """Reason why a row cannot be imported, or None (cheap check: empty cells only)."""
    for c in ("sample_id", "prompt", "eval_name"):
        if not (row.get(c) or "").strip():
            return f"empty cell in column {c!r}"
    for m in models:
        for c in (m, m + "|model_response", m + "|total_cost"):
            if row.get(c) is None or row.get(c) == "":
                return "empty cell(s) for model " + m if c == m else f"empty cell in column {c!r}"
    return None


def _count_complete(path: Path, models: list[str]) -> int:
    n = 0
    with path.open("r", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if _row_problem(row, models) is None:
                n += 1
    return n


def iter_routerbench(
    paths: Sequence[str | Path],
    pool: Pool | None = None,
    limit_per_file: int | None = None,
    seed: int | None = None,
    summary: ImportSummary | None = None,
) -> Iterator[list[CacheRecord]]:
    """Yield, per imported CSV row, its cache records (one per model), streaming.

    ``limit_per_file``: keep that many complete rows per file (the first ones, or a ``seed``-ed random sample
    kept in file order). ``summary`` is filled as rows go by.
    """
    _set_field_limit()
    summary = summary if summary is not None else ImportSummary()
    seen_ids: set[str] = set()
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise RouterBenchImportError(f"RouterBench CSV not found: {path}")
        summary.files.append(str(path))
        with path.open("r", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise RouterBenchImportError(f"{path}: empty file")
            models = routerbench_models(reader.fieldnames, str(path), pool)
            chosen: set[int] | None = None
            if limit_per_file is not None and seed is not None:
                total = _count_complete(path, models)
                k = min(limit_per_file, total)
                chosen = set(random.Random(f"{seed}:{path.name}").sample(range(total), k))
            ordinal = -1  # index among complete rows
            taken = 0
            for row in reader:
                summary.rows_read += 1
                where = f"{path}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    summary.skip(where, "wrong number of cells")
                    continue
                problem = _row_problem(row, models)
                if problem is not None:
                    summary.skip(where, problem)
                    continue
                ordinal += 1
                if limit_per_file is not None:
                    if (chosen is not None and ordinal not in chosen) or (chosen is None and taken >= limit_per_file):
                        summary.rows_not_sampled += 1
                        continue
                recs = _row_records(row, models, where, summary)
                if recs is None:
                    continue
                taken += 1
                base_id = recs[0].prompt_id
                pid, dup = base_id, 0
                while pid in seen_ids:
                    dup += 1
                    pid = f"{base_id}-dup{dup}"
                if dup:
                    summary.duplicate_ids += 1
                    for r in recs:
                        r.prompt_id = pid
                seen_ids.add(pid)
                _tally(recs, summary)
                yield recs


def _row_records(row: dict[str, str], models: list[str], where: str, summary: ImportSummary) -> list[CacheRecord] | None:
    try:
        prompt = _literal_text(row["prompt"])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        summary.skip(where, f"unreadable 'prompt' cell ({type(e).__name__})")
        return None
    eval_name = row["eval_name"].strip()
    task = task_for_eval(eval_name)
    prompt_id = f"{eval_name}-{row['sample_id'].strip()}"
    parsed: list[tuple[str, str, bool, float]] = []
    for m in models:
        try:
            response = _literal_text(row[m + "|model_response"])
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            summary.skip(where, f"unreadable response of {m} ({type(e).__name__})")
            return None
        grade = row[m].strip()
        try:
            g = float(grade)
        except ValueError:
            g = float("nan")
        if g not in (0.0, 1.0):
            summary.skip(where, f"correctness of {m} is {grade!r}, not 0/1")
            return None
        try:
            cost = float(row[m + "|total_cost"])
        except ValueError:
            cost = float("nan")
        if math.isnan(cost) or math.isinf(cost) or cost < 0:
            summary.skip(where, f"cost of {m} is {row[m + '|total_cost']!r}, not a number >= 0")
            return None
        parsed.append((m, response, g == 1.0, cost))
    reference = _infer_reference(task, [(resp, ok) for _, resp, ok, _ in parsed])
    if reference:
        summary.references_inferred += 1
    else:
        summary.references_empty += 1
    return [
        CacheRecord(
            prompt_id=prompt_id,
            dataset=eval_name,
            prompt=prompt,
            reference=reference,
            model_name=m,
            response=response,
            is_correct=ok,
            token_usage=TokenUsage(0, 0),
            cost=cost,
            latency_s=0.0,
            error=None,
            task=task,
        )
        for m, response, ok, cost in parsed
    ]


def _infer_reference(task: str | None, answers: list[tuple[str, bool]]) -> str:
    """The answer the correct responses agree on (mc letter / gsm8k number), or ""."""
    if task not in ("mc", "gsm8k"):
        return ""
    got = {extract_answer(task, resp) for resp, ok in answers if ok}
    got.discard(None)
    return got.pop() if len(got) == 1 else ""


def _tally(recs: list[CacheRecord], summary: ImportSummary) -> None:
    summary.rows_imported += 1
    summary.per_dataset[recs[0].dataset] += 1
    best: float | None = None
    for r in recs:
        t = summary.per_model.setdefault(r.model_name, ModelTotals())
        t.n += 1
        t.correct += int(bool(r.is_correct))
        t.cost += r.cost
        if r.is_correct and (best is None or r.cost < best):
            best = r.cost
    if best is not None:
        summary.oracle_correct += 1
        summary.oracle_cost += best
    else:  # nobody right: the oracle takes the cheapest answer
        summary.oracle_cost += min(r.cost for r in recs)


def import_routerbench(
    paths: Sequence[str | Path],
    out: str | Path,
    pool_path: str | Path | None = None,
    limit_per_file: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> ImportSummary:
    """Import RouterBench CSVs into the cache file ``out``; returns the summary (see the module docstring)."""
    pool = load_pool(pool_path or default_pool_path())
    out = Path(out)
    summary = ImportSummary()
    present: set[tuple[str, str]] = set()
    appending = out.exists() and not overwrite
    if appending:
        for _, rec in iter_records(out):
            present.add(rec.key)
        target = out
    else:  # a new file, or --overwrite: written beside it and renamed into place only when the import succeeded
        target = out.with_name(f".{out.name}.importing")
        target.unlink(missing_ok=True)
    writer = None
    try:
        for recs in iter_routerbench(paths, pool=pool, limit_per_file=limit_per_file, seed=seed, summary=summary):
            for r in recs:
                if r.key in present:
                    summary.records_already_present += 1
                    continue
                if writer is None:  # opened at the first record: a failed import leaves no empty file
                    writer = RecordWriter(target, fsync_every=1000)
                writer.write(r)
                summary.records_written += 1
        if writer is not None:
            writer.close()
        if summary.records_written == 0 and summary.records_already_present == 0:
            raise RouterBenchImportError(
                f"nothing imported from {', '.join(map(str, paths))}: no complete row "
                f"({summary.rows_skipped} row(s) skipped); {out} is left as it was")
    except BaseException:
        if writer is not None:
            writer.close()
        if target != out:
            target.unlink(missing_ok=True)
        raise
    if target != out:
        os.replace(target, out)
    return summary
