"""RouterBench import: real costs and grades kept, the published figures reproduced, bad input named."""

from __future__ import annotations

import ast
import csv
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrouter_lite.cli import app
from xrouter_lite.importers import (
    ImportSummary,
    RouterBenchImportError,
    import_routerbench,
    iter_routerbench,
    task_for_eval,
)
from xrouter_lite.records import iter_records

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "examples" / "routerbench_sample.csv"
RB_FILES = ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv")


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        r = csv.reader(f)
        header = next(r)
        return header, [row for row in r]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_full_routerbench_reproduces_the_published_figures(shared_data, pool_rb):
    summary = ImportSummary()
    n_records = 0
    ids = set()
    for recs in iter_routerbench([shared_data / "routerbench" / n for n in RB_FILES], pool=pool_rb, summary=summary):
        n_records += len(recs)
        ids.add(recs[0].prompt_id)
        assert len(recs) == 11 and len({r.prompt_id for r in recs}) == 1
    assert summary.rows_read == 2225
    assert summary.rows_imported == 2205 == len(ids)
    assert summary.rows_skipped == 20
    assert n_records == 2205 * 11
    assert dict(summary.per_dataset) == {"arc-challenge": 1019, "mbpp": 299, "winogrande": 887}
    t = summary.per_model
    assert set(t) == set(pool_rb.ids)
    expected = {  # /work/shared/data/README.md
        "gpt-4-1106-preview": (0.879, 11.07),
        "mistralai/mixtral-8x7b-chat": (0.739, 0.55),
        "zero-one-ai/Yi-34B-Chat": (0.771, 0.73),
        "mistralai/mistral-7b-chat": (0.581, 0.18),
    }
    for model, (acc, cost) in expected.items():
        assert round(t[model].accuracy, 3) == acc, model
        assert round(t[model].cost, 2) == cost, model
    assert round(summary.oracle_correct / summary.rows_imported, 3) == 0.976
    assert round(summary.oracle_cost, 2) == 0.46
    # the 7 repeated sample_ids of arc-challenge all sit on incomplete rows, so none survives the skip
    assert summary.duplicate_ids == 0
    text = summary.format()
    assert "rows read: 2225; imported: 2205; skipped: 20" in text and "gpt-4-1106-preview" in text


def test_sample_import_writes_real_records(tmp_path, pool_rb):
    out = tmp_path / "cache.jsonl"
    s = import_routerbench([SAMPLE], out)
    assert s.rows_imported == 300 and s.records_written == 3300 and s.rows_skipped == 0
    recs = [r for _, r in iter_records(out)]
    assert len(recs) == 3300 and len({r.key for r in recs}) == 3300
    header, rows = _rows(SAMPLE)
    first = dict(zip(header, rows[0]))
    r0 = [r for r in recs if r.prompt_id == f"{first['eval_name']}-{first['sample_id']}"]
    assert {r.model_name for r in r0} == set(pool_rb.ids)
    for r in r0:
        m = r.model_name
        assert r.cost == float(first[m + "|total_cost"])  # the real recorded cost, unchanged
        assert r.is_correct is (first[m] == "1.0")
        assert repr([r.response]) == first[m + "|model_response"] or [r.response] == ast.literal_eval(first[m + "|model_response"])
        assert r.dataset == first["eval_name"] and r.task == task_for_eval(first["eval_name"])
        assert r.token_usage.prompt_tokens == 0 and r.token_usage.completion_tokens == 0 and r.error is None
        assert repr([r.prompt]) == first["prompt"] or [r.prompt] == ast.literal_eval(first["prompt"])
    by_task = {}
    for r in recs:
        by_task.setdefault(r.task, set()).add(r.reference)
    assert by_task["code"] == {""}  # mbpp: no reference to infer
    assert by_task["mc"] - {""} <= set("ABCDE") and len(by_task["mc"] - {""}) >= 2
    # re-running is a no-op: existing records are kept, none duplicated
    s2 = import_routerbench([SAMPLE], out)
    assert s2.records_written == 0 and s2.records_already_present == 3300
    assert sum(1 for _ in iter_records(out)) == 3300
    # --overwrite replaces the file (via a temporary file renamed into place)
    s3 = import_routerbench([SAMPLE], out, limit_per_file=10, overwrite=True)
    assert s3.records_written == 110 and sum(1 for _ in iter_records(out)) == 110
    assert not (tmp_path / "cache.jsonl.importing").exists()


