"""`xrouter-lite eval` says what it drops and fails clearly (issue 11 item 8): a warning with the count for
test-cache models absent from the pool, a readable error when none is left, "not found" for a missing adapter,
and an error (not an empty report) for a baseline that needs the training cache without one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from xrouter_lite.cli import app
from xrouter_lite.importers import import_routerbench

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "examples" / "routerbench_sample.csv"
POOL_RB = REPO / "configs" / "pool_routerbench.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def test_cache(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "test_cache.jsonl"
    import_routerbench([SAMPLE], out, pool_path=POOL_RB, limit_per_file=20)
    return out


def _eval(*args: str):
    return runner.invoke(app, ["eval", "--no-plot", *args])


def test_models_missing_from_the_pool_are_dropped_with_a_warning(test_cache, tmp_path):
    full = yaml.safe_load(POOL_RB.read_text())
    keep = list(full["models"])[:3]
    small = tmp_path / "pool3.yaml"
    small.write_text(yaml.safe_dump({"models": {m: full["models"][m] for m in keep}}))
    res = _eval("--test-cache", str(test_cache), "--pool", str(small), "--baselines", "single,oracle",
                "-o", str(tmp_path / "e"))
    assert res.exit_code == 0, res.output
    warn = [line for line in res.output.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "160 record(s) of 8 model(s)" in warn[0] and "not in the pool" in warn[0], res.output


def test_no_model_left_is_a_readable_error(test_cache, tmp_path):
    res = _eval("--test-cache", str(test_cache), "--pool", str(REPO / "configs" / "pool.yaml"),
                "--baselines", "single", "-o", str(tmp_path / "e"))
    assert res.exit_code == 2
    assert "no usable prompt" in res.output and "not in the pool" in res.output
    assert "LoadStats(" not in res.output


def test_missing_adapter_is_not_found(test_cache, tmp_path):
    res = _eval("--test-cache", str(test_cache), "--pool", str(POOL_RB), "--adapter", str(tmp_path / "nonexistent"),
                "-o", str(tmp_path / "e"))
    assert res.exit_code == 2 and "adapter folder not found" in res.output, res.output
    assert "cannot tell the base model" not in res.output
    assert not (tmp_path / "e").exists()


def test_a_baseline_that_needs_the_training_cache_is_an_error_without_it(test_cache, tmp_path):
    res = _eval("--test-cache", str(test_cache), "--pool", str(POOL_RB), "--baselines", "knn", "-o", str(tmp_path / "e"))
    assert res.exit_code == 2 and "--train-cache" in res.output, res.output
    assert not (tmp_path / "e").exists()
    res = _eval("--test-cache", str(test_cache), "--pool", str(POOL_RB), "--baselines", "single,nearest",
                "-o", str(tmp_path / "e"))
    assert res.exit_code == 2 and "unknown baseline" in res.output
