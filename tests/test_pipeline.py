"""The one-command pipeline's stage bookkeeping: what is reused, resumed or redone."""

from __future__ import annotations

import json

import pytest

from xrouter_lite.pipeline import PipelineConfig, PipelineConfigError, prepare_train_dir
from xrouter_lite.train import RUN_CARD


def _router_dir(tmp_path, status=None, checkpoints=()):
    d = tmp_path / "router"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"old adapter")
    if status:
        (d / RUN_CARD).write_text(json.dumps({"status": status}), encoding="utf-8")
    for c in checkpoints:
        (d / c).mkdir()
    return d


def test_fresh_when_nothing_was_trained(tmp_path):
    assert prepare_train_dir(tmp_path / "router", force=False) == "fresh"


def test_a_completed_adapter_is_reused_and_kept(tmp_path):
    d = _router_dir(tmp_path, "completed", ["checkpoint-10"])
    assert prepare_train_dir(d, force=False) == "reuse"
    assert (d / "adapter_model.safetensors").read_bytes() == b"old adapter"


def test_an_interrupted_run_resumes_from_its_checkpoints(tmp_path):
    d = _router_dir(tmp_path, "interrupted", ["checkpoint-4"])
    assert prepare_train_dir(d, force=False) == "resume"


def test_force_retrains_even_over_checkpoints(tmp_path):
    # Regression: `run --force` used to stop at the trainer's "already holds checkpoints" refusal.
    d = _router_dir(tmp_path, "completed", ["checkpoint-1068"])
    said = []
    assert prepare_train_dir(d, force=True, say=said.append) == "fresh"
    assert not d.exists()
    assert "removing the previous training output" in said[0]


def test_pipeline_config_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("out_dir: x\ncache: {}\n", encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="p.yaml"):
        PipelineConfig.load(bad)
    bad.write_text("out_dir: x\nunknown_key: 1\ncache: {import_routerbench: [a.csv]}\n", encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="unknown_key"):
        PipelineConfig.load(bad)


def test_fit_head_needs_validation_questions(tmp_path):
    from xrouter_lite.pipeline import check_pipeline

    cfg = tmp_path / "p.yaml"
    cfg.write_text("out_dir: x\ncache: {import_routerbench: [a.csv]}\nfit_head: true\npairs: {eval_fraction: 0.2}\n",
                   encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="fit_head: needs validation questions: set pairs.val_fraction"):
        check_pipeline(cfg)
    cfg.write_text("out_dir: x\ncache: {import_routerbench: [a.csv]}\nhead_l2: 100\npairs: {val_fraction: 0.3}\n",
                   encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="head_l2: is the decision head's penalty: set fit_head: true"):
        check_pipeline(cfg)
    cfg.write_text("out_dir: x\ncache: {import_routerbench: [a.csv]}\nfit_head: true\nhead_l2: -1\n", encoding="utf-8")
    with pytest.raises(PipelineConfigError, match="head_l2"):
        check_pipeline(cfg)


@pytest.mark.parametrize("name", ["example_routerbench.yaml", "quality_routerbench.yaml"])
def test_shipped_pipeline_configs_load(name):
    from xrouter_lite.evaluate import EvalConfig
    from xrouter_lite.pairs import PairsConfig
    from xrouter_lite.train import TrainConfig

    cfg = PipelineConfig.load(f"configs/{name}")
    PairsConfig.from_dict(dict(cfg.pairs))
    TrainConfig.load(None, dict(cfg.train))
    if cfg.train_cuda:
        TrainConfig.load(None, dict(cfg.train_cuda))
    EvalConfig(test_cache="t.jsonl", **cfg.eval)
