"""Stage 3: QLoRA DPO training of the router, sized for one 8 GB laptop GPU (RTX 4060 Laptop).

    xrouter-lite train outputs/pairs/dpo_train_data.json --config configs/train_qwen_4060.yaml
    xrouter-lite train ... --resume                       # continue from the latest checkpoint
    xrouter-lite train ... --set learning_rate=1e-4 --set lora_r=32
    python scripts/train_dpo_light.py --config configs/train_qwen_4060.yaml --learning_rate 1e-4
    accelerate launch scripts/train_dpo_light.py --config ...   # data-parallel on several GPUs (docs/MULTI_GPU.md)

Recipe (every knob is a field of ``TrainConfig``, settable in YAML and on the command line): a base causal LM (any
HF id or local folder; over 7B parameters is refused, counted from the config before any weight is loaded), 4-bit
NF4 with double quantisation and bf16 compute (fp16 where bf16 is missing, fp32 on the CPU, where bitsandbytes
runs too and fp32 is several times faster than bf16), LoRA r=16 on q/k/v/o and the MLP projections, batch 1 with
gradient accumulation, gradient checkpointing (non-reentrant), and a paged 8-bit AdamW (plain AdamW on the CPU).

The trainer is TRL's ``DPOTrainer`` (optimiser, scheduler, checkpoints, logging, accelerate); ``RouterDPOTrainer``
changes only what a router pair needs:

- tokenisation: every row goes through ``prompting.prompt_from_example`` -> ``prompting.encode_prompt`` and
  ``prompting.encode_action``; TRL never re-renders the conversation (SmolLM2's template would drop the tools);
- ``recipe: packed`` (default): one row per pair, the prompt processed once for both answers (``packing.py``),
  log-probs only at the answer positions (TRL's fused LM head), the same DPO loss as TRL's;
  ``recipe: trl``: TRL's own two-rows-per-pair forward, for comparison; with ``share_prefix`` (default) the pairs
  of a batch offered the same models share one row, their static prompt prefix (system text + tools) processed
  once per batch (``packing.pack_shared``; the prefix length comes from ``prefix_cache.PrefixFinder``);
- reference log-probs computed once before training with the adapter disabled (``precompute_ref_log_probs``), kept
  in ``<output_dir>/ref_logps_train.pt`` so ``--resume`` does not pay for them again; or on the fly, also with the
  adapter disabled (never a second copy of the base model);
- batches grouped by length (less padding).

Long jobs: checkpoints every ``save_steps`` (``save_total_limit`` kept), ``--resume``, a progress bar, TensorBoard
logs (``<output_dir>/runs``), and Ctrl-C (or SIGTERM): finish the current step, save a checkpoint and the adapter,
write the run card and exit (a second Ctrl-C aborts at once). The output folder holds the adapter, the tokenizer
and ``run_card.json`` (config, sha256 of the data file, pair counts, final metrics, wall time, peak memory,
library versions).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError

from .prompting import (
    DEFAULT_MAX_PROMPT_TOKENS,
    PromptTooLongError,
    encode_prompt,
)
# The any_* twins read one-shot and agentic rows (pairs --agentic) alike; for a one-shot row they return exactly what
# action_text / encode_action / prompt_from_example return (same text, same token ids).
from .prompting import any_action_text as action_text
from .prompting import encode_any_action as encode_action
from .prompting import prompt_from_any_example as prompt_from_example

logger = logging.getLogger("xrouter_lite.train")

MAX_PARAMS = 7_000_000_000  # the user's hard rule: no base model over 7B parameters
RUN_CARD = "run_card.json"
REF_CACHE = "ref_logps_{name}.pt"
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PACKED_LOSS_TYPES = ("sigmoid", "hinge", "ipo")


# ---- configuration ------------------------------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """Every knob of a training run. Defaults are the 8 GB laptop recipe (``configs/train_qwen_4060.yaml``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # data, model, output
    model_name_or_path: str = Field("Qwen/Qwen2.5-1.5B-Instruct", description="HF id or local folder of the base model")
    data_path: str = Field("outputs/pairs/dpo_train_data.json", description="pairs from `xrouter-lite pairs`")
    eval_data_path: str | None = Field(None, description="held-out pairs (dpo_eval_data.json), evaluated every eval_steps")
    output_dir: str = Field("outputs/router-dpo", description="adapter, tokenizer, checkpoints, logs, run card")
    max_prompt_tokens: int = Field(DEFAULT_MAX_PROMPT_TOKENS, ge=8, description="longer prompts are skipped or refused, never truncated")
    on_too_long: Literal["skip", "error"] = Field("skip", description="a prompt over max_prompt_tokens: skip the pair (counted) or stop")
    trust_remote_code: bool = False

    # quantisation and precision
    load_in_4bit: bool = Field(True, description="QLoRA: 4-bit base weights (bitsandbytes)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp16; fp32 on the CPU"
    )
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    # LoRA
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="TRL disables dropout in the model by default (disable_dropout)")
    lora_target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    lora_top_layers: int | None = Field(
        None, ge=1, description="LoRA on the top N decoder layers only (None: all): the layers below carry no adapter, "
        "so with the packed recipe and the reference computed in the step (precompute_ref_log_probs: false) they run "
        "once per batch, without a graph, for the policy and the reference; gradient checkpointing then covers the N "
        "adapted layers only. Qwen2.5-1.5B shape, 6 GiB cap: 8 of 28 layers + checkpointing + share_prefix trains "
        "6.1x as many pairs/s as every layer with a reference pre-pass; on SmolLM2 it routes as well with the "
        "decision head (fit-head), worse with the raw rule (docs/BENCHMARKS.md)"
    )
    disable_dropout: bool = True
    score_tokens: Literal["full", "distinct"] = Field(
        "full", description="how the trained router scores an offered action at decision time (recorded in the run "
        "card; evaluation, fit-head and serving read it from there): 'full': every token of the action; 'distinct': "
        "its tokens up to the first one no other offered action shares (prompting.distinct_action_prefixes): ~3x "
        "fewer tokens per batched GPU decision. Training is the same either way (DPO over the whole action)"
    )

    # DPO
    recipe: Literal["packed", "trl"] = Field("packed", description="packed: one row per pair (prompt once); trl: TRL's two rows")
    share_prefix: bool = Field(
        True, description="packed: pairs of a batch offered the same models share one forward of the static prompt prefix"
    )
    share_scope: Literal["static", "prompt"] = Field(
        "static", description="with share_prefix: 'static': the pairs of a batch offered the same models share the "
        "system text + tools (one row per offered set); 'prompt': the pairs of one question (the same whole prompt) "
        "share all of it, one row per question, and batches take whole questions (a CPU's attention over long rows "
        "costs more than the prefix it saves; a question's pairs share ~1,000 tokens)"
    )
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    precompute_ref_log_probs: bool = Field(True, description="reference log-probs once before training (adapter disabled)")
    precompute_ref_batch_size: int | None = Field(None, ge=1, description="default: 2 x per_device_train_batch_size")

    # optimisation
    learning_rate: float = Field(5e-5, gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: str = Field("paged_adamw_8bit", description="any transformers optim name; paged/8-bit ones fall back to adamw_torch on the CPU")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(1, ge=1)
    per_device_eval_batch_size: int = Field(2, ge=1)
    gradient_accumulation_steps: int = Field(16, ge=1)
    gradient_checkpointing: bool = True
    gradient_checkpointing_every_n_layers: int = Field(
        1, ge=1, description="checkpoint every n-th decoder layer only (2: half of them): less recompute, more memory"
    )
    group_by_length: bool = Field(True, description="batches of similar length (less padding)")
    pad_to_multiple_of: int | None = Field(16, ge=1, description="row length rounding (16 keeps SDPA's mask aligned)")
    seed: int = 42
    dataloader_num_workers: int = Field(0, ge=0)

    # long jobs
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(3, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="default: save_steps")
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    disable_tqdm: bool = False

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Defaults < YAML file < overrides (an override of None sets None). Errors (``TrainConfigError``, a
        ``config.ConfigError``) name the file and the field; unknown keys are refused."""
        from .config import COMMAND_LINE, read_yaml_mapping, validate_config

        data: dict[str, Any] = {}
        where = COMMAND_LINE
        if path is not None:
            data.update(read_yaml_mapping(path, "training config", error=TrainConfigError))
            where = str(path)
        if overrides:
            data.update(overrides)
        return validate_config(cls, data, where, error=TrainConfigError)


class TrainConfigError(ConfigError):
    """A bad training setting; the message names the file/flag and the field (``config.ConfigError``)."""


class ModelTooLargeError(ValueError):
    """The base model has more parameters than the project's hard limit (7B)."""


class TrainDataError(ValueError):
    """A bad row in the pairs file; the message names the file and the line."""


def _pretty(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg'].removeprefix('Value error, ')}"
        for err in e.errors()
    )


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lora_r=32", "report_to=[]"]`` -> ``{"lora_r": 32, "report_to": []}`` (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise TrainConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in TrainConfig.model_fields:
            raise TrainConfigError(f"--set {item!r}: unknown setting {key!r} (see `xrouter-lite train --help`)")
        try:
            out[key] = yaml.safe_load(value) if value.strip() != "" else None
        except yaml.YAMLError as e:
            raise TrainConfigError(f"--set {item!r}: cannot read the value: {e}") from None
    return out


# ---- the model-size rule ------------------------------------------------------------------------------------------


def count_parameters(model_name_or_path: str, trust_remote_code: bool = False) -> int:
    """Parameter count of a causal LM from its config alone (built on the meta device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError (not found / offline), ValueError (unknown architecture)
        raise TrainConfigError(
            f"model_name_or_path {model_name_or_path!r}: cannot read its config ({type(e).__name__}: {e}). Give a "
            "local model folder, or a Hugging Face id that is in your Hub cache or reachable."
        ) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def check_model_size(model_name_or_path: str, trust_remote_code: bool = False) -> int:
    """Refuse a base model over 7B parameters (the user's hard rule), before any weight is downloaded or loaded."""
    n = count_parameters(model_name_or_path, trust_remote_code)
    if n > MAX_PARAMS:
        raise ModelTooLargeError(
            f"{model_name_or_path} has {n / 1e9:.2f}B parameters (counted from its config); the router's base model "
            f"must have at most {MAX_PARAMS / 1e9:.0f}B parameters (hard rule of this project: it has to train on "
            "one 8 GB laptop GPU). Pick a smaller model, e.g. Qwen/Qwen2.5-1.5B-Instruct."
        )
    return n


# ---- data ---------------------------------------------------------------------------------------------------------

REQUIRED_FIELDS = ("prompt", "tools", "offered_models", "chosen_model", "rejected_model")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_pairs(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each pair of a ``dpo_train_data.json``: JSON Lines (what ``xrouter-lite pairs``
    writes) or one JSON array (then the number is the row's 1-based index). Streams JSON Lines."""
    path = Path(path)
    if not path.exists():
        raise TrainDataError(f"{path}: no such pairs file (make it with `xrouter-lite pairs`)")
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise TrainDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            for i, row in enumerate(rows, 1):
                yield i, row
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainDataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            yield lineno, row


@dataclass
class TokenizedPairs:
    """Token ids of the usable pairs and what was left out."""

    columns: dict[str, list]
    n_rows: int = 0
    skipped_too_long: int = 0
    skipped_lines: list[int] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        return len(self.columns["prompt_ids"])


def tokenize_pairs(
    rows: Iterator[tuple[int, dict[str, Any]]] | list[dict[str, Any]],
    tokenizer,
    max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS,
    on_too_long: str = "skip",
    source: str = "pairs",
) -> TokenizedPairs:
    """Rows of dpo_train_data.json -> ``prompt_ids``/``chosen_ids``/``rejected_ids`` (+ ``length``, the packed row
    length) through THE router prompt functions of ``prompting``. A prompt rendered once is reused for its other
    pairs. A row whose stored answer text is not ``action_text(model)`` is an error (format drift)."""
    from .packing import packed_length

    from .prefix_cache import PrefixFinder

    finder = PrefixFinder(tokenizer)
    cols: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "length": [], "prefix_len": []}
    out = TokenizedPairs(columns=cols)
    prompt_cache: dict[str, list[int] | PromptTooLongError] = {}
    prefix_cache: dict[str, int] = {}
    action_cache: dict[str, list[int]] = {}
    items = enumerate(rows, 1) if isinstance(rows, list) else rows
    for lineno, row in items:
        out.n_rows += 1
        where = f"{source}:{lineno}"
        if not isinstance(row, dict):
            raise TrainDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise TrainDataError(f"{where}: missing field(s) {missing} (rows come from `xrouter-lite pairs`)")
        for side in ("chosen", "rejected"):
            model_id = row[f"{side}_model"]
            stored = row.get(side)
            if stored is not None:
                text = stored[-1].get("content") if isinstance(stored, list) and stored else stored
                if text != action_text(model_id):
                    raise TrainDataError(
                        f"{where}: the {side!r} answer {str(text)[:80]!r} is not the action text of {model_id!r} "
                        f"({action_text(model_id)!r}); the file was not written by this version of the pairs stage"
                    )
        try:
            prompt = prompt_from_example(row)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            raise TrainDataError(f"{where}: bad router prompt fields ({type(e).__name__}: {e})") from None
        for side in ("chosen", "rejected"):
            if row[f"{side}_model"] not in prompt.offered:
                raise TrainDataError(f"{where}: {side}_model {row[f'{side}_model']!r} is not among offered_models")
        key = json.dumps([prompt.messages, prompt.tools], sort_keys=True, ensure_ascii=False)
        ids = prompt_cache.get(key)
        if ids is None:
            try:
                ids = encode_prompt(tokenizer, prompt, max_prompt_tokens)
            except PromptTooLongError as e:
                ids = e
            prompt_cache[key] = ids
        if isinstance(ids, PromptTooLongError):
            if on_too_long == "error":
                raise TrainDataError(f"{where}: {ids}") from None
            out.skipped_too_long += 1
            if len(out.skipped_lines) < 20:
                out.skipped_lines.append(lineno)
            continue
        ans = []
        for side in ("chosen", "rejected"):
            m = row[f"{side}_model"]
            if m not in action_cache:
                action_cache[m] = encode_action(tokenizer, m)
            ans.append(action_cache[m])
        cols["prompt_ids"].append(ids)
        cols["chosen_ids"].append(ans[0])
        cols["rejected_ids"].append(ans[1])
        cols["length"].append(packed_length(len(ids), len(ans[0]), len(ans[1])))
        if key not in prefix_cache:  # the question-independent tokens (system text + tools): shared in a batch
            prefix_cache[key] = finder.reusable_len(prompt, ids)
        cols["prefix_len"].append(prefix_cache[key])
    return out


def share_whole_prompts(tok: TokenizedPairs) -> None:
    """``share_scope: prompt``: each pair's shared part is its whole prompt (but the last token, which heads each
    answer branch), so the collator puts the pairs of one question in one row."""
    tok.columns["prefix_len"] = [len(ids) - 1 for ids in tok.columns["prompt_ids"]]


class PromptGroupedSampler:
    """Indices of the pairs with the questions in a seeded random order and each question's pairs together (so a
    batch holds whole questions, and ``share_scope: prompt`` shares each question's prompt within the batch)."""

    def __init__(self, prompt_ids: list[list[int]], seed: int = 0):
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(prompt_ids):
            groups.setdefault(tuple(ids), []).append(i)
        self.groups = list(groups.values())
        self.seed = seed
        self.epoch = 0
        self.n = len(prompt_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import random

        order = list(range(len(self.groups)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        for g in order:
            yield from self.groups[g]


def pairs_dataset(tok: TokenizedPairs):
    from datasets import Dataset

    return Dataset.from_dict(tok.columns)


# ---- the trainer --------------------------------------------------------------------------------------------------


def _trainer_classes():
    """RouterDPOTrainer and GracefulStop, defined on first use so that importing this module stays light."""
    global RouterDPOTrainer, GracefulStop
    if "RouterDPOTrainer" in globals():
        return RouterDPOTrainer, GracefulStop

    import torch
    import torch.nn.functional as F
    from accelerate.utils import is_peft_model, tqdm
    from torch.utils.data import DataLoader
    from transformers import TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler
    import trl.trainer.utils as trl_utils
    from trl import DPOTrainer
    from trl.trainer.utils import use_adapter

    from .packing import (
        CHOSEN, IGNORE, PAD, REJECTED, PackedPreferenceCollator, block_causal_mask, per_pair_sum, sequence_logps,
    )

    # TRL >= 1.15 patches the model with a fused LM head (log-probs at the scored positions only). Older TRL (1.14,
    # the newest on Python 3.10) has none: the packed recipe then takes the same log-probs from the full logits.
    fused_lm_head = hasattr(trl_utils, "add_fused_lm_head")

    def log_probs_from_logits(logits, shift_labels):
        scored = shift_labels != IGNORE
        lp = torch.zeros(shift_labels.shape, dtype=torch.float32, device=logits.device)
        sel = logits[scored].float()  # only the answer positions (tens per row) go through log_softmax
        lp[scored] = torch.log_softmax(sel, dim=-1).gather(-1, shift_labels[scored].unsqueeze(-1)).squeeze(-1)
        return SimpleNamespace(log_probs=lp, entropy=None, mean_logits=None, is_top1=None)

    class _RouterDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer taking pre-tokenised router pairs; ``packed=True`` runs one row per pair (the prompt
        once for both answers), log-probs at the answer positions only. Everything else is TRL's."""

        def __init__(
            self,
            *args,
            packed: bool = True,
            share_prefix: bool = False,
            share_scope: str = "static",
            group_by_length: bool = False,
            ref_cache_dir: str | None = None,
            ref_cache_key: str | None = None,
            **kwargs,
        ):
            self.packed = packed
            self.share_prefix = packed and share_prefix
            self.by_prompt = self.share_prefix and share_scope == "prompt"
            self.group_by_length = group_by_length
            self.ref_cache_dir = ref_cache_dir
            self.ref_cache_key = ref_cache_key
            self.ref_precompute_seconds: dict[str, float] = {}
            dpo_args = kwargs.get("args")
            every_n = (dpo_args.gradient_checkpointing_kwargs or {}).get("every_n_layers", 1)
            if not packed and every_n > 1 and not dpo_args.precompute_ref_log_probs:
                raise TrainConfigError(
                    "gradient_checkpointing_every_n_layers > 1 with recipe 'trl' needs precompute_ref_log_probs "
                    "(TRL re-enables checkpointing on every layer after each on-the-fly reference pass)"
                )
            if packed:
                bad = [t for t in dpo_args.loss_type if t not in PACKED_LOSS_TYPES]
                if bad or len(dpo_args.loss_type) != 1:
                    raise TrainConfigError(f"loss_type: the packed recipe supports one of {PACKED_LOSS_TYPES}, got {dpo_args.loss_type}")
                if dpo_args.ld_alpha is not None or dpo_args.use_weighting or dpo_args.f_divergence_type != "reverse_kl":
                    raise TrainConfigError("the packed recipe supports plain DPO (no ld_alpha, use_weighting or f-divergence)")
                if kwargs.get("data_collator") is None:
                    tok = kwargs["processing_class"]
                    if tok.pad_token is None:
                        tok.pad_token = tok.eos_token
                    kwargs["data_collator"] = PackedPreferenceCollator(
                        pad_token_id=tok.pad_token_id, pad_to_multiple_of=dpo_args.pad_to_multiple_of,
                        share_prefix=self.share_prefix,
                    )
                model = kwargs.get("model", args[0] if args else None)
                self._attn_impl = model.config._attn_implementation
                if self._attn_impl not in ("sdpa", "eager"):
                    raise TrainConfigError(
                        f"attn_implementation: the packed recipe needs 'sdpa' or 'eager' (a custom 4D mask), got {self._attn_impl!r}"
                    )
            super().__init__(*args, **kwargs)

        # -- data: already tokenised by tokenize_pairs (prompting.py); never re-rendered by TRL
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            cols = set(dataset.column_names or [])
            need = {"prompt_ids", "chosen_ids", "rejected_ids"}
            if not need <= cols:
                raise TrainDataError(
                    f"{dataset_name} dataset: RouterDPOTrainer takes pre-tokenised pairs {sorted(need)}; build them with "
                    "xrouter_lite.train.tokenize_pairs (the router prompt is rendered by prompting.render_prompt only)"
                )
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            for col in ("length", "prefix_len"):
                if col not in self._signature_columns:
                    self._signature_columns = list(self._signature_columns) + [col]

        def _get_train_sampler(self, *args, **kwargs):
            ds = self.train_dataset
            if self.by_prompt and ds is not None:
                return PromptGroupedSampler(ds["prompt_ids"], seed=self.args.seed)
            if self.group_by_length and ds is not None and "length" in (ds.column_names or []):
                return LengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=list(ds["length"])
                )
            return super()._get_train_sampler(*args, **kwargs)

        # -- the packed forward
        def _packed_mask(self, inputs):
            dtype = self.accelerator.unwrap_model(self.model).dtype
            return block_causal_mask(inputs["segment_ids"], self._attn_impl, dtype, inputs.get("pair_ids"))

        def _packed_forward(self, model, inputs, mask=None, hidden=None):
            """Log-probs at the answer positions. With ``hidden`` (the frozen trunk's output, ``_frozen_trunk``)
            only the decoder layers above the trunk run, on those hidden states."""
            mask = self._packed_mask(inputs) if mask is None else mask
            feed = {"input_ids": inputs["input_ids"]} if hidden is None else {"inputs_embeds": hidden}
            with contextlib.nullcontext() if hidden is None else self._layers_above_trunk():
                if not fused_lm_head:
                    out = model(**feed, attention_mask=mask, position_ids=inputs["position_ids"], use_cache=False)
                    return log_probs_from_logits(out.logits, inputs["shift_labels"])
                return model(
                    **feed,
                    attention_mask=mask,
                    position_ids=inputs["position_ids"],
                    shift_labels=inputs["shift_labels"],
                    fused_lm_head=True,
                    use_cache=False,
                )

        # -- the frozen trunk: with LoRA on the top layers only (lora_top_layers), the layers below carry no adapter,
        # so the policy and the reference compute the same hidden states there: computed once per batch, no grad
        def _trunk_plan(self):
            """(decoder stack, number of its lower layers without a trainable parameter), or None where the trunk
            cannot be shared: not the packed recipe, reference log-probs precomputed or from a separate model, not a
            Llama-style stack (embed_tokens, layers, norm), or no frozen layer. Gradient checkpointing (non-reentrant)
            then applies to the adapted layers only: the trunk runs under no_grad and keeps no activations."""
            if hasattr(self, "_trunk"):
                return self._trunk
            self._trunk = None
            if not (self.packed and not self.precompute_ref_logps and self.ref_model is None
                    and is_peft_model(self.model)):
                return None
            base = self.accelerator.unwrap_model(self.model).get_base_model()
            dec = getattr(base, "model", None)
            layers = getattr(dec, "layers", None)
            if not (isinstance(layers, torch.nn.ModuleList) and hasattr(dec, "embed_tokens") and hasattr(dec, "norm")):
                return None
            k = 0
            while k < len(layers) and not any(p.requires_grad for p in layers[k].parameters()):
                k += 1
            if k == 0 or k == len(layers) or any(p.requires_grad for p in dec.embed_tokens.parameters()):
                return None
            self._trunk = (dec, k)
            return self._trunk

        @contextlib.contextmanager
        def _swap_layers(self, layers, norm):
            dec, _ = self._trunk
            saved = dec.layers, dec.norm
            dec.layers, dec.norm = layers, norm
            try:
                yield
            finally:
                dec.layers, dec.norm = saved

        def _layers_above_trunk(self):
            dec, k = self._trunk
            return self._swap_layers(torch.nn.ModuleList(list(dec.layers)[k:]), dec.norm)

        def _trunk_hidden(self, inputs, mask):
            """The hidden states entering the first adapted layer (embeddings + the frozen layers, no grad)."""
            dec, k = self._trunk
            with torch.no_grad(), self._swap_layers(torch.nn.ModuleList(list(dec.layers)[:k]), torch.nn.Identity()):
                return dec(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"],
                           use_cache=False).last_hidden_state

        def compute_ref_log_probs(self, model, inputs, mask=None, hidden=None):
            """Reference log-probs (adapter off, or the ``ref`` adapter); ``mask``/``hidden``: the frozen trunk's
            output already computed for the policy (``_trunk_hidden``), reused."""
            if not self.packed:
                return super().compute_ref_log_probs(model, inputs)
            ctx = contextlib.nullcontext()
            if self.ref_model is None and is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                ctx = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            # no need to switch checkpointing off: non-reentrant checkpointing under no_grad just runs the layer
            with torch.no_grad(), ctx, self.accelerator.autocast():
                out = self._packed_forward(model if self.ref_model is None else self.ref_model, inputs, mask, hidden)
            return self._pair_logps(out, inputs)

        def _pair_logps(self, outputs, inputs):
            """(chosen, rejected) log-prob sums per pair, in the order of the batch's examples."""
            pair_ids = inputs.get("pair_ids")
            n = len(inputs["pair_index"]) if pair_ids is not None else None
            return sequence_logps(outputs.log_probs, inputs["shift_labels"], inputs["segment_ids"], pair_ids, n)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            """Reference log-probs of every pair, once, with the adapter disabled; kept in memory on every rank
            (TRL's version caches through a datasets file that other ranks cannot see for an in-memory dataset)
            and, when ``ref_cache_dir`` is set, in ``ref_logps_<name>.pt`` for ``--resume``."""
            if self.is_deepspeed_enabled:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            t0 = time.perf_counter()
            cache = Path(self.ref_cache_dir) / REF_CACHE.format(name=name) if self.ref_cache_dir and self.ref_cache_key else None
            saved = None
            if cache is not None and cache.exists():
                saved = torch.load(cache, map_location="cpu", weights_only=True)
                if saved.get("key") != self.ref_cache_key or len(saved["chosen"]) != len(dataset):
                    saved = None
            if saved is not None:
                logger.info("reference log-probs for %s read from %s", name, cache)
                chosen, rejected = saved["chosen"], saved["rejected"]
                self.ref_precompute_seconds[name] = 0.0
            else:
                loader = self.accelerator.prepare(
                    DataLoader(
                        dataset,
                        batch_size=batch_size,
                        collate_fn=self.data_collator,
                        num_workers=self.args.dataloader_num_workers,
                        pin_memory=self.args.dataloader_pin_memory,
                        shuffle=False,
                    )
                )
                model = self.ref_model or self.model
                parts_c, parts_r = [], []
                for batch in tqdm(loader, desc=f"Reference log-probs ({name})",
                                  disable=not self.accelerator.is_local_main_process or bool(os.environ.get("TQDM_DISABLE"))):
                    c, r = self.compute_ref_log_probs(model, batch)
                    c, r = self.accelerator.gather_for_metrics((c, r))
                    parts_c.append(c.float().cpu())
                    parts_r.append(r.float().cpu())
                chosen, rejected = torch.cat(parts_c), torch.cat(parts_r)
                if len(chosen) != len(dataset):
                    raise RuntimeError(f"reference pass returned {len(chosen)} values for {len(dataset)} pairs")
                self.ref_precompute_seconds[name] = time.perf_counter() - t0
                if cache is not None and self.accelerator.is_main_process:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache.with_suffix(".tmp")
                    torch.save({"key": self.ref_cache_key, "chosen": chosen, "rejected": rejected}, tmp)
                    os.replace(tmp, cache)
            dataset = dataset.add_column("ref_chosen_logps", chosen.tolist())
            return dataset.add_column("ref_rejected_logps", rejected.tolist())

        def _compute_loss(self, model, inputs, return_outputs):
            if not self.packed:
                return super()._compute_loss(model, inputs, return_outputs)
            if return_outputs:
                raise ValueError("the packed recipe computes no logits; use prediction_loss_only=True")
            mode = "train" if self.model.training else "eval"
            hidden = None
            if self._trunk_plan() is not None:  # the frozen layers once for the policy and the reference
                mask = self._packed_mask(inputs)
                hidden = self._trunk_hidden(inputs, mask)
                outputs = self._packed_forward(model, inputs, mask, hidden)
            else:
                outputs = self._packed_forward(model, inputs)
            seg, labels = inputs["segment_ids"], inputs["shift_labels"]
            chosen_logps, rejected_logps = self._pair_logps(outputs, inputs)
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            elif hidden is not None:  # the trunk needs no ref_model (_trunk_plan): the policy's model, adapter off
                ref_chosen, ref_rejected = self.compute_ref_log_probs(model, inputs, mask, hidden)
            else:
                ref_chosen, ref_rejected = self.compute_ref_log_probs(self.model, inputs)
            chosen_logratios = chosen_logps - ref_chosen
            rejected_logratios = rejected_logps - ref_rejected
            delta = chosen_logratios - rejected_logratios
            loss_type = self.loss_types[0]
            scored = labels != -100
            chosen_mask = scored & (seg == CHOSEN)
            rejected_mask = scored & (seg == REJECTED)
            if loss_type == "sigmoid":
                per_pair = -F.logsigmoid(self.beta * delta)
            elif loss_type == "hinge":
                per_pair = torch.relu(1 - self.beta * delta)
            else:  # ipo: token-count normalised, as TRL does
                if "pair_ids" in inputs:
                    ones = torch.ones_like(labels, dtype=chosen_logratios.dtype)
                    n_c = per_pair_sum(ones, chosen_mask, inputs["pair_ids"], len(inputs["pair_index"]))
                    n_r = per_pair_sum(ones, rejected_mask, inputs["pair_ids"], len(inputs["pair_index"]))
                else:
                    n_c, n_r = chosen_mask.sum(dim=1), rejected_mask.sum(dim=1)
                c = chosen_logratios / n_c.clamp(min=1.0)
                r = rejected_logratios / n_r.clamp(min=1.0)
                per_pair = (c - r - 1 / (2 * self.beta)) ** 2
            loss = per_pair.mean() * self.loss_weights[0]
            self._log_packed_metrics(mode, outputs, inputs, chosen_mask, rejected_mask, chosen_logps, rejected_logps,
                                     chosen_logratios, rejected_logratios)
            return loss

        def _log_packed_metrics(self, mode, outputs, inputs, chosen_mask, rejected_mask, chosen_logps, rejected_logps,
                                chosen_logratios, rejected_logratios):
            acc = self.accelerator
            m = self._metrics[mode]
            with torch.no_grad():
                scored = chosen_mask | rejected_mask
                if outputs.entropy is not None:
                    ent = acc.gather_for_metrics((outputs.entropy * scored).sum()).sum()
                    n = acc.gather_for_metrics(scored.sum()).sum()
                    m["entropy"].append((ent / n).item() if n > 0 else 0.0)
                if mode == "train":
                    n_tok = acc.gather_for_metrics((inputs["segment_ids"] != PAD).sum()).sum().item()
                    self._total_train_tokens += n_tok // self._tp_size
                m["num_tokens"] = [self._total_train_tokens]
                if outputs.mean_logits is not None:
                    for side, mask in (("chosen", chosen_mask), ("rejected", rejected_mask)):
                        tot = acc.gather_for_metrics(outputs.mean_logits[mask].sum()).sum().item()
                        cnt = acc.gather_for_metrics(mask.sum()).sum().item()
                        m[f"logits/{side}"].append(tot / cnt if cnt > 0 else 0.0)
                if outputs.is_top1 is not None:
                    correct = acc.gather_for_metrics((outputs.is_top1 & chosen_mask).sum()).sum()
                    total = acc.gather_for_metrics(chosen_mask.sum()).sum()
                    m["mean_token_accuracy"].append((correct / total).item() if total > 0 else 0.0)
                cr = self.beta * chosen_logratios.detach()
                rr = self.beta * rejected_logratios.detach()
                m["rewards/chosen"].append(acc.gather(cr).mean().item())
                m["rewards/rejected"].append(acc.gather(rr).mean().item())
                m["rewards/accuracies"].append(acc.gather((cr > rr).float()).mean().item())
                m["rewards/margins"].append(acc.gather(cr - rr).mean().item())
                m["logps/chosen"].append(acc.gather(chosen_logps.detach()).mean().item())
                m["logps/rejected"].append(acc.gather(rejected_logps.detach()).mean().item())

    class _GracefulStop(TrainerCallback):
        """Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop. Under several processes the request is
        shared (all-reduce) so every rank stops at the same step."""

        def __init__(self):
            self.requested = False
            self.stopped_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            flag = self.requested
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
                t = torch.tensor([int(flag)], device=dev)
                torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
                flag = bool(t.item())
            if flag:
                self.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    RouterDPOTrainer, GracefulStop = _RouterDPOTrainer, _GracefulStop
    return RouterDPOTrainer, GracefulStop


def __getattr__(name: str):  # lazy: `from xrouter_lite.train import RouterDPOTrainer`
    if name in ("RouterDPOTrainer", "GracefulStop"):
        classes = dict(zip(("RouterDPOTrainer", "GracefulStop"), _trainer_classes()))
        return classes[name]
    raise AttributeError(name)


@contextlib.contextmanager
def stop_on_interrupt(stopper, say=print):
    """While training: the first Ctrl-C (or SIGTERM) asks ``stopper`` to stop after the current step; a second
    Ctrl-C raises KeyboardInterrupt at once. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if stopper.requested:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
            raise KeyboardInterrupt
        stopper.requested = True
        say("\nstop requested: finishing this step, then saving a checkpoint and the adapter (Ctrl-C again aborts)")

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---- building blocks used by train(), the benchmark and the tests -------------------------------------------------


@dataclass
class Precision:
    name: str  # bfloat16 | float16 | float32
    device: str  # cuda | cpu
    optim: str
    notes: list[str] = field(default_factory=list)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.name)


def resolve_precision(cfg: TrainConfig) -> Precision:
    import torch

    cuda = torch.cuda.is_available()
    notes = []
    if cfg.compute_dtype != "auto":
        name = cfg.compute_dtype
    elif cuda:
        name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    else:
        name = "float32"
        notes.append("CPU: fp32 compute (bitsandbytes 4-bit runs several times faster in fp32 than bf16 on the CPU)")
    optim = cfg.optim
    if not cuda and ("paged" in optim or "8bit" in optim):
        notes.append(f"CPU: optimiser {optim!r} replaced by 'adamw_torch' (paged 8-bit states are a GPU-memory saving)")
        optim = "adamw_torch"
    return Precision(name=name, device="cuda" if cuda else "cpu", optim=optim, notes=notes)


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: TrainConfig, precision: Precision):
    """The base model, 4-bit NF4 (double quantisation, compute in ``precision``) when ``load_in_4bit``."""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": precision.torch_dtype,
        "attn_implementation": cfg.attn_implementation,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=precision.torch_dtype,
        )
    if precision.device == "cuda":
        kwargs["device_map"] = {"": PartialState().local_process_index}
    elif cfg.load_in_4bit:
        kwargs["device_map"] = "cpu"
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, **kwargs)
    model.config.use_cache = False
    if cfg.load_in_4bit and precision.device == "cpu":
        keep_cpu_4bit_trainable(model)
    return model


def keep_cpu_4bit_trainable(model) -> int:
    """bitsandbytes (0.50) repacks a 4-bit weight for its CPU inference kernel the first time the layer runs in
    eval mode without grad (the reference pass, evaluation) and keeps that layout; later training forwards then go
    through ``gemv_4bit``, which has no autograd kernel, so gradients through the base weights are silently lost.
    Turning the repacking off keeps every forward on the differentiable path. Returns the layers changed."""
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def lora_config(cfg: TrainConfig, num_layers: int | None = None):
    """peft's LoraConfig for ``cfg``; ``num_layers`` (the base model's decoder layer count) is needed with
    ``lora_top_layers``."""
    from peft import LoraConfig

    targets: Any = cfg.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    layers: list[int] | None = None
    if cfg.lora_top_layers is not None:
        if num_layers is None:
            raise TrainConfigError("lora_top_layers: the base model's number of decoder layers is unknown")
        if cfg.lora_top_layers > num_layers:
            raise TrainConfigError(f"lora_top_layers: {cfg.lora_top_layers} is more than the model's {num_layers} decoder layers")
        layers = list(range(num_layers - cfg.lora_top_layers, num_layers))
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def dpo_args(cfg: TrainConfig, precision: Precision, has_eval: bool = False, **overrides: Any):
    """TRL's DPOConfig for this recipe. ``max_length=None``: nothing is truncated (prompt length is capped and
    checked at tokenisation instead)."""
    from trl import DPOConfig

    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=precision.optim,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}
        | ({"every_n_layers": cfg.gradient_checkpointing_every_n_layers} if cfg.gradient_checkpointing_every_n_layers > 1 else {}),
        bf16=precision.name == "bfloat16",
        fp16=precision.name == "float16",
        use_cpu=precision.device == "cpu",
        max_length=None,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        precompute_ref_batch_size=cfg.precompute_ref_batch_size or 2 * cfg.per_device_train_batch_size,
        disable_dropout=cfg.disable_dropout,
        seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=precision.device == "cuda",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(cfg.eval_steps or cfg.save_steps) if has_eval else None,
        prediction_loss_only=True,
        report_to=cfg.report_to or "none",
        disable_tqdm=cfg.disable_tqdm,
        ddp_find_unused_parameters=False,
        trust_remote_code=cfg.trust_remote_code,
    )
    kw.update(overrides)
    return DPOConfig(**kw)


def cast_trainable(model, dtype) -> None:
    """TRL casts a quantised model's LoRA weights to bf16; on an fp32 run (the CPU) keep them in fp32."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _compact_lm_head_on_cpu() -> None:
    """TRL's fused LM head scores only the answer positions on CUDA (the "compact" path) but every position of the
    row on the CPU, in chunks of 32,768 rows: for a ~1,000-token packed pair that is a full-vocabulary logits
    matrix per row (GBs of RSS for SmolLM2's 49k vocabulary) and ~25% of the compute spent on positions nobody
    scores. The compact path is plain PyTorch row selection; use it on the CPU too (same numbers)."""
    import trl.trainer.utils as tu

    if not hasattr(tu, "_use_triton"):  # TRL < 1.15 (Python 3.10) has no fused LM head: nothing to patch
        return
    if getattr(tu._use_triton, "_xrouter_cpu_compact", False):
        return
    orig = tu._use_triton

    def use(device):
        return True if getattr(device, "type", str(device)) == "cpu" else orig(device)

    use._xrouter_cpu_compact = True
    tu._use_triton = use


def build_trainer(cfg: TrainConfig, model, tokenizer, train_ds, eval_ds=None, precision: Precision | None = None,
                  callbacks=None, ref_cache_key: str | None = None, **arg_overrides: Any):
    """A RouterDPOTrainer for ``cfg`` around an already loaded base ``model`` (LoRA is added here)."""
    trainer_cls, _ = _trainer_classes()
    _compact_lm_head_on_cpu()
    precision = precision or resolve_precision(cfg)
    args = dpo_args(cfg, precision, has_eval=eval_ds is not None, **arg_overrides)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, getattr(model.config, "num_hidden_layers", None)),
        callbacks=callbacks,
        packed=cfg.recipe == "packed",
        share_prefix=cfg.share_prefix,
        share_scope=cfg.share_scope,
        group_by_length=cfg.group_by_length,
        ref_cache_dir=cfg.output_dir if ref_cache_key else None,
        ref_cache_key=ref_cache_key,
    )
    if precision.name == "float32":
        cast_trainable(trainer.model, precision.torch_dtype)
    return trainer


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(output_dir)
    if not d.is_dir():
        return None
    last = get_last_checkpoint(str(d))
    return Path(last) if last else None


def peak_memory() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {
            "device": torch.cuda.get_device_name(),
            "cuda_max_memory_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
            "cuda_max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"device": "cpu", "cpu_max_rss_gib": round(rss_kib / 2**20, 3)}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - a missing optional library
            out[mod] = "missing"
    return out


def _final_metrics(trainer, train_output) -> dict[str, Any]:
    keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
            "logps/rejected", "learning_rate", "epoch")
    last: dict[str, Any] = {}
    for entry in trainer.state.log_history:
        if "loss" in entry and "eval_loss" not in entry:
            last = entry
    metrics = {k: last[k] for k in keys if k in last}
    metrics["global_step"] = trainer.state.global_step
    if train_output is not None:
        metrics.update({f"train/{k}": v for k, v in train_output.metrics.items()})
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals:
        metrics["eval"] = evals[-1]
    return metrics


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_run_card(folder: str | Path) -> dict[str, Any] | None:
    """The run card a training run wrote into ``folder``, or None when it is missing or unreadable."""
    try:
        card = json.loads((Path(folder) / RUN_CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def absolute_base_model_path(adapter_dir: str | Path, model_name_or_path: str) -> None:
    """Record a local base model as an absolute path in ``adapter_config.json`` (peft writes what it was given,
    e.g. ``models/SmolLM2-135M-Instruct``, which ``PeftModel.from_pretrained`` cannot find from another working
    directory). A Hub id is left as it is."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    local = Path(model_name_or_path).expanduser()
    if not cfg_path.is_file() or not local.is_dir():
        return
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = str(local.resolve())
    write_json_atomic(cfg_path, data)


@dataclass
class TrainResult:
    output_dir: Path
    run_card: dict[str, Any]
    interrupted: bool


def train(cfg: TrainConfig, resume: bool = False, say=print, callbacks: list | None = None) -> TrainResult:
    """One training run: checks, data, model, TRL trainer, adapter + tokenizer + run card in ``cfg.output_dir``."""
    from accelerate import PartialState

    t_start = time.time()
    if not PartialState().is_main_process:  # under accelerate/torchrun, one voice
        say = _silent
    out = Path(cfg.output_dir)
    last = latest_checkpoint(out)
    if resume and last is None:
        raise TrainConfigError(f"--resume: no checkpoint-* folder in {out} to resume from")
    if not resume and last is not None:
        raise TrainConfigError(
            f"{out} already holds checkpoints ({last.name}); pass --resume to continue that run, or choose another "
            "output_dir (nothing is overwritten)"
        )
    for what, path in (("data_path", cfg.data_path), ("eval_data_path", cfg.eval_data_path)):
        if path is not None and not Path(path).is_file():
            raise TrainDataError(f"{what}: no such pairs file {path} (make it with `xrouter-lite pairs`)")
    n_params = check_model_size(cfg.model_name_or_path, cfg.trust_remote_code)
    say(f"base model {cfg.model_name_or_path}: {n_params / 1e9:.2f}B parameters")
    precision = resolve_precision(cfg)
    for note in precision.notes:
        say(note)
        logger.info(note)

    tokenizer = load_tokenizer(cfg)
    data_sha = file_sha256(cfg.data_path)
    tok = tokenize_pairs(read_pairs(cfg.data_path), tokenizer, cfg.max_prompt_tokens, cfg.on_too_long, cfg.data_path)
    if tok.n_pairs == 0:
        raise TrainDataError(f"{cfg.data_path}: no usable pair ({tok.n_rows} rows, {tok.skipped_too_long} over max_prompt_tokens)")
    if tok.skipped_too_long:
        say(f"skipped {tok.skipped_too_long} pair(s) whose prompt is over {cfg.max_prompt_tokens} tokens (lines {tok.skipped_lines[:5]}...)")
    if cfg.recipe == "packed" and cfg.share_prefix and cfg.share_scope == "prompt":
        share_whole_prompts(tok)
    train_ds = pairs_dataset(tok)
    eval_tok = None
    eval_ds = None
    if cfg.eval_data_path:
        eval_tok = tokenize_pairs(read_pairs(cfg.eval_data_path), tokenizer, cfg.max_prompt_tokens, cfg.on_too_long, cfg.eval_data_path)
        eval_ds = pairs_dataset(eval_tok) if eval_tok.n_pairs else None
    lengths = tok.columns["length"]
    say(f"{tok.n_pairs} pairs from {cfg.data_path} (packed row length p50 {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)})")

    model = load_model(cfg, precision)
    ref_key = hashlib.sha256(
        json.dumps([data_sha, cfg.model_name_or_path, cfg.load_in_4bit, cfg.bnb_4bit_quant_type,
                    cfg.bnb_4bit_use_double_quant, precision.name, cfg.max_prompt_tokens, cfg.recipe,
                    cfg.attn_implementation, cfg.eval_data_path and file_sha256(cfg.eval_data_path)]).encode()
    ).hexdigest()
    _, stop_cls = _trainer_classes()
    stopper = stop_cls()
    trainer = build_trainer(cfg, model, tokenizer, train_ds, eval_ds, precision, callbacks=[stopper, *(callbacks or [])], ref_cache_key=ref_key)
    for name, secs in trainer.ref_precompute_seconds.items():
        say(f"reference log-probs ({name}): {'read from cache' if secs == 0 else f'{secs:.1f} s'}")

    with stop_on_interrupt(stopper, say):
        train_output = trainer.train(resume_from_checkpoint=str(last) if resume else None)
    interrupted = stopper.stopped_at is not None

    trainer.save_model(str(out))  # the adapter (+ tokenizer: processing_class)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(out))
        absolute_base_model_path(out, cfg.model_name_or_path)
    card = {
        "status": "interrupted" if interrupted else "completed",
        "stopped_at_step": stopper.stopped_at,
        "resumed_from": str(last) if resume else None,
        "config": cfg.model_dump(mode="json"),
        "effective": {
            "compute_dtype": precision.name,
            "optim": precision.optim,
            "device": precision.device,
            "world_size": trainer.accelerator.num_processes,
            "notes": precision.notes,
            "base_model_parameters": n_params,
        },
        "data": {
            "path": str(cfg.data_path),
            "sha256": data_sha,
            "rows": tok.n_rows,
            "pairs": tok.n_pairs,
            "skipped_prompt_too_long": tok.skipped_too_long,
            "eval_path": cfg.eval_data_path,
            "eval_pairs": eval_tok.n_pairs if eval_tok else 0,
        },
        "final_metrics": _final_metrics(trainer, train_output),
        "reference_precompute_seconds": trainer.ref_precompute_seconds,
        "wall_time_s": round(time.time() - t_start, 1),
        "peak_memory": peak_memory(),
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
    if trainer.accelerator.is_main_process:
        write_json_atomic(out / RUN_CARD, card)
    return TrainResult(output_dir=out, run_card=card, interrupted=interrupted)
