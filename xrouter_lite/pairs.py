"""Stage 2: DPO preference pairs from the offline cache.

    xrouter-lite pairs outputs/offline_cache.jsonl --pool configs/pool_routerbench.yaml --eval-fraction 0.2
    # or: python scripts/preprocess_dpo.py outputs/offline_cache.jsonl ...

reads ``offline_cache.jsonl`` (one answer of one model to one prompt per line) and writes, in ``--out-dir``:

- ``dpo_train_data.json``: JSON Lines, one preference pair per line, in TRL's conversational preference format
  (``prompt`` messages, ``chosen`` / ``rejected`` assistant messages, ``tools`` as a JSON string) built by
  ``prompting.dpo_example``, with the extra columns ``prompt_id, dataset, offered_models, chosen_model,
  rejected_model, reward_chosen, reward_rejected, cost_chosen, cost_rejected``.
  ``datasets.load_dataset("json", data_files=...)`` loads it and TRL's ``DPOTrainer`` trains on it as it is
  (with a tools-aware chat template such as Qwen2.5's; for SmolLM2, whose template drops ``tools=``, render with
  ``prompting.render_prompt``, as the training stage does).
- ``dpo_eval_data.json``: the same for the held-out prompts (``--eval-fraction``), and ``test_cache.jsonl``: the
  held-out prompts' cache lines, verbatim, for the evaluation stage. A prompt is never on both sides.
- ``pairs_report.json``: what was read, skipped (by reason, with line numbers), paired and offered.

How pairs are made, per prompt: the models with a valid (non-errored) answer are the candidates. A subset of them
is offered (``subset_mode``: ``uniform`` size in [min_offered, max_offered], ``per-tier`` the same size drawn
round-robin over the pool's tiers, or ``full``; ``subsets_per_prompt`` distinct subsets), listed in the prompt in
a seeded random order. Each offered model gets the reward of ``reward.py``; pairs (A, B) with
R(A) > R(B) + margin are formed by ``strategy`` (``best-vs-rest``, ``all``, ``best-vs-worst``) and capped at
``max_pairs_per_prompt`` per router prompt (prompt x offered subset) by a seeded sample. ``all`` is the default: on
RouterBench's full training split a router trained on ``best-vs-rest`` pairs (only the cheapest correct model is
ever chosen) collapsed onto the model most often cheapest-correct and landed below the single models' hull, while
``all`` (every better model over every worse one) landed above it (docs/BENCHMARKS.md, "Quality check"). A subset where every
offered model is wrong, or whose rewards all lie within the margin (a tie), gives no pair and is counted.
Everything random is seeded per prompt id, so the output does not depend on the order of the cache lines.

Bad input (missing fields, duplicate (prompt_id, model_name), NaN/negative cost, a model not in the pool, a null
``is_correct`` without an error, one prompt id with two different prompt texts) is reported with file and line:
``strict`` stops at the first, the default skips the line and counts it by reason (of two answers to one
(prompt, model), the last is kept and the earlier one counted, as ``cache.latest_records`` reads them). An errored
record followed by a successful retry of the same (prompt, model) is not a duplicate: the answer replaces the error.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import COMMAND_LINE, read_yaml_mapping, validate_config
from .pool import Pool
from .prompting import DEFAULT_MAX_PROMPT_TOKENS, PromptTooLongError, build_router_prompt, dpo_example, encode_prompt
from .records import CacheFormatError, ReadReport, iter_records
from .reward import RewardConfig, offered_rewards, reward

Strategy = Literal["best-vs-rest", "all", "best-vs-worst"]
SubsetMode = Literal["uniform", "per-tier", "full"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
SUBSET_MODES: tuple[str, ...] = get_args(SubsetMode)

TRAIN_FILE = "dpo_train_data.json"
EVAL_FILE = "dpo_eval_data.json"
TEST_CACHE_FILE = "test_cache.jsonl"
VAL_CACHE_FILE = "val_cache.jsonl"
REPORT_FILE = "pairs_report.json"
OUTPUT_FILES = (TRAIN_FILE, EVAL_FILE, TEST_CACHE_FILE, VAL_CACHE_FILE, REPORT_FILE)  # what a run writes; each run leaves exactly its own
MAX_EXAMPLES = 20  # skipped-line messages kept in the report


class PairsInputError(CacheFormatError):
    """Bad cache input in strict mode; the message names the file and the line."""


class PairsConfig(BaseModel):
    """Everything that decides which pairs are made. Loadable from YAML (``configs/pairs.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    reward: RewardConfig = Field(default_factory=RewardConfig)
    strategy: Strategy = "all"
    margin: float = Field(0.01, ge=0, description="a pair needs R(chosen) > R(rejected) + margin")
    max_pairs_per_prompt: int | None = Field(8, ge=1, description="cap per router prompt (prompt x subset)")
    seed: int = 0
    subset_mode: SubsetMode = "uniform"
    min_offered: int = Field(2, ge=2)
    max_offered: int | None = Field(None, ge=2, description="None: every model with a valid answer")
    subsets_per_prompt: int = Field(1, ge=1)
    shuffle_offered: bool = True
    offered_models: list[str] | None = Field(
        None, description="draw the offered subsets from these models only (None: the whole pool); with "
        "subset_mode full and shuffle_offered false every router prompt offers exactly them, in this order (the "
        "evaluation's offered_models: one static prompt prefix, shared by the pairs of a batch)"
    )
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    val_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="share of the training-side prompts kept out of the pairs into val_cache.jsonl (for fitting the "
        "router's decision head: `xrouter-lite fit-head`); drawn after the held-out split, never from it",
    )
    max_prompt_tokens: int | None = Field(DEFAULT_MAX_PROMPT_TOKENS, ge=1)
    strict: bool = False

    @model_validator(mode="after")
    def _sizes(self) -> PairsConfig:
        if self.max_offered is not None and self.max_offered < self.min_offered:
            raise ValueError(f"max_offered ({self.max_offered}) is below min_offered ({self.min_offered})")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> PairsConfig:
        """Load a YAML config; ``overrides`` (None values ignored) win over the file. Reward keys may be given
        flat as ``k``, ``lam``, ``cost_max``, ``cost_unit``. Errors: ``config.ConfigError`` (``FILE: key: problem``)."""
        return cls.from_dict(read_yaml_mapping(path, "pairs config"), where=path, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, *, where: str | Path = COMMAND_LINE, prefix: str = "",
                  **overrides: Any) -> PairsConfig:
        """The config from a mapping (a YAML file's content, or the ``pairs:`` section of a pipeline config);
        unknown keys are refused at every depth (``reward.lamda`` too)."""
        data = dict(data or {})
        reward = data.get("reward")
        reward = dict(reward) if isinstance(reward, dict) else ({} if reward is None else reward)
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("k", "lam", "cost_max", "cost_unit") and isinstance(reward, dict):
                reward[key] = value
            else:
                data[key] = value
        data["reward"] = reward
        return validate_config(cls, data, where, prefix)


