"""Question files: GSM8K and generic JSONL, streamed, with errors that name file, line and field; shipped samples."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import pytest

from xrouter_lite.data import GSM8K_INSTRUCTION, DataFormatError, Question, load_questions
from xrouter_lite.grading import is_correct

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_gsm8k_sample_ships_and_loads_without_shared_data():
    qs = list(load_questions(EXAMPLES / "gsm8k_sample.jsonl"))
    assert len(qs) == 50
    q = qs[0]
    assert isinstance(q, Question)
    assert q.id == "gsm8k-gsm8k_sample-0" and q.task == "gsm8k" and q.dataset == "gsm8k"
    assert q.reference == "18"
    assert q.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert q.prompt.endswith("\n\n" + GSM8K_INSTRUCTION) and "#### <number>" in GSM8K_INSTRUCTION
    assert len({q.id for q in qs}) == 50
    # the reference is exactly what the gsm8k grader accepts
    assert all(is_correct("gsm8k", f"... so the answer is\n#### {q.reference}", q.reference) for q in qs)


def test_gsm8k_full_test_split(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    qs = list(load_questions(path))
    assert len(qs) == 1319
    assert qs[5].id == "gsm8k-test-5"
    raw = [json.loads(line) for line in path.open(encoding="utf-8")]
    assert all(q.reference == r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for q, r in zip(qs, raw))
    assert sorted({q.reference for q in qs if q.reference.startswith("-")}) == ["-10", "-3"]
    assert len(list(load_questions(path, limit=7))) == 7
    assert {q.dataset for q in load_questions(path, limit=3, dataset_name="gsm8k-test")} == {"gsm8k-test"}


def test_shipped_gsm8k_sample_is_the_unchanged_head_of_the_test_split(shared_data):
    src = (shared_data / "gsm8k" / "test.jsonl").read_bytes().splitlines(keepends=True)[:50]
    assert (EXAMPLES / "gsm8k_sample.jsonl").read_bytes() == b"".join(src)


def test_shipped_routerbench_sample_rows_are_unchanged_source_rows(shared_data):
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

    def rows(p: Path):
        with p.open(encoding="utf-8", newline="") as f:
            r = csv.reader(f)
            header = next(r)
            return header, [tuple(x) for x in r]

    header, sample = rows(EXAMPLES / "routerbench_sample.csv")
    src: set[str] = set()
    for name in ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv"):
        h, rs = rows(shared_data / "routerbench" / name)
        assert h == header
        src.update(hashlib.sha1(repr(r).encode()).hexdigest() for r in rs)
    assert len(sample) == 300 and len(set(sample)) == 300
    assert all(hashlib.sha1(repr(r).encode()).hexdigest() in src for r in sample)
    assert all(all(c != "" for c in r[1:]) for r in sample)  # complete rows only
    assert sum(1 for r in sample if r[3] == "mbpp") == 41
    assert (EXAMPLES / "routerbench_sample.csv").stat().st_size + (EXAMPLES / "gsm8k_sample.jsonl").stat().st_size < 2e6


def test_make_examples_is_deterministic(shared_data, tmp_path):
    import runpy

    mod = runpy.run_path(str(REPO / "scripts" / "make_examples.py"))
    mod["main"](["--shared", str(shared_data), "--out", str(tmp_path), "--rows", "300", "--seed", "0"])
    for name in ("routerbench_sample.csv", "gsm8k_sample.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes()
    assert mod["allocate"]({"a": 1019, "b": 299, "c": 887}, 300) == {"a": 138, "b": 41, "c": 121}


def test_generic_format_and_autodetect(tmp_path):
    p = _write(
        tmp_path / "mixed.jsonl",
        [
            {"id": "q1", "prompt": "2+2?", "reference": "4", "task": "gsm8k"},
            "",
            {"id": "q2", "prompt": "Capital of France?", "reference": "Paris", "task": "exact", "dataset": "geo"},
            {"question": "What is 3*3?", "answer": "3*3=9\n#### 9"},
            {"id": 7, "prompt": "Pick one", "reference": "B", "task": "mc"},
        ],
    )
    qs = list(load_questions(p))
    assert [q.id for q in qs] == ["q1", "q2", "gsm8k-mixed-3", "7"]
    assert [q.dataset for q in qs] == ["mixed", "geo", "gsm8k", "mixed"]
    assert qs[0].prompt == "2+2?"  # generic prompts are used as is
    assert qs[2].reference == "9" and qs[2].task == "gsm8k"
    assert [q.dataset for q in load_questions(p, dataset_name="x")] == ["x"] * 4
    with pytest.raises(DataFormatError, match=r"mixed.jsonl:1: missing field 'question'"):
        list(load_questions(p, fmt="gsm8k"))


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad.jsonl:2: not valid JSON"),
        ('["a list"]', r"bad.jsonl:2: expected a JSON object"),
        ('{"foo": 1}', r"bad.jsonl:2: cannot tell the format"),
        ('{"id": "x", "prompt": "p", "task": "gsm8k"}', r"bad.jsonl:2: missing field 'reference'"),
        ('{"id": "x", "prompt": "p", "reference": "1", "task": "poetry"}', r"bad.jsonl:2: field 'task': unknown task 'poetry'"),
        ('{"id": "x", "prompt": "", "reference": "1", "task": "exact"}', r"bad.jsonl:2: field 'prompt' is empty"),
        ('{"id": "x", "prompt": ["p"], "reference": "1", "task": "exact"}', r"bad.jsonl:2: field 'prompt' must be a string"),
        ('{"id": "ok", "prompt": "p", "reference": "1", "task": "exact"}', r"bad.jsonl:2: field 'id': duplicate id 'ok'"),
        ('{"question": "q", "answer": "no gold line"}', r"bad.jsonl:2: field 'answer': GSM8K answer has no '#### <number>'"),
        ('{"question": "q", "answer": "#### many"}', r"bad.jsonl:2: field 'answer': no number after '####'"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    p = _write(tmp_path / "bad.jsonl", [{"id": "ok", "prompt": "p", "reference": "1", "task": "exact"}, line])
    it = load_questions(p)
    assert next(it).id == "ok"  # streaming: the good first line comes before the error
    with pytest.raises(DataFormatError, match=message):
        next(it)


def test_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="question file not found"):
        list(load_questions(tmp_path / "missing.jsonl"))
    p = _write(tmp_path / "q.jsonl", [{"id": "a", "prompt": "p", "reference": "1", "task": "exact"}])
    with pytest.raises(ValueError, match="unknown question format 'csv'"):
        list(load_questions(p, fmt="csv"))
    assert list(load_questions(p, limit=0)) == []
