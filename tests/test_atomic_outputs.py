"""A failed stage never damages what an earlier run wrote (issue 11 items 5 and 6): `pairs` commits all of its
outputs together, or nothing, and each run leaves exactly its own outputs; `import routerbench` that imports
nothing is an error that leaves the old file untouched and no stray file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xrouter_lite.cli import app
from xrouter_lite.importers import RouterBenchImportError, import_routerbench
from xrouter_lite.pairs import EVAL_FILE, REPORT_FILE, TEST_CACHE_FILE, TRAIN_FILE, NoTrainingPairsError, PairsConfig, run_pairs

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "examples" / "routerbench_sample.csv"
POOL_RB = REPO / "configs" / "pool_routerbench.yaml"
runner = CliRunner()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "offline_cache.jsonl"
    import_routerbench([SAMPLE], out, pool_path=POOL_RB, limit_per_file=40)
    return out


def _pairs(cache: Path, out: Path, *extra: str):
    return runner.invoke(app, ["pairs", str(cache), "--pool", str(POOL_RB), "-o", str(out), "--tokenizer", "none",
                               "--max-pairs-per-prompt", "2", *extra])


# ---- pairs --------------------------------------------------------------------------------------------------------


def test_a_failed_pairs_run_leaves_the_folder_byte_identical(cache, tmp_path):
    out = tmp_path / "d"
    res = _pairs(cache, out, "--eval-fraction", "0.2")
    assert res.exit_code == 0, res.output
    before = snapshot(out)
    assert set(before) == {TRAIN_FILE, EVAL_FILE, TEST_CACHE_FILE, REPORT_FILE}
    # the wrong pool: every line names an unknown model, no pair can be made
    res = runner.invoke(app, ["pairs", str(cache), "--pool", str(REPO / "configs" / "pool.yaml"), "-o", str(out),
                              "--tokenizer", "none"])
    assert res.exit_code == 1 and "nothing was written" in res.output and "wrong --pool?" in res.output
    assert snapshot(out) == before
    # a bad option fails before anything
    res = _pairs(cache, out, "--cost-unit", "dollars")
    assert res.exit_code == 2 and snapshot(out) == before
    # an error in the middle of the run (Ctrl-C here)
    calls = 0

    def stop():
        nonlocal calls
        calls += 1
        if calls == 20:
            raise KeyboardInterrupt

    from xrouter_lite.pool import load_pool

    with pytest.raises(KeyboardInterrupt):
        run_pairs(cache, load_pool(POOL_RB), PairsConfig(seed=9, eval_fraction=0.5), out_dir=out, on_prompt=stop)
    assert snapshot(out) == before


def test_each_run_leaves_exactly_its_own_outputs(cache, tmp_path):
    out = tmp_path / "d"
    assert _pairs(cache, out, "--eval-fraction", "0.2").exit_code == 0
    assert (out / TEST_CACHE_FILE).exists()
    (out / "my_notes.txt").write_text("not ours")
    res = _pairs(cache, out)  # no eval split now: the old held-out files would be stale (their prompts are trained on)
    assert res.exit_code == 0, res.output
    assert set(snapshot(out)) == {TRAIN_FILE, REPORT_FILE, "my_notes.txt"}
    assert not list(out.glob("*.tmp"))


def test_no_training_pair_is_an_error_that_writes_nothing(cache, tmp_path):
    from xrouter_lite.pool import load_pool

    out = tmp_path / "new"
    with pytest.raises(NoTrainingPairsError) as e:
        run_pairs(cache, load_pool(REPO / "configs" / "pool.yaml"), PairsConfig(), out_dir=out)
    assert e.value.report.pairs_train == 0
    assert not out.exists()  # not even an empty folder


# ---- import routerbench -------------------------------------------------------------------------------------------


def _header_only(tmp_path: Path) -> Path:
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    p = tmp_path / "header_only.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(header)
    return p


def test_import_of_nothing_is_an_error_and_leaves_the_file_untouched(cache, tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_bytes(cache.read_bytes())
    before = out.read_bytes()
    empty = _header_only(tmp_path)
    res = runner.invoke(app, ["import", "routerbench", str(empty), "-o", str(out), "--overwrite"])
    assert res.exit_code == 2 and "nothing imported" in res.output, res.output
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "header_only.csv"]  # no stray *.importing
    # into a new file: no 0-byte output is left behind
    new = tmp_path / "new.jsonl"
    with pytest.raises(RouterBenchImportError, match="nothing imported"):
        import_routerbench([empty], new, pool_path=POOL_RB)
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "header_only.csv"]


def test_a_failed_import_leaves_no_file(tmp_path):
    bad = tmp_path / "bad.csv"
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    with bad.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([h.replace("gpt-4-1106-preview", "gpt-9") for h in header])
    out = tmp_path / "c.jsonl"
    res = runner.invoke(app, ["import", "routerbench", str(SAMPLE), str(bad), "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_reimporting_is_still_a_no_op(cache, tmp_path):
    out = tmp_path / "c.jsonl"
    out.write_bytes(cache.read_bytes())
    s = import_routerbench([SAMPLE], out, pool_path=POOL_RB, limit_per_file=40)
    assert s.records_written == 0 and s.records_already_present > 0
    assert out.read_bytes() == cache.read_bytes()