def _pretty(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors()
    )


# ---- reading the cache --------------------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """One model's answer to one prompt, as little as the pairs need (a small tuple: caches of 100k+ prompts fit)."""

    correct: bool | None  # None: the call errored
    cost: float
    lineno: int


@dataclass
class PromptGroup:
    """One prompt's text (kept once) and each model's outcome (small tuples; no response text)."""

    dataset: str
    text: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    traversal: str | None = None  # None: a full traversal's row; "cost-ordered" or "explore" (xrouter_lite.traversal)
    skipped: dict[str, float] | None = None  # cost-ordered: dearer models not called -> expected cost (USD)

    def valid(self) -> dict[str, tuple[bool, float]]:
        return {m: (o.correct, o.cost) for m, o in self.outcomes.items() if o.correct is not None}

    def unknown(self) -> dict[str, float]:
        """The models a cost-ordered traversal skipped (no label: unknown, never wrong), with their expected cost."""
        if not self.skipped:
            return {}
        return {m: c for m, c in self.skipped.items() if m not in self.outcomes or self.outcomes[m].correct is None}


@dataclass
class InputStats:
    lines_with_records: int = 0
    records_used: int = 0
    errored_calls: int = 0
    retried_errors_replaced: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    torn_last_line: bool = False


def _skip(stats: InputStats, strict: bool, reason: str, msg: str) -> None:
    if strict:
        raise PairsInputError(msg + " (run without --strict to skip such lines and count them)")
    stats.skipped[reason] += 1
    if len(stats.examples) < MAX_EXAMPLES:
        stats.examples.append(msg)


