"""The offline cache's record format and its streaming reader / crash-safe writer.

One JSON object per line in ``offline_cache.jsonl``::

    {"prompt_id": "gsm8k-test-0", "dataset": "gsm8k", "task": "gsm8k", "prompt": "...", "reference": "72",
     "model_name": "gpt-4o-mini", "response": "...", "is_correct": true,
     "token_usage": {"prompt_tokens": 95, "completion_tokens": 180}, "cost": 0.000122,
     "latency_s": 1.8, "error": null}

``error`` is null on success; a record with an error is never an answer (``is_correct`` is null) and is
retried by the next run of the cache stage. Every stage reads the file line by line (``iter_records``), so a
cache of any size streams in constant memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO


class CacheFormatError(ValueError):
    """A cache line is malformed; the message names the file and the line."""


@dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class CacheRecord:
    prompt_id: str
    dataset: str
    prompt: str
    reference: str
    model_name: str
    response: str | None
    is_correct: bool | None
    token_usage: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    task: str | None = None
    # written by a cost-ordered traversal only (absent from a full traversal's lines): "cost-ordered" or "explore"
    # (an explored question, every model called); on the record of the answer that stopped a question, the dearer
    # models not called, with their expected cost in USD (they are unknown, never wrong)
    traversal: str | None = None
    skipped: dict[str, float] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.prompt_id, self.model_name)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        d = asdict(self)
        for k in ("traversal", "skipped"):  # full-traversal lines keep the original format
            if d[k] is None:
                del d[k]
        return json.dumps(d, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> CacheRecord:
        required = ("prompt_id", "dataset", "prompt", "reference", "model_name")
        missing = [k for k in required if k not in d]
        if missing:
            raise CacheFormatError(f"{where}: missing field(s) {', '.join(missing)}")
        usage = d.get("token_usage") or {}
        if not isinstance(usage, dict):
            raise CacheFormatError(f"{where}: field token_usage must be an object")
        cost = d.get("cost", 0.0)
        if cost is None:
            cost = 0.0
        if not isinstance(cost, (int, float)) or isinstance(cost, bool):
            raise CacheFormatError(f"{where}: field cost must be a number, got {cost!r}")
        is_correct = d.get("is_correct")
        if is_correct is not None and not isinstance(is_correct, bool):
            if is_correct in (0, 1):
                is_correct = bool(is_correct)
            else:
                raise CacheFormatError(f"{where}: field is_correct must be true, false or null, got {is_correct!r}")
        return cls(
            prompt_id=str(d["prompt_id"]),
            dataset=str(d["dataset"]),
            prompt=str(d["prompt"]),
            reference=str(d["reference"]),
            model_name=str(d["model_name"]),
            response=d.get("response"),
            is_correct=is_correct,
            token_usage=TokenUsage(
                prompt_tokens=int(usage.get("prompt_tokens", 0) or 0),
                completion_tokens=int(usage.get("completion_tokens", 0) or 0),
            ),
            cost=float(cost),
            latency_s=float(d.get("latency_s", 0.0) or 0.0),
            error=d.get("error"),
            task=d.get("task"),
            traversal=d.get("traversal"),
            skipped=_skipped(d.get("skipped"), where),
        )

    def validate_numbers(self, where: str = "") -> None:
        """Raise CacheFormatError for NaN/infinite/negative cost (the pairs stage calls this)."""
        if math.isnan(self.cost) or math.isinf(self.cost) or self.cost < 0:
            raise CacheFormatError(f"{where}: cost must be a finite number >= 0, got {self.cost!r}")


def _skipped(v: Any, where: str) -> dict[str, float] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in v.values()):
        raise CacheFormatError(f"{where}: field skipped must map model names to expected costs (USD)")
    return {str(m): float(c) for m, c in v.items()}


@dataclass
class ReadReport:
    """What ``iter_records`` saw besides good records."""

    torn_last_line: bool = False
    bad_lines: list[str] = field(default_factory=list)


def iter_records(
    path: str | Path, *, strict: bool = True, report: ReadReport | None = None
) -> Iterator[tuple[int, CacheRecord]]:
    """Yield ``(line_number, record)`` for each line of a cache file, streaming.

    A last line without its newline that does not parse is a write torn by a crash: it is dropped and noted in
    ``report.torn_last_line``, never fatal. Any other bad line raises CacheFormatError naming file and line when
    ``strict``; otherwise it is skipped and described in ``report.bad_lines``.
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    with path.open("r", encoding="utf-8") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                if not raw.endswith("\n"):
                    report.torn_last_line = True
                    return
                msg = f"{where}: not valid JSON ({e.msg})"
                if strict:
                    raise CacheFormatError(msg) from None
                report.bad_lines.append(msg)
                continue
            try:
                if not isinstance(obj, dict):
                    raise CacheFormatError(f"{where}: expected a JSON object")
                rec = CacheRecord.from_dict(obj, where)
            except CacheFormatError as e:
                if strict:
                    raise
                report.bad_lines.append(str(e))
                continue
            yield lineno, rec


def repair_torn_tail(path: str | Path) -> bool:
    """Cut a torn (newline-less, unparsable) last line off a cache file so appends start on a clean line.

    Returns True when something was cut. Only the torn tail is removed; every complete line is kept.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return False
        # find the start of the last line
        pos = size
        chunk = 65536
        start = 0
        while pos > 0:
            read = min(chunk, pos)
            pos -= read
            f.seek(pos)
            buf = f.read(read)
            idx = buf.rfind(b"\n")
            if idx != -1:
                start = pos + idx + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            json.loads(tail.decode("utf-8"))
            # a complete object that only lacks its newline: keep it, add the newline
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return False
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(start)
            return True


class RecordWriter:
    """Appends records one line at a time, flushed (and fsync'ed every ``fsync_every`` lines) so that a kill -9
    loses at most the records not yet written."""

    def __init__(self, path: str | Path, fsync_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._f: TextIO = self.path.open("a", encoding="utf-8")
        self._fsync_every = max(1, fsync_every)
        self._n = 0

    def write(self, rec: CacheRecord) -> None:
        self._f.write(rec.to_json() + "\n")
        self._f.flush()
        self._n += 1
        if self._n % self._fsync_every == 0:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
