"""The whole pipeline in one command: cache (import or generate) -> pairs -> train -> evaluate.

``xrouter-lite run --config configs/example_routerbench.yaml`` runs stages 2-5 on the built-in example (a real
RouterBench sample shipped in ``data/examples/`` and the real SmolLM2-135M-Instruct on the CPU). Each stage is the
same function its own command calls; this module only wires their inputs and outputs together under ``out_dir``::

    out_dir/offline_cache.jsonl      stage 1 (imported or generated)
    out_dir/dpo_train_data.json      stage 2 (+ dpo_eval_data.json, test_cache.jsonl, pairs_report.json)
    out_dir/router/                  stage 3 (LoRA adapter, tokenizer, run_card.json, checkpoints, TensorBoard)
    out_dir/eval/                    stage 4 (report.json, report.md, curve.png, decisions.jsonl)

Config YAML (every section holds the fields of that stage's own config; paths between stages are filled in)::

    out_dir: runs/example
    pool: configs/pool_routerbench.yaml
    cache: {import_routerbench: [data/examples/routerbench_sample.csv]}   # or {generate: {CacheConfig fields}}
    pairs: {PairsConfig fields}
    pairs_tokenizer: smollm2                 # counts and caps router prompt tokens (qwen2.5, smollm2, a path, none)
    train: {TrainConfig fields}              # on CUDA, `train_cuda` replaces it when given
    eval: {EvalConfig fields}
    smoke: {limit_per_file: 40, max_steps: 2, max_queries: 12, taus: [0, 1, 100]}   # used with --smoke

A stage whose output is already there is not redone (the cache import and generation resume by themselves; a
trained adapter with a completed run card is reused) unless ``--force``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class PipelineConfigError(ValueError):
    pass


class SmokeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit_per_file: int = 40
    max_steps: int = 2
    max_queries: int = 12
    taus: list[float] = Field(default_factory=lambda: [0.0, 1.0, 100.0])


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "pipeline"
    out_dir: Path = Path("runs/example")
    pool: Path = Path("configs/pool_routerbench.yaml")
    cache: dict[str, Any] = Field(default_factory=dict)
    pairs: dict[str, Any] = Field(default_factory=dict)
    pairs_tokenizer: str = "smollm2"
    train: dict[str, Any] = Field(default_factory=dict)
    train_cuda: dict[str, Any] | None = None
    eval: dict[str, Any] = Field(default_factory=dict)
    smoke: SmokeSettings = Field(default_factory=SmokeSettings)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        path = Path(path)
        if not path.exists():
            raise PipelineConfigError(f"pipeline config not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise PipelineConfigError(f"{path}: expected a mapping")
        try:
            cfg = cls(**data)
        except Exception as e:  # pydantic ValidationError: name the file
            raise PipelineConfigError(f"{path}: {e}") from None
        src = cfg.cache
        if ("import_routerbench" in src) == ("generate" in src):
            raise PipelineConfigError(f"{path}: cache: give exactly one of import_routerbench (CSV list) or generate")
        return cfg


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def prepare_train_dir(router_dir: Path, *, force: bool, say=print) -> str:
    """What stage 3 does with an existing output folder: ``"reuse"`` a completed adapter, ``"resume"`` from the last
    checkpoint of an interrupted run, or train ``"fresh"``. With ``force`` a previous folder is removed first (the
    user asked for the stage to be redone; the trainer itself never overwrites checkpoints)."""
    import shutil

    from .train import latest_checkpoint, read_run_card

    if force and router_dir.exists():
        say(f"--force: removing the previous training output {router_dir}")
        shutil.rmtree(router_dir)
    if not router_dir.exists():
        return "fresh"
    if (read_run_card(router_dir) or {}).get("status") == "completed":
        return "reuse"
    # the trainer's own test: it refuses a folder with a checkpoint unless asked to resume from it
    return "resume" if latest_checkpoint(router_dir) is not None else "fresh"


def run_pipeline(config_path: str | Path, *, smoke: bool = False, force: bool = False, say=print) -> dict[str, Any]:
    """Run every stage; return the evaluation report (report.json's content) plus timings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = PipelineConfig.load(config_path)
    out = Path(cfg.out_dir)
    if smoke:
        out = out.with_name(out.name + "-smoke")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cache_path = out / "offline_cache.jsonl"

    # ---- stage 1: the offline cache ----
    t = time.time()
    if "import_routerbench" in cfg.cache:
        from .importers import import_routerbench

        csvs = cfg.cache["import_routerbench"]
        csvs = [csvs] if isinstance(csvs, str) else list(csvs)
        limit = cfg.smoke.limit_per_file if smoke else cfg.cache.get("limit_per_file")
        if force and cache_path.exists():
            cache_path.unlink()
        say(f"[1/4] cache: importing {', '.join(csvs)} -> {cache_path}")
        summary = import_routerbench(csvs, cache_path, pool_path=cfg.pool, limit_per_file=limit,
                                     seed=cfg.cache.get("seed", 0))
        say(summary.format())
    else:
        from .cache import CacheConfig, run_cache

        gen = dict(cfg.cache["generate"])
        gen.setdefault("pool", str(cfg.pool))
        gen["out"] = str(cache_path)
        if smoke:
            gen["limit"] = min(int(gen.get("limit") or 10**9), cfg.smoke.limit_per_file)
        say(f"[1/4] cache: calling every pool model on {gen.get('dataset')} -> {cache_path}")
        run_cache(CacheConfig(**gen))
    timings["cache_s"] = time.time() - t

    # ---- stage 2: DPO pairs ----
    t = time.time()
    from .pairs import PairsConfig, load_count_tokenizer, print_report, run_pairs
    from .pool import load_pool

    pool = load_pool(cfg.pool)
    pcfg = PairsConfig.from_dict(dict(cfg.pairs))
    say(f"[2/4] pairs: {cache_path} -> {out / 'dpo_train_data.json'}")
    rep = run_pairs(cache_path, pool, pcfg, out_dir=out, tokenizer=load_count_tokenizer(cfg.pairs_tokenizer),
                    tokenizer_name=cfg.pairs_tokenizer)
    print_report(rep)
    if rep.pairs_train == 0:
        raise PipelineConfigError("the pairs stage produced no training pair (see its report above)")
    timings["pairs_s"] = time.time() - t

    # ---- stage 3: training ----
    t = time.time()
    from .train import TrainConfig, train

    tdict = dict(cfg.train_cuda if (cfg.train_cuda and _cuda()) else cfg.train)
    tdict["data_path"] = str(out / "dpo_train_data.json")
    tdict["output_dir"] = str(out / "router")
    if smoke:
        tdict["max_steps"] = cfg.smoke.max_steps
        tdict["save_steps"] = max(cfg.smoke.max_steps, 1)
        tdict["per_device_train_batch_size"] = 1
        tdict["gradient_accumulation_steps"] = 1
    tcfg = TrainConfig.load(None, tdict)
    action = prepare_train_dir(Path(tdict["output_dir"]), force=force, say=say)
    if action == "reuse":
        say(f"[3/4] train: reusing the completed adapter in {tdict['output_dir']} (--force retrains)")
    else:
        how = " (resuming from the last checkpoint)" if action == "resume" else ""
        say(f"[3/4] train: QLoRA DPO of {tcfg.model_name_or_path} -> {tdict['output_dir']}{how}")
        result = train(tcfg, resume=action == "resume", say=say)
        if result.interrupted:
            raise KeyboardInterrupt
    timings["train_s"] = time.time() - t

    # ---- stage 4: evaluation ----
    t = time.time()
    from .evaluate import EvalConfig, evaluate

    edict = dict(cfg.eval)
    edict.update(test_cache=str(out / "test_cache.jsonl"), train_cache=str(cache_path), pool=str(cfg.pool),
                 out_dir=str(out / "eval"), adapter=str(out / "router"))
    if smoke:
        edict["max_queries"] = cfg.smoke.max_queries
        edict["taus"] = cfg.smoke.taus
    say(f"[4/4] eval: the router and the baselines on the held-out prompts -> {edict['out_dir']}")
    report = evaluate(EvalConfig(**edict), log=say)
    timings["eval_s"] = time.time() - t
    report["timings"] = timings
    say((Path(edict["out_dir"]) / "report.md").read_text(encoding="utf-8"))
    plot = Path(edict["out_dir"]) / "curve.png"
    say(f"stage times: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    if plot.exists():
        say(f"plot: {plot}")
    return report