def load_groups(path: str | Path, pool: Pool, *, strict: bool = False, stats: InputStats | None = None) -> dict[str, PromptGroup]:
    """Stream the cache into ``{prompt_id: PromptGroup}`` (first-seen order), validating every line."""
    stats = stats if stats is not None else InputStats()
    groups: dict[str, PromptGroup] = {}
    rr = ReadReport()
    try:
        for lineno, rec in iter_records(path, strict=strict, report=rr):
            stats.lines_with_records += 1
            where = f"{path}:{lineno}"
            if rec.model_name not in pool:
                _skip(stats, strict, "unknown_model", f"{where}: model {rec.model_name!r} is not in the pool {pool.source}")
                continue
            if rec.error is None:
                try:
                    rec.validate_numbers(where)
                except CacheFormatError as e:
                    _skip(stats, strict, "bad_cost", str(e))
                    continue
                if rec.is_correct is None:
                    _skip(stats, strict, "no_correctness", f"{where}: is_correct is null but error is not set")
                    continue
            g = groups.get(rec.prompt_id)
            if g is None:
                g = groups[rec.prompt_id] = PromptGroup(dataset=rec.dataset, text=rec.prompt)
            elif g.text != rec.prompt:
                _skip(stats, strict, "prompt_mismatch",
                      f"{where}: prompt_id {rec.prompt_id!r} has a different prompt text than its first line")
                continue
            if rec.traversal is not None and g.traversal != "cost-ordered":
                g.traversal = rec.traversal
            if rec.skipped and rec.error is None and rec.is_correct:
                g.skipped = {m: c for m, c in rec.skipped.items() if m in pool}
            new = Outcome(None if rec.error is not None else rec.is_correct, rec.cost, lineno)
            old = g.outcomes.get(rec.model_name)
            if old is not None:
                if old.correct is None and new.correct is not None:  # a successful retry of an errored call
                    stats.retried_errors_replaced += 1
                    stats.errored_calls -= 1
                elif new.correct is None:
                    if old.correct is None:  # a newer error for a still-unanswered pair: keep the newest
                        g.outcomes[rec.model_name] = new
                    continue  # an error after an answer changes nothing
                else:  # two answers: bad input; like cache.latest_records, the last one is kept
                    _skip(stats, strict, "duplicate",
                          f"{where}: duplicate (prompt_id, model_name) = ({rec.prompt_id!r}, {rec.model_name!r}), "
                          f"also on line {old.lineno}; the last answer is kept")
                    g.outcomes[rec.model_name] = new
                    continue
            if new.correct is None:
                stats.errored_calls += 1
            g.outcomes[rec.model_name] = new
    except CacheFormatError as e:
        if isinstance(e, PairsInputError):
            raise
        raise PairsInputError(str(e) + " (run without --strict to skip such lines and count them)") from None
    for msg in rr.bad_lines:
        stats.skipped["malformed"] += 1
        if len(stats.examples) < MAX_EXAMPLES:
            stats.examples.append(msg)
    stats.torn_last_line = rr.torn_last_line
    stats.records_used = sum(len(g.outcomes) for g in groups.values())
    return groups


# ---- offered subsets, pairs, split ----------------------------------------------------------------------------


def prompt_rng(seed: int, prompt_id: str, salt: str = "") -> random.Random:
    """A generator seeded by (seed, prompt id): results do not depend on the order of the cache lines."""
    return random.Random(f"{seed}\x1f{prompt_id}\x1f{salt}")


def sample_offered(candidates: list[str], pool: Pool, cfg: PairsConfig, rng: random.Random) -> list[str]:
    """One offered subset of ``candidates`` (models with a valid answer), at least 2 models."""
    n = len(candidates)
    if n < 2:
        return []
    if cfg.subset_mode == "full":
        chosen = list(candidates)
    else:
        hi = n if cfg.max_offered is None else min(cfg.max_offered, n)
        lo = min(cfg.min_offered, hi)
        size = rng.randint(lo, hi)
        if cfg.subset_mode == "uniform":
            chosen = rng.sample(candidates, size)
        else:  # per-tier: round-robin over the tiers (in random order), a random model of each tier per turn
            by_tier: dict[str, list[str]] = {}
            for m in candidates:
                by_tier.setdefault(pool.get(m).tier, []).append(m)
            tiers = sorted(by_tier)
            rng.shuffle(tiers)
            for t in tiers:
                rng.shuffle(by_tier[t])
            chosen = []
            while len(chosen) < size:
                for t in tiers:
                    if by_tier[t] and len(chosen) < size:
                        chosen.append(by_tier[t].pop())
    if cfg.shuffle_offered:
        rng.shuffle(chosen)
    else:  # the candidates' order: the pool's, or pairs.offered_models'
        order = {m: i for i, m in enumerate(candidates)}
        chosen.sort(key=order.__getitem__)
    return chosen