def test_limit_per_file_and_seed_are_deterministic():
    def ids(**kw):
        return [recs[0].prompt_id for recs in iter_routerbench([SAMPLE], **kw)]

    assert len(ids(limit_per_file=20)) == 20
    first = ids(limit_per_file=20)
    a, b, c = ids(limit_per_file=20, seed=1), ids(limit_per_file=20, seed=1), ids(limit_per_file=20, seed=2)
    assert a == b and a != c and a != first and len(set(a)) == 20
    all_ids = ids()
    assert a == [i for i in all_ids if i in set(a)]  # sampled rows keep file order


def test_empty_cells_duplicates_and_bad_cells_are_counted(tmp_path):
    header, rows = _rows(SAMPLE)
    rows = [list(r) for r in rows[:6]]
    gpt35 = header.index("gpt-3.5-turbo-1106|model_response")
    rows[1][gpt35] = ""  # an empty cell -> row skipped
    rows[2][header.index("claude-v2")] = "0.5"  # not a 0/1 grade -> skipped
    rows[3][header.index("claude-v1|total_cost")] = "-1"  # negative cost -> skipped
    rows[4][header.index("claude-v1|model_response")] = "['unterminated"  # unreadable literal -> skipped
    rows.append(list(rows[0]))  # a repeated sample_id -> -dup1
    rows.append(list(rows[0]))  # and -dup2
    p = _write_csv(tmp_path / "rb.csv", header, rows)
    summary = ImportSummary()
    got = [recs[0].prompt_id for recs in iter_routerbench([p], summary=summary)]
    base = f"{rows[0][header.index('eval_name')]}-{rows[0][header.index('sample_id')]}"
    assert got == [base, f"{rows[5][header.index('eval_name')]}-{rows[5][header.index('sample_id')]}", base + "-dup1", base + "-dup2"]
    assert summary.duplicate_ids == 2
    assert summary.rows_read == 8 and summary.rows_skipped == 4
    reasons = " | ".join(summary.skipped)
    assert "gpt-3.5-turbo-1106|model_response" in reasons and "claude-v2 is '0.5'" in reasons
    assert "cost of claude-v1 is '-1'" in reasons and "unreadable response of claude-v1" in reasons
    assert all(str(p) in e for e in summary.skipped_examples)


def test_columns_must_be_pool_models(tmp_path, pool_rb, pool18):
    header, rows = _rows(SAMPLE)
    ren = {"claude-v2": "claude-v9", "claude-v2|model_response": "claude-v9|model_response", "claude-v2|total_cost": "claude-v9|total_cost"}
    p = _write_csv(tmp_path / "renamed.csv", [ren.get(h, h) for h in header], rows[:3])
    with pytest.raises(RouterBenchImportError, match=r"renamed.csv: column\(s\) 'claude-v9' are not models of the pool"):
        list(iter_routerbench([p], pool=pool_rb))
    assert len(list(iter_routerbench([p]))) == 3  # without a pool, any column names are accepted
    with pytest.raises(RouterBenchImportError, match="not models of the pool"):
        list(iter_routerbench([SAMPLE], pool=pool18))
    p2 = _write_csv(tmp_path / "nocost.csv", [h for h in header if h != "claude-v1|total_cost"], [])
    with pytest.raises(RouterBenchImportError, match=r"nocost.csv: model column 'claude-v1' has no 'claude-v1\|total_cost'"):
        list(iter_routerbench([p2]))
    p3 = _write_csv(tmp_path / "other.csv", ["a", "b"], [["1", "2"]])
    with pytest.raises(RouterBenchImportError, match="not a RouterBench CSV: missing column"):
        list(iter_routerbench([p3]))
    with pytest.raises(RouterBenchImportError, match="not found"):
        list(iter_routerbench([tmp_path / "nope.csv"]))


def test_cli_import(tmp_path, repo):
    runner = CliRunner()
    out = tmp_path / "c.jsonl"
    res = runner.invoke(app, ["import", "routerbench", str(SAMPLE), "--out", str(out), "--limit-per-file", "30", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "rows read: 300; imported: 30; skipped: 0; not sampled: 270" in res.output
    assert "records written: 330" in res.output and "oracle (cheapest correct)" in res.output
    assert sum(1 for _ in iter_records(out)) == 330
    res = runner.invoke(app, ["import", "routerbench", str(SAMPLE), "--out", str(out), "--pool", str(repo / "configs" / "pool.yaml")])
    assert res.exit_code == 2 and "not models of the pool" in res.output
    assert sum(1 for _ in iter_records(out)) == 330  # the failed run lost nothing


def test_eval_tasks():
    assert task_for_eval("arc-challenge") == "mc" and task_for_eval("winogrande") == "mc"
    assert task_for_eval("mbpp") == "code" and task_for_eval("gsm8k") == "gsm8k"
    assert task_for_eval("mmlu-abstract-algebra") == "mc"
    assert task_for_eval("mt-bench") is None
