"""Question sets: ``load_questions(path)`` streams ``Question`` objects from a JSONL file.

Two formats, recognised by the fields of each line (``fmt="auto"``, the default) or forced with ``fmt=``:

- ``"gsm8k"``: the GSM8K release (openai/grade-school-math), ``{"question": ..., "answer": "...\\n#### 72"}``.
  id = ``gsm8k-<file stem>-<line index>`` (0-based physical line index, so ids are stable), reference = the
  normalised number after ``####`` ("1,000" -> "1000"), task = ``"gsm8k"``, and the prompt is the question
  followed by a blank line and ``GSM8K_INSTRUCTION`` (which asks for a final line ``#### <number>``, the form
  the gsm8k grader reads first).
- ``"generic"``: ``{"id": ..., "prompt": ..., "reference": ..., "task": ...}`` with an optional ``"dataset"``.
  ``task`` must be one of ``grading.TASKS``; the prompt is used as is.

``dataset`` is ``dataset_name`` when given, else the line's ``dataset`` field (generic), else ``"gsm8k"`` for
GSM8K lines and the file stem for generic lines. A bad line raises ``DataFormatError`` naming ``file:line`` and
the field; duplicate ids are an error too (the offline cache is keyed by id). Memory: one line at a time plus
the set of ids seen.

Example::

    for q in load_questions("data/examples/gsm8k_sample.jsonl", limit=10):
        print(q.id, q.reference)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .grading import TASKS, gsm8k_gold

__all__ = ["Question", "DataFormatError", "GSM8K_INSTRUCTION", "FORMATS", "load_questions", "gsm8k_prompt", "detect_format"]

GSM8K_INSTRUCTION = (
    "Solve the problem step by step. On the last line, write only the final numeric answer "
    "in the form '#### <number>'."
)
"""Appended (after a blank line) to every GSM8K question; the gsm8k grader reads the number after ``####`` first."""

FORMATS = ("auto", "gsm8k", "generic")


class DataFormatError(ValueError):
    """A question file line is malformed; the message names ``file:line`` and the field."""


@dataclass
class Question:
    id: str
    prompt: str
    reference: str
    task: str
    dataset: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def gsm8k_prompt(question: str) -> str:
    """The prompt sent to models for a GSM8K question: the question, a blank line, ``GSM8K_INSTRUCTION``."""
    return f"{question.strip()}\n\n{GSM8K_INSTRUCTION}"


def detect_format(obj: dict[str, Any]) -> str | None:
    """``"gsm8k"`` or ``"generic"`` from a line's fields, or None when neither fits."""
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    if "prompt" in obj and ("id" in obj or "reference" in obj or "task" in obj):
        return "generic"
    return None


def _req_str(obj: dict[str, Any], key: str, where: str, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DataFormatError(f"{where}: missing field {key!r}")
    v = obj[key]
    if isinstance(v, (int, float)) and not isinstance(v, bool) and key in ("id", "reference"):
        v = str(v)
    if not isinstance(v, str):
        raise DataFormatError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise DataFormatError(f"{where}: field {key!r} is empty")
    return v


def load_questions(
    path: str | Path,
    fmt: str = "auto",
    limit: int | None = None,
    dataset_name: str | None = None,
) -> Iterator[Question]:
    """Stream the questions of a JSONL file (see the module docstring for formats, ids and errors).

    ``limit`` stops after that many questions. ``dataset_name`` overrides every question's dataset.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown question format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"question file not found: {path}")
    if limit == 0:
        return
    seen: set[str] = set()
    n = 0
    with path.open("r", encoding="utf-8") as f:
        for index, raw in enumerate(f):
            if not raw.strip():
                continue
            where = f"{path}:{index + 1}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            kind = fmt if fmt != "auto" else detect_format(obj)
            if kind is None:
                raise DataFormatError(
                    f"{where}: cannot tell the format from fields {sorted(obj)}; expected GSM8K "
                    "{question, answer} or generic {id, prompt, reference, task}"
                )
            if kind == "gsm8k":
                q = _gsm8k_question(obj, where, path.stem, index, dataset_name)
            else:
                q = _generic_question(obj, where, path.stem, dataset_name)
            if q.id in seen:
                raise DataFormatError(f"{where}: field 'id': duplicate id {q.id!r}")
            seen.add(q.id)
            yield q
            n += 1
            if limit is not None and n >= limit:
                return


def _gsm8k_question(obj: dict[str, Any], where: str, stem: str, index: int, dataset_name: str | None) -> Question:
    question = _req_str(obj, "question", where)
    answer = _req_str(obj, "answer", where)
    try:
        gold = gsm8k_gold(answer)
    except ValueError as e:
        raise DataFormatError(f"{where}: field 'answer': {e}") from None
    return Question(
        id=f"gsm8k-{stem}-{index}",
        prompt=gsm8k_prompt(question),
        reference=gold,
        task="gsm8k",
        dataset=dataset_name or "gsm8k",
    )


def _generic_question(obj: dict[str, Any], where: str, stem: str, dataset_name: str | None) -> Question:
    qid = _req_str(obj, "id", where)
    prompt = _req_str(obj, "prompt", where)
    reference = _req_str(obj, "reference", where, allow_empty=True)
    task = _req_str(obj, "task", where)
    if task not in TASKS:
        raise DataFormatError(f"{where}: field 'task': unknown task {task!r} (known: {', '.join(TASKS)})")
    dataset = dataset_name or (obj.get("dataset") if isinstance(obj.get("dataset"), str) and obj.get("dataset") else stem)
    return Question(id=qid, prompt=prompt, reference=reference, task=task, dataset=dataset)