def make_pairs(
    rewards: dict[str, float],
    costs: dict[str, float],
    strategy: str,
    margin: float,
    cap: int | None,
    rng: random.Random,
) -> list[tuple[str, str]]:
    """Pairs (chosen, rejected) with R(chosen) > R(rejected) + margin among the offered models.

    The best model is the highest reward (ties: the cheaper, then the model id); the worst, for ``best-vs-worst``,
    the lowest reward (ties: a seeded random one). Over ``cap`` pairs, a seeded random sample is kept.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if len(rewards) < 2:
        return []
    models = sorted(rewards)
    best = min(models, key=lambda m: (-rewards[m], costs[m], m))
    if strategy == "best-vs-rest":
        pairs = [(best, m) for m in models if m != best and rewards[best] > rewards[m] + margin]
    elif strategy == "all":
        pairs = [(a, b) for a in models for b in models if rewards[a] > rewards[b] + margin]
    else:
        low = min(rewards.values())
        worst = rng.choice([m for m in models if rewards[m] == low])
        pairs = [(best, worst)] if rewards[best] > rewards[worst] + margin else []
    if cap is not None and len(pairs) > cap:
        keep = set(rng.sample(range(len(pairs)), cap))
        pairs = [p for i, p in enumerate(pairs) if i in keep]
    return pairs


def implied_pairs(
    rewards: dict[str, float], unknown_upper: dict[str, float], strategy: str, margin: float
) -> list[tuple[str, str]]:
    """The preferences over skipped (unknown) models that the known labels and the reward imply: a known model A
    beats a skipped model S when R(A) > R_max(S) + margin, R_max(S) being S's reward *were it correct* (at its
    expected cost). Under lambda > 0 a correct answer dominates the dearer models a cost-ordered traversal skipped
    once the cost gap passes the margin; with lambda = 0 nothing is implied. No pair *for* a skipped model is ever
    made (it may be wrong). ``best-vs-rest``: only the best known model's; ``all``: every known model's."""
    if not rewards or not unknown_upper:
        return []
    if strategy == "best-vs-rest":
        best = max(sorted(rewards), key=lambda m: rewards[m])
        winners = [best]
    else:
        winners = sorted(rewards)
    return [(a, s) for a in winners for s in sorted(unknown_upper) if rewards[a] > unknown_upper[s] + margin]


def check_strategy_for_partial_rows(cfg: PairsConfig, partial_prompts: int, source: str) -> None:
    """Refuse a strategy that needs labels a cost-ordered cache does not have (raises PairsInputError)."""
    if not partial_prompts:
        return
    if cfg.strategy == "best-vs-worst":
        raise PairsInputError(
            f"{source}: strategy best-vs-worst needs every question's worst model, but {partial_prompts} question(s) "
            "come from a cost-ordered traversal whose skipped (dearer) models were never called; use --strategy all "
            "(known and implied pairs only) or build the cache with --traversal full")
    if cfg.strategy == "best-vs-rest" and (cfg.reward.lam <= 0 or cfg.reward.cost_max <= 0):
        raise PairsInputError(
            f"{source}: strategy best-vs-rest with lambda {cfg.reward.lam:g} needs the labels of the models a "
            f"cost-ordered traversal skipped ({partial_prompts} question(s)): only lambda > 0 makes a cheaper correct "
            "answer beat them unseen; use --lambda > 0, --strategy all (known pairs only) or a full cache")


def split_prompt_ids(prompt_ids: Iterable[str], eval_fraction: float, seed: int) -> set[str]:
    """The held-out prompt ids: a seeded shuffle of the sorted ids, the first round(fraction x n)."""
    ids = sorted(set(prompt_ids))
    if eval_fraction <= 0 or not ids:
        return set()
    random.Random(f"split\x1f{seed}").shuffle(ids)
    n_eval = min(len(ids) - 1, max(1, round(eval_fraction * len(ids))))
    return set(ids[:n_eval])


def load_count_tokenizer(name: str | None):
    """The tokenizer that counts (and caps) prompt tokens: ``qwen2.5`` (exact, offline; xrouter_lite.qwen),
    ``smollm2`` (the local SmolLM2-135M-Instruct), a local folder / Hub name (transformers), or ``none``."""
    if name is None or name.lower() == "none":
        return None
    key = name.lower()
    if key in ("qwen2.5", "qwen2_5", "qwen"):
        from .qwen import qwen_tokenizer

        return qwen_tokenizer()
    from transformers import AutoTokenizer

    if key in ("smollm2", "smollm2-135m-instruct"):
        from .assets import smollm2_path

        return AutoTokenizer.from_pretrained(str(smollm2_path()))
    return AutoTokenizer.from_pretrained(name)


# ---- the run --------------------------------------------------------------------------------------------------


def _percentile(sorted_vals: list[int], q: float) -> int:
    if not sorted_vals:
        return 0
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[i]


def length_stats(lengths: list[int]) -> dict[str, int]:
    s = sorted(lengths)
    return {"n": len(s), "p50": _percentile(s, 50), "p95": _percentile(s, 95), "max": s[-1] if s else 0}


@dataclass
class PairsReport:
    cache: str
    config: dict[str, Any]
    lines_with_records: int = 0
    records_used: int = 0
    errored_calls_left_out: int = 0
    retried_errors_replaced: int = 0
    skipped_lines: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    torn_last_line: bool = False
    prompts_read: int = 0
    prompts_train: int = 0
    prompts_eval: int = 0
    prompts_val: int = 0
    prompts_too_few_models: int = 0
    prompts_with_pairs: int = 0
    router_prompts: int = 0
    router_prompts_with_pairs: int = 0
    no_pair: dict[str, int] = field(default_factory=dict)
    pairs_train: int = 0
    pairs_eval: int = 0
    pairs_correct_vs_wrong: int = 0
    pairs_both_correct: int = 0
    prompts_partial: int = 0  # rows of a cost-ordered traversal with skipped (unknown) models
    prompts_explored: int = 0  # rows of a cost-ordered run's exploration sample (every model called)
    eval_prompts_partial: int = 0  # held-out rows with unknown models: not fit for the evaluation's full rows
    pairs_by_kind: dict[str, int] = field(default_factory=dict)  # full_rows / partial_rows_known / implied_over_skipped
    skipped_models_unpaired: int = 0  # (router prompt, skipped model) with no implied pair: unknown, left out
    mean_cost_chosen_per_1k: float = 0.0  # USD per 1,000 queries, averaged over pairs
    mean_cost_rejected_per_1k: float = 0.0
    chosen_models: dict[str, int] = field(default_factory=dict)
    rejected_models: dict[str, int] = field(default_factory=dict)
    rejected_models_both_correct: dict[str, int] = field(default_factory=dict)  # who loses the cost pairs
    best_models: dict[str, int] = field(default_factory=dict)
    offered_sizes: dict[str, int] = field(default_factory=dict)
    tokenizer: str | None = None
    prompt_tokens: dict[str, int] | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def pairs_total(self) -> int:
        return self.pairs_train + self.pairs_eval

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs_total"] = self.pairs_total
        d["strategy"] = self.config.get("strategy")
        return d


class _AtomicLines:
    """Writes lines to ``.NAME.tmp`` beside ``NAME``; ``finish`` makes the temp file durable, ``commit_all``
    renames a whole run's temp files into place together, ``abort`` removes the temp file."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.f = self.tmp.open("w", encoding="utf-8")

    def write(self, line: str) -> None:
        self.f.write(line if line.endswith("\n") else line + "\n")

    def finish(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()

    def commit(self) -> None:
        self.finish()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


class NoTrainingPairsError(ValueError):
    """The run made no training pair: nothing was written (the folder is as it was). ``report`` says why."""

    def __init__(self, report: PairsReport):
        self.report = report
        super().__init__("no training pair was produced (see the report above); nothing was written")


def _remove_if_made(out_dir: str | Path | None, made: bool) -> None:
    if made and out_dir is not None:
        try:
            Path(out_dir).rmdir()  # only if still empty
        except OSError:
            pass


def _commit_all(out: Path, writers: list[_AtomicLines], outputs: tuple[str, ...]) -> None:
    """Put a finished run's files in place: every temp file renamed over its output, then the outputs of a previous
    run that this run does not make (e.g. an old ``test_cache.jsonl`` after a run without an eval split) removed,
    so the folder holds exactly this run's outputs. Called only when every temp file is complete and fsync'ed:
    the renames and removals follow one another within milliseconds."""
    made = {w.path.name for w in writers}
    for w in writers:
        os.replace(w.tmp, w.path)
    for name in outputs:
        if name not in made:
            (out / name).unlink(missing_ok=True)
    try:  # make the renames durable
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover (Windows, or a file system without directory fsync)
        pass


def run_pairs(
    cache_path: str | Path,
    pool: Pool,
    cfg: PairsConfig,
    out_dir: str | Path | None = None,
    tokenizer: Any = None,
    tokenizer_name: str | None = None,
    on_prompt: Callable[[], None] | None = None,
) -> PairsReport:
    """Make the pairs. With ``out_dir`` the files are written there (atomically); without, only the report is
    computed (benchmarks). With ``tokenizer`` each router prompt is rendered, counted and checked against
    ``cfg.max_prompt_tokens`` (too long: ``strict`` fails, else the router prompt is skipped and counted; nothing
    is ever truncated)."""
    cache_path = Path(cache_path)
    missing = [m for m in cfg.offered_models or [] if m not in pool]
    if missing:
        raise ValueError(f"pairs.offered_models: {missing} not in the pool {pool.source}")
    stats = InputStats()
    groups = load_groups(cache_path, pool, strict=cfg.strict, stats=stats)
    partial_ids = {pid for pid, g in groups.items() if g.unknown()}
    check_strategy_for_partial_rows(cfg, len(partial_ids), str(cache_path))
    eval_ids = split_prompt_ids(groups, cfg.eval_fraction, cfg.seed)
    # the validation part comes from the training side only (seeded like the held-out split, on what is left)
    val_ids = split_prompt_ids(set(groups) - eval_ids, cfg.val_fraction, cfg.seed)
    rep = PairsReport(cache=str(cache_path), config=cfg.model_dump(mode="json"), tokenizer=tokenizer_name)
    rep.lines_with_records = stats.lines_with_records
    rep.records_used = stats.records_used
    rep.errored_calls_left_out = stats.errored_calls
    rep.retried_errors_replaced = stats.retried_errors_replaced
    rep.skipped_lines = dict(stats.skipped)
    rep.skipped_examples = stats.examples
    rep.torn_last_line = stats.torn_last_line
    rep.prompts_read = len(groups)
    rep.prompts_eval = len(eval_ids)
    rep.prompts_val = len(val_ids)
    rep.prompts_train = len(groups) - len(eval_ids) - len(val_ids)
    rep.prompts_partial = len(partial_ids)
    rep.prompts_explored = sum(g.traversal == "explore" for g in groups.values())
    rep.eval_prompts_partial = len(partial_ids & eval_ids)
    kinds: Counter = Counter()
    unsettled = 0

    no_pair: Counter = Counter()
    chosen_c: Counter = Counter()
    rejected_c: Counter = Counter()
    rejected_cc: Counter = Counter()
    best_c: Counter = Counter()
    sizes: Counter = Counter()
    lengths: list[int] = []
    cost_sums = [0.0, 0.0]

    writers: dict[str, _AtomicLines] = {}
    made_dir = False
    if out_dir is not None:
        out = Path(out_dir)
        made_dir = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        writers["train"] = _AtomicLines(out / TRAIN_FILE)
        if eval_ids:
            writers["eval"] = _AtomicLines(out / EVAL_FILE)
            writers["test_cache"] = _AtomicLines(out / TEST_CACHE_FILE)
        if val_ids:
            writers["val_cache"] = _AtomicLines(out / VAL_CACHE_FILE)
    try:
        for pid, g in groups.items():
            if on_prompt is not None:
                on_prompt()
            if pid in val_ids:  # no pair: its cache lines go to val_cache.jsonl
                continue
            valid = g.valid()
            unknown = g.unknown()
            if len(valid) + len(unknown) < 2 or not valid:
                rep.prompts_too_few_models += 1
                continue
            side = "eval" if pid in eval_ids else "train"
            candidates = [m for m in (cfg.offered_models or pool.ids) if m in valid or m in unknown]
            rng = prompt_rng(cfg.seed, pid)
            seen: set[frozenset[str]] = set()
            any_pair = False
            for _ in range(cfg.subsets_per_prompt):
                offered: list[str] = []
                for _attempt in range(10):  # distinct subsets
                    offered = sample_offered(candidates, pool, cfg, rng)
                    if frozenset(offered) not in seen:
                        break
                if frozenset(offered) in seen:
                    break  # no new subset to draw (e.g. the full pool)
                seen.add(frozenset(offered))
                rep.router_prompts += 1
                sizes[str(len(offered))] += 1
                outcome = {m: valid[m] for m in offered if m in valid}
                unk = {m: unknown[m] for m in offered if m in unknown}
                if not unk:
                    rewards = offered_rewards(outcome, cfg.reward)
                    costs = {m: c for m, (_, c) in outcome.items()}
                    pairs = make_pairs(rewards, costs, cfg.strategy, cfg.margin, cfg.max_pairs_per_prompt, rng)
                    n_implied = 0
                    shown = rewards
                else:  # a cost-ordered row: known labels, plus what they imply over the skipped models
                    top = max([c for _, c in outcome.values()] + list(unk.values()))
                    rewards = {m: reward(ok, c, cfg.reward, top) for m, (ok, c) in outcome.items()}
                    upper = {m: reward(True, c, cfg.reward, top) for m, c in unk.items()}
                    costs = {m: c for m, (_, c) in outcome.items()} | unk
                    known = make_pairs(rewards, costs, cfg.strategy, cfg.margin, None, rng) if len(rewards) > 1 else []
                    implied = implied_pairs(rewards, upper, cfg.strategy, cfg.margin)
                    # a skipped model whose expected cost is too close to the best's (within the margin) stays
                    # unpaired: its pair is unknown, never invented
                    unsettled += len(unk) - len({b for _, b in implied})
                    pairs = known + implied
                    if cfg.max_pairs_per_prompt is not None and len(pairs) > cfg.max_pairs_per_prompt:
                        keep = set(rng.sample(range(len(pairs)), cfg.max_pairs_per_prompt))
                        pairs = [p for i, p in enumerate(pairs) if i in keep]
                    implied_set = set(implied)
                    n_implied = sum(p in implied_set for p in pairs)
                    shown = rewards | upper  # a rejected skipped model's row shows its reward were it correct
                if not pairs:
                    no_pair["all_wrong" if not any(ok for ok, _ in outcome.values()) else "tie"] += 1
                    continue
                specs = pool.subset(offered)
                if tokenizer is not None:
                    try:
                        n_tok = len(encode_prompt(tokenizer, build_router_prompt(g.text, specs), cfg.max_prompt_tokens))
                    except PromptTooLongError as e:
                        msg = f"prompt {pid!r} with {len(offered)} offered models: {e}"
                        if cfg.strict:
                            raise PairsInputError(msg) from None
                        no_pair["prompt_too_long"] += 1
                        if len(rep.skipped_examples) < MAX_EXAMPLES:
                            rep.skipped_examples.append(msg)
                        continue
                    lengths.append(n_tok)
                any_pair = True
                rep.router_prompts_with_pairs += 1
                best_c[min(rewards, key=lambda m: (-rewards[m], costs[m], m))] += 1
                kinds["implied_over_skipped"] += n_implied
                kinds["partial_rows_known" if unknown else "full_rows"] += len(pairs) - n_implied
                for a, b in pairs:
                    chosen_c[a] += 1
                    rejected_c[b] += 1
                    cost_sums[0] += costs[a]
                    cost_sums[1] += costs[b]
                    if b in unk:
                        pass  # implied: b's label is unknown
                    elif outcome[b][0]:
                        rep.pairs_both_correct += 1
                        rejected_cc[b] += 1
                    else:
                        rep.pairs_correct_vs_wrong += 1
                    if side == "eval":
                        rep.pairs_eval += 1
                    else:
                        rep.pairs_train += 1
                    if side in writers:
                        row = dpo_example(
                            g.text, specs, a, b,
                            prompt_id=pid, dataset=g.dataset,
                            reward_chosen=round(shown[a], 8), reward_rejected=round(shown[b], 8),
                            cost_chosen=costs[a], cost_rejected=costs[b],
                        )
                        writers[side].write(json.dumps(row, ensure_ascii=False))
            if any_pair:
                rep.prompts_with_pairs += 1
        for name, ids in (("test_cache", eval_ids), ("val_cache", val_ids)):
            if name not in writers:
                continue
            keep = {o.lineno for pid in ids for o in groups[pid].outcomes.values()}
            with cache_path.open("r", encoding="utf-8") as f:
                for lineno, raw in enumerate(f, start=1):
                    if lineno in keep:
                        writers[name].write(raw)
    except BaseException:
        for w in writers.values():
            w.abort()
        _remove_if_made(out_dir, made_dir)
        raise

    rep.no_pair = dict(no_pair)
    rep.skipped_models_unpaired = unsettled
    rep.pairs_by_kind = {k: kinds[k] for k in ("full_rows", "partial_rows_known", "implied_over_skipped") if kinds[k]}
    if rep.pairs_total:
        rep.mean_cost_chosen_per_1k = round(1000 * cost_sums[0] / rep.pairs_total, 6)
        rep.mean_cost_rejected_per_1k = round(1000 * cost_sums[1] / rep.pairs_total, 6)
    rep.chosen_models = dict(chosen_c.most_common())
    rep.rejected_models = dict(rejected_c.most_common())
    rep.rejected_models_both_correct = dict(rejected_cc.most_common())
    rep.best_models = dict(best_c.most_common())
    rep.offered_sizes = {k: sizes[k] for k in sorted(sizes, key=int)}
    if tokenizer is not None:
        rep.prompt_tokens = length_stats(lengths)
    if out_dir is not None:
        # A run's outputs appear together or not at all: a failed run (an error, Ctrl-C, no training pair)
        # leaves the folder byte for byte as it was.
        out = Path(out_dir)
        files = list(writers.values())
        try:
            if rep.pairs_train == 0:
                raise NoTrainingPairsError(rep)
            for w in files:
                w.finish()
                rep.outputs[w.path.name] = str(w.path)
            rep.outputs[REPORT_FILE] = str(out / REPORT_FILE)
            report_w = _AtomicLines(out / REPORT_FILE)
            files.append(report_w)
            report_w.write(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False))
            report_w.finish()
        except BaseException:
            for w in files:
                w.abort()
            rep.outputs.clear()
            _remove_if_made(out, made_dir)
            raise
        _commit_all(out, files, OUTPUT_FILES)
    return rep


