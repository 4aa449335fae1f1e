"""An adapter trained from a local base model given as a relative path loads from any working directory
(issue 11 item 15): adapter_config.json records the base model's absolute path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "examples" / "routerbench_sample.csv"
POOL_RB = REPO / "configs" / "pool_routerbench.yaml"


def test_absolute_base_model_path_rewrites_only_local_folders(tmp_path, monkeypatch):
    from xrouter_lite.train import absolute_base_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "models/base", "r": 16}))
    absolute_base_model_path(ad, "models/base")
    cfg = json.loads((ad / "adapter_config.json").read_text())
    assert cfg == {"base_model_name_or_path": str((tmp_path / "models" / "base").resolve()), "r": 16}
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}))
    absolute_base_model_path(ad, "Qwen/Qwen2.5-1.5B-Instruct")  # a Hub id stays as it is
    assert json.loads((ad / "adapter_config.json").read_text())["base_model_name_or_path"] == "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.slow  # ~60 s on a busy 2-core CPU (a real 4-bit training step)
def test_trained_adapter_loads_from_another_directory(tmp_path, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xrouter_lite.assets import smollm2_path
    from xrouter_lite.importers import import_routerbench
    from xrouter_lite.pairs import PairsConfig, run_pairs
    from xrouter_lite.pool import load_pool
    from xrouter_lite.train import TrainConfig, train

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    src = smollm2_path()
    AutoModelForCausalLM.from_pretrained(str(src), num_hidden_layers=2, dtype=torch.float32).save_pretrained(work / "models" / "tiny")
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(work / "models" / "tiny")
    cache = work / "cache.jsonl"
    import_routerbench([SAMPLE], cache, pool_path=POOL_RB, limit_per_file=6)
    run_pairs(cache, load_pool(POOL_RB), PairsConfig(max_pairs_per_prompt=1, max_offered=2), out_dir=work)
    monkeypatch.chdir(work)
    cfg = TrainConfig(model_name_or_path="models/tiny", data_path="dpo_train_data.json", output_dir="router",
                      max_steps=1, save_steps=100, per_device_train_batch_size=1, gradient_accumulation_steps=1,
                      gradient_checkpointing=False, precompute_ref_log_probs=False, report_to=[], disable_tqdm=True)
    train(cfg, say=lambda *a: None)
    recorded = json.loads((work / "router" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded).is_absolute() and Path(recorded) == (work / "models" / "tiny").resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    base = AutoModelForCausalLM.from_pretrained(recorded, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(work / "router"))
    assert model.peft_config["default"].base_model_name_or_path == recorded
