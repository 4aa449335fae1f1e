"""The whole pipeline in one command: cache (import or generate) -> pairs -> train -> evaluate.

``xrouter-lite run --config configs/example_routerbench.yaml`` runs stages 2-5 on the built-in example (a real
RouterBench sample shipped in ``data/examples/`` and the real SmolLM2-135M-Instruct on the CPU). Each stage is the
same function its own command calls; this module only wires their inputs and outputs together under ``out_dir``::

    out_dir/offline_cache.jsonl      stage 1 (imported or generated)
    out_dir/dpo_train_data.json      stage 2 (+ dpo_eval_data.json, test_cache.jsonl, pairs_report.json)
    out_dir/router/                  stage 3 (LoRA adapter, tokenizer, run_card.json, checkpoints, TensorBoard;
                                              decision_head.json with ``fit_head: true``)
    out_dir/eval/                    stage 4 (report.json, report.md, curve.png, decisions.jsonl)

Config YAML (every section holds the fields of that stage's own config; paths between stages are filled in)::

    out_dir: runs/example
    pool: configs/pool_routerbench.yaml
    cache: {import_routerbench: [data/examples/routerbench_sample.csv]}   # or {generate: {CacheConfig fields}}
    pairs: {PairsConfig fields}
    pairs_tokenizer: smollm2                 # counts and caps router prompt tokens (qwen2.5, smollm2, a path, none)
    train: {TrainConfig fields}              # on CUDA, `train_cuda` replaces it when given
    fit_head: false                          # true: after training, fit the decision head on pairs.val_fraction's
                                             # questions (`xrouter-lite fit-head`, offered as eval.offered_models)
    head_l2: null                            # the head's L2 penalty (`fit-head --l2`); null: chosen by 5-fold CV
    eval: {EvalConfig fields}
    smoke: {limit_per_file: 40, max_steps: 2, max_queries: 12, taus: [0, 1, 100]}   # used with --smoke

A stage whose output is already there is not redone (the cache import and generation resume by themselves; a
trained adapter with a completed run card is reused) unless ``--force``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .config import ConfigError, read_yaml_mapping, validate_config


class PipelineConfigError(ConfigError):
    pass


class PipelineStopped(RuntimeError):
    """A stage stopped early (the cache stage's budget): the stages after it were not run. The finished stages
    keep their outputs; the message (one line) says how to go on. The command line exits with code 75."""


class SmokeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit_per_file: int = 40
    max_steps: int = 2
    max_queries: int = 12
    taus: list[float] = Field(default_factory=lambda: [0.0, 1.0, 100.0])


class ImportSection(BaseModel):
    """``cache:`` when the cache is imported from RouterBench CSVs."""

    model_config = ConfigDict(extra="forbid")
    import_routerbench: list[str]
    limit_per_file: int | None = Field(None, ge=1)
    seed: int | None = 0


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
    fit_head: bool = False
    head_l2: float | None = Field(None, gt=0)
    eval: dict[str, Any] = Field(default_factory=dict)
    smoke: SmokeSettings = Field(default_factory=SmokeSettings)

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """The file's top level (``PipelineConfigError``: ``FILE: key: problem``). ``check_pipeline`` checks the
        stage sections."""
        data = read_yaml_mapping(path, "pipeline config", error=PipelineConfigError)
        if isinstance(data.get("cache"), dict) and isinstance(data["cache"].get("import_routerbench"), str):
            data["cache"] = {**data["cache"], "import_routerbench": [data["cache"]["import_routerbench"]]}
        cfg = validate_config(cls, data, path, error=PipelineConfigError)
        src = cfg.cache
        if ("import_routerbench" in src) == ("generate" in src):
            raise PipelineConfigError(path, "give exactly one of import_routerbench (CSV list) or generate", key="cache")
        return cfg


@dataclass
class PipelinePlan:
    """Every stage's config, checked before any stage starts."""

    config: PipelineConfig
    out: Path
    cache_import: ImportSection | None
    cache_generate: Any  # cache.CacheConfig | None
    pairs: Any  # pairs.PairsConfig
    train: Any  # train.TrainConfig (train_cuda's on a CUDA machine)
    eval: Any  # evaluate.EvalConfig


def check_pipeline(config_path: str | Path, *, smoke: bool = False, cuda: bool | None = None) -> PipelinePlan:
    """Load the pipeline config and build every stage's config from it, with the paths between stages filled in:
    every problem, in any section and at any depth, is a ``ConfigError`` naming the file and the key path
    (``FILE: eval.taus.0: ...``) before any stage has started."""
    from .cache import CacheConfig
    from .evaluate import ALL_BASELINES, EvalConfig
    from .pairs import PairsConfig
    from .pool import load_pool
    from .train import TrainConfig

    where = str(config_path)
    cfg = PipelineConfig.load(config_path)
    out = Path(cfg.out_dir)
    if smoke:
        out = out.with_name(out.name + "-smoke")
    cache_path = out / "offline_cache.jsonl"
    pool = load_pool(cfg.pool)

    imp = gen = None
    if "import_routerbench" in cfg.cache:
        imp = validate_config(ImportSection, cfg.cache, where, prefix="cache", error=PipelineConfigError)
        if smoke:
            imp = imp.model_copy(update={"limit_per_file": cfg.smoke.limit_per_file})
    else:
        extra = sorted(set(cfg.cache) - {"generate"})
        if extra:
            raise PipelineConfigError(where, "unknown key (with generate: only generate)", key=f"cache.{extra[0]}")
        g = cfg.cache["generate"]
        if not isinstance(g, dict):
            raise PipelineConfigError(where, "expected a mapping of cache settings", key="cache.generate")
        g = dict(g)
        g.setdefault("pool", str(cfg.pool))
        g["out"] = str(cache_path)
        if smoke:
            g["limit"] = min(int(g.get("limit") or 10**9), cfg.smoke.limit_per_file)
        gen = validate_config(CacheConfig, g, where, prefix="cache.generate", error=PipelineConfigError)

    pcfg = PairsConfig.from_dict(dict(cfg.pairs), where=where, prefix="pairs")

    use_cuda = _cuda() if cuda is None else cuda
    section = "train_cuda" if (cfg.train_cuda and use_cuda) else "train"
    tcfg = None
    for name in ("train", "train_cuda"):
        raw = getattr(cfg, name)
        if raw is None:
            continue
        tdict = dict(raw)
        tdict["data_path"] = str(out / "dpo_train_data.json")
        tdict["output_dir"] = str(out / "router")
        if smoke:
            tdict["max_steps"] = cfg.smoke.max_steps
            tdict["save_steps"] = max(cfg.smoke.max_steps, 1)
            tdict["per_device_train_batch_size"] = 1
            tdict["gradient_accumulation_steps"] = 1
        t = validate_config(TrainConfig, tdict, where, prefix=name, error=PipelineConfigError)
        if name == section:
            tcfg = t

    edict = dict(cfg.eval)
    edict.update(test_cache=str(out / "test_cache.jsonl"), train_cache=str(cache_path), pool=str(cfg.pool),
                 out_dir=str(out / "eval"), adapter=str(out / "router"))
    if smoke:
        edict["max_queries"] = cfg.smoke.max_queries
        edict["taus"] = cfg.smoke.taus
    ecfg = validate_config(EvalConfig, edict, where, prefix="eval", error=PipelineConfigError)
    bad = sorted(set(ecfg.baselines) - set(ALL_BASELINES))
    if bad:
        raise PipelineConfigError(where, f"unknown baseline(s) {bad}; known: {list(ALL_BASELINES)}", key="eval.baselines")
    for i, m in enumerate(ecfg.offered_models or []):
        if m not in pool:
            raise PipelineConfigError(where, f"model {m!r} is not in the pool {cfg.pool}", key=f"eval.offered_models.{i}")
    for i, m in enumerate(pcfg.offered_models or []):
        if m not in pool:
            raise PipelineConfigError(where, f"model {m!r} is not in the pool {cfg.pool}", key=f"pairs.offered_models.{i}")
    if cfg.head_l2 is not None and not cfg.fit_head:
        raise PipelineConfigError(where, "is the decision head's penalty: set fit_head: true as well", key="head_l2")
    if cfg.fit_head and not pcfg.val_fraction > 0:
        raise PipelineConfigError(where, "needs validation questions: set pairs.val_fraction (e.g. 0.3)", key="fit_head")
    if ecfg.default_model is not None and ecfg.default_model not in pool:
        raise PipelineConfigError(where, f"model {ecfg.default_model!r} is not in the pool {cfg.pool}", key="eval.default_model")
    return PipelinePlan(cfg, out, imp, gen, pcfg, tcfg, ecfg)


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


def fit_stage_head(plan: PipelinePlan, *, reuse: bool, say=print) -> None:
    """``xrouter-lite fit-head`` on the pairs stage's validation questions, offered exactly as the evaluation offers
    (its ``offered_models``, order, prompt cap, device and quantisation): the head is written next to the adapter,
    where evaluation and serving read it. A reused adapter keeps its head."""
    from .decision import HEAD_FILE, fit_head_from_cache
    from .pairs import VAL_CACHE_FILE

    adapter, ecfg = Path(plan.train.output_dir), plan.eval
    if reuse and (adapter / HEAD_FILE).exists():
        say(f"[3/4] head: reusing {adapter / HEAD_FILE} (--force refits)")
        return
    val = plan.out / VAL_CACHE_FILE
    say(f"[3/4] head: fitting the decision head on {val}")
    head, path = fit_head_from_cache(adapter, val, pool=plan.config.pool, offered=ecfg.offered_models,
                                     batch_size=ecfg.batch_size, device=ecfg.device, quantize=ecfg.quantize,
                                     max_prompt_tokens=ecfg.max_prompt_tokens, l2=plan.config.head_l2,
                                     say=say)  # HeadError names the file
    say(f"decision head: {len(head.models)} models, {head.info['n_questions']} validation questions, l2 {head.l2:g}; "
        f"wrote {path}")


def run_pipeline(config_path: str | Path, *, smoke: bool = False, force: bool = False, say=print) -> dict[str, Any]:
    """Run every stage; return the evaluation report (report.json's content) plus timings.

    Every section of the config is checked first (``check_pipeline``). A stage that stops early stops the
    pipeline: the cache stage's budget raises ``PipelineStopped``, Ctrl-C ``KeyboardInterrupt``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = check_pipeline(config_path, smoke=smoke)
    cfg = plan.config
    out = plan.out
    from .pairs import load_count_tokenizer

    try:  # a bad name fails here, before any stage
        pairs_tok = load_count_tokenizer(cfg.pairs_tokenizer)
    except Exception as e:  # OSError / ValueError from transformers, with a long text
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PipelineConfigError(config_path, f"cannot load the tokenizer {cfg.pairs_tokenizer!r}: {first}",
                                  key="pairs_tokenizer") from None
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    cache_path = out / "offline_cache.jsonl"

    # ---- stage 1: the offline cache ----
    t = time.time()
    if plan.cache_import is not None:
        from .importers import import_routerbench

        imp = plan.cache_import
        if force and cache_path.exists():
            cache_path.unlink()
        say(f"[1/4] cache: importing {', '.join(imp.import_routerbench)} -> {cache_path}")
        summary = import_routerbench(imp.import_routerbench, cache_path, pool_path=cfg.pool,
                                     limit_per_file=imp.limit_per_file, seed=imp.seed)
        say(summary.format())
    else:
        from .cache import print_summary, run_cache

        gen = plan.cache_generate
        say(f"[1/4] cache: calling every pool model on {gen.dataset} -> {cache_path}")
        csum = run_cache(gen)
        print_summary(csum)
        if csum.stopped == "interrupted":
            raise KeyboardInterrupt
        if csum.stopped == "budget":
            raise PipelineStopped(
                f"the cache stage stopped at its budget (${gen.budget_usd:g} for the whole cache file) with "
                f"{csum.not_scheduled} pair(s) not called; the later stages were not run: raise "
                f"cache.generate.budget_usd in {config_path} and run the same command again")
    timings["cache_s"] = time.time() - t

    # ---- stage 2: DPO pairs ----
    t = time.time()
    from .pairs import NoTrainingPairsError, print_report, run_pairs
    from .pool import load_pool

    pool = load_pool(cfg.pool)
    say(f"[2/4] pairs: {cache_path} -> {out / 'dpo_train_data.json'}")
    try:
        rep = run_pairs(cache_path, pool, plan.pairs, out_dir=out, tokenizer=pairs_tok,
                        tokenizer_name=cfg.pairs_tokenizer)
    except NoTrainingPairsError as e:
        print_report(e.report)
        raise
    print_report(rep)
    timings["pairs_s"] = time.time() - t

    # ---- stage 3: training ----
    t = time.time()
    from .train import train

    tcfg = plan.train
    action = prepare_train_dir(Path(tcfg.output_dir), force=force, say=say)
    if action == "reuse":
        say(f"[3/4] train: reusing the completed adapter in {tcfg.output_dir} (--force retrains)")
    else:
        how = " (resuming from the last checkpoint)" if action == "resume" else ""
        say(f"[3/4] train: QLoRA DPO of {tcfg.model_name_or_path} -> {tcfg.output_dir}{how}")
        result = train(tcfg, resume=action == "resume", say=say)
        if result.interrupted:
            raise KeyboardInterrupt
    timings["train_s"] = time.time() - t

    # ---- stage 3b: the decision head (fit-head) on the validation questions ----
    if cfg.fit_head:
        t = time.time()
        fit_stage_head(plan, reuse=action == "reuse", say=say)
        timings["head_s"] = time.time() - t

    # ---- stage 4: evaluation ----
    t = time.time()
    from .evaluate import evaluate

    ecfg = plan.eval
    say(f"[4/4] eval: the router and the baselines on the held-out prompts -> {ecfg.out_dir}")
    report = evaluate(ecfg, log=say)
    timings["eval_s"] = time.time() - t
    report["timings"] = timings
    say((Path(ecfg.out_dir) / "report.md").read_text(encoding="utf-8"))
    plot = Path(ecfg.out_dir) / "curve.png"
    say("stage times: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items()))
    if plot.exists():
        say(f"plot: {plot}")
    return report