def print_report(rep: PairsReport, console: Any = None) -> None:
    """The short stats report, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"DPO pairs from {rep.cache}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("cache lines with a record", rep.lines_with_records),
        ("records used", rep.records_used),
        ("errored calls (left out, not scored)", rep.errored_calls_left_out),
        ("errors replaced by a successful retry", rep.retried_errors_replaced),
        ("lines skipped", sum(rep.skipped_lines.values())),
        *[(f"  skipped: {k}", v) for k, v in sorted(rep.skipped_lines.items())],
        ("torn last line dropped", "yes" if rep.torn_last_line else "no"),
        ("prompts read", rep.prompts_read),
        ("  train / validation / eval prompts", f"{rep.prompts_train} / {rep.prompts_val} / {rep.prompts_eval}"),
        ("  prompts with < 2 valid answers", rep.prompts_too_few_models),
        ("  prompts with pairs", rep.prompts_with_pairs),
        ("router prompts (prompt x offered subset)", rep.router_prompts),
        ("  with pairs", rep.router_prompts_with_pairs),
        *[(f"  no pair: {k}", v) for k, v in sorted(rep.no_pair.items())],
        (f"pairs ({rep.config.get('strategy')})", rep.pairs_total),
        *[(f"  from {k.replace('_', ' ')}", v) for k, v in rep.pairs_by_kind.items()],
        *([("  skipped models left unpaired (unknown)", rep.skipped_models_unpaired)] if rep.prompts_partial else []),
        ("  train / eval", f"{rep.pairs_train} / {rep.pairs_eval}"),
        ("  correct vs wrong / both correct (cost)", f"{rep.pairs_correct_vs_wrong} / {rep.pairs_both_correct}"),
        ("mean $ per 1k queries: chosen / rejected",
         f"{rep.mean_cost_chosen_per_1k:.3f} / {rep.mean_cost_rejected_per_1k:.3f}"),
        ("offered-set sizes", ", ".join(f"{k}:{v}" for k, v in rep.offered_sizes.items())),
    ]
    if rep.prompt_tokens is not None:
        pt = rep.prompt_tokens
        rows.append((f"prompt tokens ({rep.tokenizer}) p50/p95/max", f"{pt['p50']} / {pt['p95']} / {pt['max']}"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)
    m = Table(title="models (pair-weighted chosen / rejected; best = highest reward per router prompt)")
    for col in ("model", "chosen", "rejected", "best"):
        m.add_column(col, justify="left" if col == "model" else "right")
    names = sorted(set(rep.chosen_models) | set(rep.rejected_models), key=lambda n: -rep.chosen_models.get(n, 0))
    for n in names:
        m.add_row(n, str(rep.chosen_models.get(n, 0)), str(rep.rejected_models.get(n, 0)), str(rep.best_models.get(n, 0)))
    console.print(m)
    if rep.prompts_partial:
        console.print(f"{rep.prompts_partial} question(s) come from a cost-ordered traversal (skipped models: unknown, "
                      f"never scored as wrong), {rep.prompts_explored} from its exploration sample (every model)")
    if rep.eval_prompts_partial:
        console.print(f"[yellow]{rep.eval_prompts_partial} held-out question(s) have skipped models: evaluate on full rows "
                      "(the explored questions, or a full cache's test_cache.jsonl)")
    for ex in rep.skipped_examples[:5]:
        console.print(f"[yellow]skipped:[/yellow] {ex}")
    for name, path in rep.outputs.items():
        console.print(f"wrote {path}")
