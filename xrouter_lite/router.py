"""Routing decisions: one class per routing method, one small interface (in the style of RouteLLM's routers/).

The interface, the decision rule, the cost vector and the factory live in ``routing`` (``Router``,
``Router.load``); this module holds the routers: the baselines, kNN and the trained LoRA router.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pool import ModelSpec
from .prompting import (
    DEFAULT_MAX_PROMPT_TOKENS,
    SCORE_TOKENS,
    ActionParseError,
    PromptTooLongError,
    build_router_prompt,
    distinct_action_prefixes,
    encode_action,
    encode_prompt,
    parse_action,
)
from .simple_routers import EmbeddingRouter
from .routing import (  # noqa: F401  (re-exported: the names this module always had)
    DEFAULT_EXPECTED_OUTPUT_TOKENS,
    Decision,
    RouteItem,
    Router,
    ScoredDecision,
    decide,
    estimated_query_cost,
    normalised_costs,
    query_text,
)

# The one interface under its earlier names (``BaseRouter.route/route_batch`` and ``CostAwareRouter.route_items``
# were two forms of it; now both are ``Router``).
BaseRouter = Router
CostAwareRouter = Router

from .prefix_cache import DEFAULT_PREFIX_CACHE_MB, PrefixScorer, _actions_lcp  # noqa: E402


# ---- baselines ------------------------------------------------------------------------------------------------------


class SingleModelRouter(CostAwareRouter):
    """Always the same model (when it is not offered: the fallback model, counted invalid)."""

    takes_tau = False
    inline_ok = True

    def __init__(self, model_id: str, **kw):
        super().__init__(**kw)
        self.model_id = model_id
        self.name = f"single:{model_id}"

    def route_items(self, items, offered, tau=None):
        out = []
        for it, off in zip(items, offered, strict=True):
            ids = [s.id for s in off]
            if self.model_id in ids:
                out.append(Decision(self.model_id, {m: float(m == self.model_id) for m in ids}))
            else:
                self.invalid_count += 1
                fb = self.fallback_model(off, self.costs_for(it.query, off))
                out.append(Decision(fb, {m: 0.0 for m in ids}, valid=False, invalid_reason="not_offered"))
        return out


class RandomRouter(CostAwareRouter):
    """Uniformly at random among the offered models, seeded (RouterBench's random baseline)."""

    name = "random"
    takes_tau = False
    inline_ok = True

    def __init__(self, seed: int = 0, **kw):
        super().__init__(**kw)
        self.seed = seed
        self._rng = random.Random(seed)

    def route_items(self, items, offered, tau=None):
        out = []
        for _it, off in zip(items, offered, strict=True):
            ids = [s.id for s in off]
            out.append(Decision(self._rng.choice(ids), {m: 1.0 / len(ids) for m in ids}))
        return out


@dataclass
class Outcome:
    """One model's recorded result on one prompt."""

    correct: bool
    cost: float


class OracleRouter(CostAwareRouter):
    """The cheapest model that answered correctly (recorded cost); the cheapest model when none did.

    Needs the outcomes, so it routes only items with a known ``prompt_id`` (an upper bound, not a router)."""

    name = "oracle"
    takes_tau = False

    def __init__(self, outcomes: Mapping[str, Mapping[str, Outcome]], **kw):
        super().__init__(**kw)
        self.outcomes = outcomes

    def route_items(self, items, offered, tau=None):
        out = []
        for it, off in zip(items, offered, strict=True):
            if it.prompt_id is None or it.prompt_id not in self.outcomes:
                raise KeyError(f"the oracle knows no outcomes for prompt {it.prompt_id!r}")
            table = self.outcomes[it.prompt_id]
            ids = [s.id for s in off if s.id in table]
            if not ids:
                raise KeyError(f"prompt {it.prompt_id!r}: no recorded outcome for any offered model")
            right = [m for m in ids if table[m].correct]
            pick = min(right or ids, key=lambda m: (table[m].cost, ids.index(m)))
            out.append(Decision(pick, {m: float(table[m].correct) - table[m].cost for m in ids}))
        return out


@dataclass
class LabeledPrompt:
    """A prompt with every model's recorded outcome (built from a cache by ``evaluate.load_prompts``)."""

    prompt_id: str
    dataset: str
    prompt: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reference: str = ""
    task: str | None = None


class BestSingleRouter(CostAwareRouter):
    """Per dataset, the single model that did best on the TRAINING data (RouterBench's "best single model").

    The score of model m is m's training accuracy on the item's dataset (all training data pooled when the
    dataset is unknown or was not in training); the choice is ``argmax(acc - tau * c)``. With ``tau = 0`` that is
    the most accurate model (criterion "accuracy"); ``tau > 0`` trades accuracy for cost (criterion "reward")."""

    name = "best_single"

    def __init__(self, train: Iterable[LabeledPrompt], **kw):
        super().__init__(**kw)
        self.by_dataset: dict[str, dict[str, list[int]]] = {}
        self.pooled: dict[str, list[int]] = {}
        n = 0
        for p in train:
            n += 1
            for table in (self.by_dataset.setdefault(p.dataset, {}), self.pooled):
                for m, o in p.outcomes.items():
                    st = table.setdefault(m, [0, 0])
                    st[0] += int(o.correct)
                    st[1] += 1
        if n == 0:
            raise ValueError("BestSingleRouter needs training prompts; got none")

    def known_models(self) -> list[str]:
        return list(self.pooled)

    def accuracies(self, dataset: str | None) -> dict[str, float]:
        table = self.by_dataset.get(dataset, self.pooled) if dataset is not None else self.pooled
        return {m: c / t for m, (c, t) in table.items() if t}

    def choice_per_dataset(self, tau: float = 0.0, models: Sequence[str] | None = None) -> dict[str, str]:
        """The model this router picks for each training dataset (for reports)."""
        out = {}
        for ds in sorted(self.by_dataset):
            acc = self.accuracies(ds)
            ids = [m for m in (models or acc) if m in acc]
            out[ds] = max(ids, key=lambda m: (acc[m], -ids.index(m)))
        return out

    def route_items(self, items, offered, tau=None):
        tau = self._tau(tau)
        out = []
        for it, off in zip(items, offered, strict=True):
            acc = self.accuracies(it.dataset)
            base = {s.id: acc.get(s.id, 0.0) for s in off}
            costs = self.costs_for(it.query, off)
            model, scores = decide(base, costs, tau)
            out.append(ScoredDecision(model, scores, base_scores=base, costs=costs, tau=tau))
        return out


class KNNRouter(EmbeddingRouter):
    """k-nearest-neighbour router on sentence embeddings (all-MiniLM-L6-v2), trained on a cache.

    For a query, the ``k`` most similar training prompts (cosine similarity; ties, to 1e-6, go to the earlier
    training prompt) vote: the predicted probability that model m answers correctly is the mean of m's recorded
    correctness over those neighbours that have a record for m (m's overall training accuracy when none has). The
    choice is ``argmax(p_correct - tau * c)``."""

    name = "knn"

    def __init__(
        self,
        train: Iterable[LabeledPrompt],
        k: int = 10,
        embedder_path: str | Path | None = None,
        device: str | None = None,
        embed_batch_size: int = 64,
        max_seq_length: int | None = None,
        **kw,
    ):
        import numpy as np

        # max_seq_length default: the model's own (256 word pieces for all-MiniLM-L6-v2)
        super().__init__(device=device, max_seq_length=max_seq_length, embed_batch_size=embed_batch_size,
                         embedder_path=embedder_path, **kw)
        self.k = k
        prompts, rows = [], []
        for p in train:
            prompts.append(p.prompt)
            rows.append({m: float(o.correct) for m, o in p.outcomes.items()})
        if not prompts:
            raise ValueError("KNNRouter needs training prompts; got none")
        self.models = sorted({m for r in rows for m in r})
        idx = {m: i for i, m in enumerate(self.models)}
        y = np.full((len(rows), len(self.models)), np.nan, dtype=np.float32)
        for i, r in enumerate(rows):
            for m, v in r.items():
                y[i, idx[m]] = v
        self.y = y
        self.prior = {m: float(np.nanmean(y[:, idx[m]])) for m in self.models}
        self.emb = self._embed(prompts)

    def p_correct(self, queries: Sequence[str]) -> list[dict[str, float]]:
        import numpy as np

        q = self._embed(queries)
        # Similarities equal to 1e-6 are ties, broken by training order: a batch's matrix product and one query's
        # round differently in the last bits, and neighbours tied in exact arithmetic (questions whose first
        # max_seq_length word pieces are the same) must not change with the batch (evaluation vs the server).
        sims = np.round(q @ self.emb.T, 6)
        k = min(self.k, self.emb.shape[0])
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        out = []
        for r in range(len(queries)):
            ys = self.y[top[r]]
            with np.errstate(invalid="ignore"):
                counts = (~np.isnan(ys)).sum(0)
                means = np.where(counts > 0, np.nansum(ys, 0) / np.maximum(counts, 1), np.nan)
            out.append({m: (float(means[j]) if not math.isnan(means[j]) else self.prior[m]) for j, m in enumerate(self.models)})
        return out


# ---- the trained router ---------------------------------------------------------------------------------------------

_SMOLLM2_NAMES = ("SmolLM2-135M-Instruct",)


def _local_model_path(name: str) -> str:
    """A local folder for a model name: the path itself when it exists, the bundled SmolLM2 for its Hub id,
    else the name unchanged (resolved by transformers from the local Hugging Face cache; no network)."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if any(name.rstrip("/").endswith(n) for n in _SMOLLM2_NAMES):
        from .assets import smollm2_path

        return str(smollm2_path())
    return name


def base_model_of_adapter(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: ``base_model_name_or_path`` of its adapter_config.json, else
    the base model named in its run_card.json (top level or its ``config``)."""
    adapter_dir = Path(adapter_dir)
    cfg = adapter_dir / "adapter_config.json"
    if cfg.exists():
        name = json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if name:
            return str(name)
    card = adapter_dir / "run_card.json"
    if card.exists():
        data = json.loads(card.read_text(encoding="utf-8"))
        for scope in (data, data.get("config") or {}):
            if isinstance(scope, dict):
                for key in ("base_model", "base_model_name_or_path", "model_name_or_path", "model"):
                    if isinstance(scope.get(key), str) and scope[key]:
                        return scope[key]
    raise FileNotFoundError(
        f"{adapter_dir}: cannot tell the base model (no base_model_name_or_path in adapter_config.json, no base "
        "model in run_card.json); pass base_model explicitly"
    )


def adapter_quantization(adapter_dir: str | Path) -> dict[str, Any] | None:
    """How the adapter's base weights were quantised in training (``load_in_4bit``, ``bnb_4bit_quant_type``,
    ``bnb_4bit_use_double_quant`` from its run_card.json), or None when the folder has no readable run card."""
    from .train import read_run_card

    cfg = (read_run_card(adapter_dir) or {}).get("config")
    if not isinstance(cfg, dict) or "load_in_4bit" not in cfg:
        return None
    out: dict[str, Any] = {"load_in_4bit": bool(cfg["load_in_4bit"])}
    for key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant"):
        if key in cfg:
            out[key] = cfg[key]
    return out


def adapter_score_tokens(adapter_dir: str | Path | None) -> str:
    """How an adapter's router scores actions (``score_tokens`` of its run card's training config); "full" for
    adapters trained before the setting existed, or without a run card."""
    if not adapter_dir:
        return "full"
    from .train import read_run_card

    cfg = (read_run_card(adapter_dir) or {}).get("config")
    v = cfg.get("score_tokens") if isinstance(cfg, dict) else None
    return v if v in SCORE_TOKENS else "full"


def load_router_model(
    base_model: str | None = None,
    adapter_dir: str | Path | None = None,
    *,
    device: str | None = None,
    quantize: str = "auto",
    dtype: str | None = None,
    attn_implementation: str | None = None,
):
    """Load base model (+ LoRA adapter) and tokenizer once, for inference.

    quantize: "auto" (as the adapter was trained, read from its run_card.json: a QLoRA adapter gets its 4-bit base
    on the CPU too; without a run card 4-bit NF4 on CUDA and none on the CPU), "4bit" (bitsandbytes NF4, bf16
    compute on CUDA, fp32 on the CPU) or "none". dtype: "float32"/"bfloat16"/"float16"
    for unquantised weights (default: bfloat16 on CUDA, float32 on CPU). The tokenizer comes from the adapter
    folder when it holds one (training saves it there), else from the base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if base_model is None:
        if adapter_dir is None:
            raise ValueError("give base_model, adapter_dir, or both")
        base_model = base_model_of_adapter(adapter_dir)
    base_path = _local_model_path(base_model)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if quantize not in ("auto", "4bit", "none"):
        raise ValueError(f"quantize must be auto, 4bit or none, got {quantize!r}")
    trained = adapter_quantization(adapter_dir) if adapter_dir is not None else None
    if quantize == "auto":
        # The adapter was learned on top of the base weights as the trainer saw them: a QLoRA adapter on NF4
        # weights. Loading the base unquantised under it changes every score (on RouterBench's full split, 10-30
        # nats per candidate, and the cheap end of the tau curve), so "auto" follows the training run's card.
        four_bit = trained["load_in_4bit"] if trained is not None else str(device).startswith("cuda")
    else:
        four_bit = quantize == "4bit"
    if dtype is None:
        torch_dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=(trained or {}).get("bnb_4bit_quant_type", "nf4"),
            bnb_4bit_use_double_quant=(trained or {}).get("bnb_4bit_use_double_quant", True),
            bnb_4bit_compute_dtype=torch.bfloat16 if str(device).startswith("cuda") else torch.float32,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    if not four_bit:
        model.to(device)
    tok_src = base_path
    if adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").exists():
        tok_src = str(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_src)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a peft adapter folder)")
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
        if four_bit or torch_dtype != torch.float32:
            adapter_to_compute_dtype(model)
    model.eval()
    return model, tokenizer


def adapter_to_compute_dtype(model) -> int:
    """Cast the LoRA weights to the dtype of the activations (bf16/fp16) for inference.

    peft keeps adapters of a 4-bit base in float32 (right for training), which costs two dtype casts around every
    adapted layer at inference; on a GPU whose time goes to kernel launches that is a large share of a forward.
    Returns the number of tensors cast."""
    import torch

    target = model.get_input_embeddings().weight.dtype
    if target not in (torch.bfloat16, torch.float16):
        return 0
    n = 0
    for name, p in model.named_parameters():
        if "lora_" in name and p.dtype != target:
            p.data = p.data.to(target)
            n += 1
    return n


def _is_4bit(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_quantized", False))


class LoRARouter(CostAwareRouter):
    """The trained router: base model + LoRA adapter, shown the shared router prompt (``prompting``).

    mode="score": one pass scores every offered action's log-probability ``log p(action tokens | prompt)``
    (exactly the tokens of ``prompting.encode_action``, summed); the choice ``argmax(logp - tau * c)`` is always
    an offered model. How (``score_impl="packed"``, the default): ONE forward per batch whose row holds the
    prompt, the action tokens all candidates share, then every candidate's remaining tokens one after the other,
    with a block attention mask (each candidate sees the prompt and its own earlier tokens, never another
    candidate) and position ids that restart after the shared part for each candidate; logits are computed only
    for the last positions. Cost: one prompt forward + N x (a few) tokens. ``score_impl="cached"`` does the same
    in two forwards (the prompt with its KV cache kept, then the candidates' tokens over that cache).

    Static prefix reuse (``prefix_cache_mb``, default 256; 0 or None turns it off and uses ``score_impl``): the
    question-independent part of the prompt (system text + tool block of the offered set) has its KV cache
    computed once per offered set and kept in a bounded LRU (``prefix_cache.py``); a decision then runs only the
    question's tokens and the candidates' tokens over it. Same tokens, same scores up to float rounding.
    ``cuda_graphs`` (default: on CUDA) replays batch-1 decisions as CUDA graphs. ``merge_adapter`` (default: on
    CUDA with unquantised weights) merges the LoRA into the base weights for serving. ``fuse_kernels`` (default: on
    CUDA) runs each RMSNorm, SiLU gate and rotary embedding as one compiled kernel (``fused.py``; same arithmetic up
    to the order of fp32 reductions): the batch-1 decision is GPU-bound and these small kernels were a third of it.

    mode="generate": greedy decoding of the tool call, read with ``prompting.parse_action``. An unusable answer
    (or a prompt over ``max_prompt_tokens``) gives the default model (``default_model`` when offered, else the
    cheapest offered one), ``valid=False`` and ``invalid_reason``; ``invalid_count`` counts them. Candidate
    scores in this mode come free from the decoding steps: the log-probability of each candidate's tokens up
    to and including the first one that leaves the greedy path (exact for the generated candidate, an upper
    bound for the others); ``tau`` does not change a generated choice.

    ``c`` is ``normalised_costs`` (expected cost per query, divided by the most expensive offered model)."""

    name = "lora"

    def __init__(
        self,
        base_model: str | None = None,
        adapter_dir: str | Path | None = None,
        mode: str = "score",
        default_model: str | None = None,
        *,
        device: str | None = None,
        quantize: str = "auto",
        dtype: str | None = None,
        attn_implementation: str | None = None,
        max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        tau: float = 0.0,
        cost_per_query: Mapping[str, float] | None = None,
        expected_output_tokens: int = DEFAULT_EXPECTED_OUTPUT_TOKENS,
        model=None,
        tokenizer=None,
        score_impl: str = "packed",
        use_head: bool = True,
        prefix_cache_mb: float | None = DEFAULT_PREFIX_CACHE_MB,
        cuda_graphs: bool | None = None,
        merge_adapter: bool | None = None,
        fuse_kernels: bool | None = None,
        score_tokens: str | None = None,
    ):
        super().__init__(
            tau=tau, cost_per_query=cost_per_query, expected_output_tokens=expected_output_tokens,
            default_model=default_model,
        )
        if mode not in ("score", "generate"):
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}")
        if score_impl not in ("packed", "cached"):
            raise ValueError(f"score_impl must be 'packed' or 'cached', got {score_impl!r}")
        self.score_impl = score_impl
        import torch

        self._torch = torch
        self.mode = mode
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = max_new_tokens
        if model is None:
            model, tokenizer = load_router_model(
                base_model, adapter_dir, device=device, quantize=quantize, dtype=dtype,
                attn_implementation=attn_implementation,
            )
        elif tokenizer is None:
            raise ValueError("a preloaded model needs its tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.base_model = base_model
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self._action_ids: dict[str, list[int]] = {}
        self._scored_memo: dict[tuple[str, ...], list[list[int]]] = {}  # offered set -> the tokens scored per model
        self.invalid_reasons: dict[str, int] = {}
        # the decision head fitted next to the adapter (`xrouter-lite fit-head`); score mode decides with it
        from .decision import load_head

        # how actions are scored: the adapter's own setting (its run card) unless given (benchmarks compare both)
        self.score_tokens = adapter_score_tokens(adapter_dir) if score_tokens is None else score_tokens
        if self.score_tokens not in SCORE_TOKENS:
            raise ValueError(f"score_tokens must be one of {SCORE_TOKENS}, got {self.score_tokens!r}")
        self.head = load_head(adapter_dir) if (use_head and mode == "score") else None
        if self.head is None and self.score_tokens == "distinct" and mode == "score":
            import warnings

            warnings.warn(
                f"{adapter_dir or 'router'}: score_tokens 'distinct' without a decision head: measured on SmolLM2 "
                "(docs/BENCHMARKS.md) the raw rule on distinct tokens routes worse than on full actions; fit a head "
                "(`xrouter-lite fit-head`) or score 'full'", stacklevel=2,
            )
        if self.head is not None and self.head.score_tokens != self.score_tokens:
            from .decision import HeadError

            raise HeadError(
                f"{adapter_dir}: decision_head.json was fitted on {self.head.score_tokens!r} scores but this router "
                f"scores {self.score_tokens!r} (score_tokens): refit it with `xrouter-lite fit-head`"
            )
        on_cuda = self.device.type == "cuda"
        if merge_adapter is None:  # serving on a GPU: LoRA merged into bf16/fp16 weights (not into 4-bit ones)
            merge_adapter = on_cuda and not _is_4bit(model)
        self.merged = False
        if merge_adapter and hasattr(model, "merge_and_unload"):
            if _is_4bit(model):
                raise ValueError("merge_adapter: a LoRA cannot be merged into 4-bit base weights (load with quantize='none')")
            self.model = model = model.merge_and_unload()
            self.merged = True
        self.fused = 0
        if on_cuda if fuse_kernels is None else fuse_kernels:  # fused.py: norms, SiLU-gate, rotary as single kernels
            from .fused import fuse_elementwise

            self.fused = fuse_elementwise(model, rotary=True)
        self.prefix_scorer = None
        if prefix_cache_mb:  # static prefix reuse (prefix_cache.py): the pool block's KV computed once per offered set
            self.prefix_scorer = PrefixScorer(
                model, tokenizer, self.pad_id, max_bytes=int(float(prefix_cache_mb) * 2**20),
                cuda_graphs=on_cuda if cuda_graphs is None else bool(cuda_graphs),
            )

    # -- public ---------------------------------------------------------------------------------------------------

    def action_ids(self, model_id: str) -> list[int]:
        if model_id not in self._action_ids:
            self._action_ids[model_id] = encode_action(self.tokenizer, model_id)
        return self._action_ids[model_id]

    def _scored_actions(self, offered: tuple[str, ...]) -> list[list[int]]:
        """The tokens scored per offered model (``score_tokens``), memoised per offered set (bounded)."""
        memo = self._scored_memo
        acts = memo.get(offered)
        if acts is None:
            acts = [self.action_ids(m) for m in offered]
            if self.score_tokens == "distinct":
                acts = distinct_action_prefixes(acts)
            if len(memo) >= 1024:
                memo.clear()
            memo[offered] = acts
        return acts

    def route_items(self, items, offered, tau=None):
        tau = self._tau(tau)
        if len(items) != len(offered):
            raise ValueError(f"{len(items)} queries but {len(offered)} offered lists")
        out: list[Decision] = []
        for start in range(0, len(items), self.batch_size):
            out.extend(self._route_chunk(items[start : start + self.batch_size], offered[start : start + self.batch_size], tau))
        return out

    def warm_up(self, offered) -> None:
        """One decision (CUDA graphs are captured on it), then, where batches are packed for FlexAttention (CUDA),
        a batch over ``offered`` and one of longer questions over a second offered set: the first compiles the
        kernel and the block mask for its shapes (29 s on an H100), the second recompiles them once with the
        prefix length and the packed length dynamic (9 s); after that no offered set or batch size compiles again
        (``bench/flex_compile.py``, docs/BENCHMARKS.md)."""
        offered = list(offered)
        super().warm_up(offered)
        n = min(self.batch_size, 8)  # 8 decisions: a packed sequence of several mask blocks, as real batches have
        if self.prefix_scorer is not None and self.prefix_scorer.flex and n > 1:  # (one block compiles a special case)
            q = [f"warm-up question {i}: what is {i} + {i}? Answer with a number only, please." for i in range(n)]
            self.route_batch(q, [offered] * n)
            if len(offered) > 2:  # another prefix length AND packed length: torch.compile makes both dynamic now
                self.route_batch([x + " Give the sum as digits, nothing else." * 4 for x in q], [offered[:-1]] * n)

    # -- internals ------------------------------------------------------------------------------------------------

    def _invalid(self, reason: str, off, costs, t0: float, raw: str | None = None, scores=None) -> ScoredDecision:
        self.invalid_count += 1
        code = reason.split(":", 1)[0]
        self.invalid_reasons[code] = self.invalid_reasons.get(code, 0) + 1
        fb = self.fallback_model(off, costs)
        base = scores if scores is not None else {}
        return ScoredDecision(
            fb, dict(base), latency_s=time.perf_counter() - t0, valid=False, invalid_reason=reason, raw=raw,
            base_scores=dict(base), costs=costs,
        )

    def _route_chunk(self, items, offered, tau) -> list[Decision]:
        t0 = time.perf_counter()
        results: list[Decision | None] = [None] * len(items)
        work = []  # (index, prompt, prompt ids, offered ids, costs)
        offs = [list(off) for off in offered]
        prompts = [build_router_prompt(it.query, off) for it, off in zip(items, offs)]
        if self.prefix_scorer is not None:  # same ids, the static part tokenised once per offered set, one batch call
            encoded = self.prefix_scorer.finder.encode_many(prompts, self.max_prompt_tokens)
        else:
            encoded = []
            for p in prompts:
                try:
                    encoded.append(encode_prompt(self.tokenizer, p, self.max_prompt_tokens))
                except PromptTooLongError as e:
                    encoded.append(e)
        for i, (it, off, prompt, ids) in enumerate(zip(items, offs, prompts, encoded)):
            costs = self.costs_for(it.query, off)
            if isinstance(ids, PromptTooLongError):
                results[i] = self._invalid(f"prompt_too_long: {ids}", off, costs, t0)
                continue
            work.append((i, prompt, ids, off, costs))
        if work:
            if self.mode == "score":
                acts = [self._scored_actions(tuple(w[1].offered)) for w in work]
                if self.prefix_scorer is not None:
                    logps = self.prefix_scorer.score([w[1] for w in work], [w[2] for w in work], acts)
                else:
                    logps = self._score_batch([w[2] for w in work], acts)
                from .decision import route_scores

                for (i, prompt, _ids, _off, costs), lp in zip(work, logps):
                    raw = dict(zip(prompt.offered, lp))
                    model, scores, base, _used = route_scores(raw, costs, tau, self.head)
                    results[i] = ScoredDecision(model, scores, base_scores=base, costs=costs, tau=tau, router_scores=raw)
            else:
                texts, approx = self._generate_batch(
                    [w[2] for w in work], [[self.action_ids(m) for m in w[1].offered] for w in work]
                )
                for (i, prompt, _ids, off, costs), text, ap in zip(work, texts, approx):
                    base = dict(zip(prompt.offered, ap))
                    try:
                        model = parse_action(text, prompt)
                    except ActionParseError as e:
                        results[i] = self._invalid(f"{e.reason}: {e.detail}", off, costs, t0, raw=text, scores=base)
                        continue
                    results[i] = ScoredDecision(model, dict(base), raw=text, base_scores=base, costs=costs, tau=tau)
        per = (time.perf_counter() - t0) / max(1, len(items))
        for r in results:
            r.latency_s = per
        return results  # type: ignore[return-value]

    def _embed_dtype(self):
        return self.model.get_input_embeddings().weight.dtype

    def _score_batch(self, prompts: list[list[int]], actions: list[list[list[int]]]) -> list[list[float]]:
        """Exact ``sum log p(action token | prompt, earlier action tokens)`` for every candidate of every query."""
        if self.score_impl == "packed":
            return self._score_batch_packed(prompts, actions)
        return self._score_batch_cached(prompts, actions)

    @staticmethod
    def _pack(prompts, actions):
        """Shared layout: per query the head (prompt + the action tokens all candidates share) and the packed
        remaining tokens of every candidate (all but each one's last), with candidate index and offset."""
        lcps = [_actions_lcp(a) for a in actions]
        heads = [p + a[0][:l] for p, a, l in zip(prompts, actions, lcps)]
        rows = []
        for a, l in zip(actions, lcps):
            t, c, o = [], [], []
            for j, x in enumerate(a):
                s = x[l:]
                t.extend(s[:-1])
                c.extend([j] * (len(s) - 1))
                o.extend(range(len(s) - 1))
            rows.append((t, c, o))
        return lcps, heads, rows

    def _score_batch_packed(self, prompts: list[list[int]], actions: list[list[list[int]]]) -> list[list[float]]:
        """ONE forward per batch: each row is [left pad][prompt + shared action prefix][candidate 1 rest]...
        [candidate N rest], with a block attention mask (a candidate's tokens see the head and their own earlier
        tokens, never another candidate) and position ids that restart after the head for every candidate."""
        torch = self._torch
        dev = self.device
        B = len(prompts)
        lcps, heads, rows = self._pack(prompts, actions)
        lens = [len(h) + len(r[0]) for h, r in zip(heads, rows)]
        T = max(lens)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        pos = torch.zeros((B, T), dtype=torch.long)
        seg = torch.full((B, T), -2, dtype=torch.long)  # -2 pad, -1 head, j >= 0 candidate j
        for b in range(B):
            h, (t, c, o) = heads[b], rows[b]
            st = T - lens[b]
            ids[b, st : st + len(h)] = torch.tensor(h)
            pos[b, st : st + len(h)] = torch.arange(len(h))
            seg[b, st : st + len(h)] = -1
            if t:
                ids[b, st + len(h) :] = torch.tensor(t)
                pos[b, st + len(h) :] = len(h) + torch.tensor(o)
                seg[b, st + len(h) :] = torch.tensor(c)
        need = [l + 1 + len(r[0]) for l, r in zip(lcps, rows)]
        keep = max(need)
        with torch.inference_mode():
            # the (B, 1, T, T) mask is built on the model's device: only the small segment ids travel
            seg = seg.to(dev, non_blocking=True)
            idx = torch.arange(T, device=dev)
            causal = idx[:, None] >= idx[None, :]
            q, k = seg[:, :, None], seg[:, None, :]
            allowed = causal & (((k == -1) & (q >= -1)) | ((q >= 0) & (q == k)))
            allowed |= (idx[:, None] == idx[None, :]) & (q == -2)  # pads see themselves only (no empty softmax row)
            dt = self._embed_dtype()
            mask4 = torch.zeros((B, 1, T, T), dtype=dt, device=dev)
            mask4.masked_fill_(~allowed[:, None], torch.finfo(dt).min)
            del allowed, causal
            out = self.model(
                input_ids=ids.to(dev), attention_mask=mask4, position_ids=pos.to(dev), use_cache=False,
                logits_to_keep=keep,
            )
            logits = out.logits  # [B, keep, V]; window index w <-> position T - keep + w
            result = []
            for b in range(B):
                l, a = lcps[b], actions[b]
                t, c, o = rows[b]
                Qb = len(t)
                lo = keep - Qb - 1 - l  # first window index needed by this row
                lsm = torch.log_softmax(logits[b, lo:].float(), dim=-1)  # [l + 1 + Qb, V]
                common = 0.0
                if l:
                    common = float(lsm[torch.arange(l, device=lsm.device), torch.tensor(a[0][:l], device=lsm.device)].sum())
                first = lsm[l, torch.tensor([x[l] for x in a], device=lsm.device)]
                sums = first.clone()
                if Qb:
                    targets = torch.tensor([a[j][l + oo + 1] for j, oo in zip(c, o)], device=lsm.device)
                    tok = lsm[l + 1 + torch.arange(Qb, device=lsm.device), targets]
                    sums.index_add_(0, torch.tensor(c, device=lsm.device), tok)
                result.append([common + v for v in sums.tolist()])
        return result

    def _left_padded(self, seqs: list[list[int]]):
        """(input ids, attention mask) of ``seqs`` padded on the left to the longest."""
        torch = self._torch
        P = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), P), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), P), dtype=torch.long)
        for b, x in enumerate(seqs):
            ids[b, P - len(x) :] = torch.tensor(x)
            mask[b, P - len(x) :] = 1
        return ids, mask

    def _score_batch_cached(self, prompts: list[list[int]], actions: list[list[list[int]]]) -> list[list[float]]:
        """Two forwards: the heads (KV cache kept), then every candidate's rest packed into one row per query
        over that cache, with a block mask."""
        torch = self._torch
        dev = self.device
        B = len(prompts)
        lcps = [_actions_lcp(a) for a in actions]
        heads = [p + a[0][:l] for p, a, l in zip(prompts, actions, lcps)]
        ids, mask = self._left_padded(heads)
        P = ids.shape[1]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        K = max(lcps) + 1
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                use_cache=True, logits_to_keep=K,
            )
            lp1 = torch.log_softmax(out.logits.float(), dim=-1)  # [B, K, V]; window = last K positions
            # the shared action prefix and each candidate's first own token
            common = []
            first = []
            for b in range(B):
                l, a = lcps[b], actions[b]
                if l:
                    rows = torch.arange(K - l - 1, K - 1, device=lp1.device)
                    toks = torch.tensor(a[0][:l], device=lp1.device)
                    common.append(float(lp1[b, rows, toks].sum()))
                else:
                    common.append(0.0)
                toks = torch.tensor([x[l] for x in a], device=lp1.device)
                first.append(lp1[b, K - 1, toks].tolist())
            # the rest of every candidate: one packed row per query over the prompt's cache
            row_tok, row_cand, row_off = [], [], []
            for b in range(B):
                l = lcps[b]
                t, c, o = [], [], []
                for j, a in enumerate(actions[b]):
                    s = a[l:]
                    t.extend(s[:-1])
                    c.extend([j] * (len(s) - 1))
                    o.extend(range(len(s) - 1))
                row_tok.append(t), row_cand.append(c), row_off.append(o)
            Q = max(len(t) for t in row_tok)
            rest = [[0.0] * len(actions[b]) for b in range(B)]
            if Q:
                ids2 = torch.full((B, Q), self.pad_id, dtype=torch.long)
                cand = torch.full((B, Q), -1, dtype=torch.long)
                pos2 = torch.zeros((B, Q), dtype=torch.long)
                for b in range(B):
                    n = len(row_tok[b])
                    if n:
                        ids2[b, :n] = torch.tensor(row_tok[b])
                        cand[b, :n] = torch.tensor(row_cand[b])
                        pos2[b, :n] = len(heads[b]) + torch.tensor(row_off[b])
                same = (cand[:, :, None] == cand[:, None, :]) & (cand[:, :, None] >= 0)
                allowed = torch.cat(
                    [mask.bool()[:, None, :].expand(B, Q, P), same & torch.ones(Q, Q, dtype=torch.bool).tril()], dim=-1
                )
                dt = self._embed_dtype()
                mask4 = torch.zeros((B, 1, Q, P + Q), dtype=dt)
                mask4.masked_fill_(~allowed[:, None], torch.finfo(dt).min)
                out2 = self.model(
                    input_ids=ids2.to(dev), attention_mask=mask4.to(dev), position_ids=pos2.to(dev),
                    past_key_values=out.past_key_values, use_cache=True,
                )
                for b in range(B):
                    n = len(row_tok[b])
                    if not n:
                        continue
                    l = lcps[b]
                    targets = torch.tensor(
                        [actions[b][j][l + o + 1] for j, o in zip(row_cand[b], row_off[b])], device=out2.logits.device
                    )
                    lsm = torch.log_softmax(out2.logits[b, :n].float(), dim=-1)
                    tok_lp = lsm[torch.arange(n, device=lsm.device), targets]
                    sums = torch.zeros(len(actions[b]), dtype=torch.float32, device=lsm.device)
                    sums.index_add_(0, torch.tensor(row_cand[b], device=lsm.device), tok_lp)
                    rest[b] = sums.tolist()
        return [[common[b] + f + r for f, r in zip(first[b], rest[b])] for b in range(B)]

    def _generate_batch(self, prompts: list[list[int]], actions: list[list[list[int]]]):
        """Greedy decoding for a batch (left padding). Returns the generated texts and per-candidate scores."""
        torch = self._torch
        from transformers import GenerationConfig

        B = len(prompts)
        ids, mask = self._left_padded(prompts)
        P = ids.shape[1]
        longest = max(len(a) for acts in actions for a in acts)
        gcfg = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens or longest + 8, pad_token_id=self.pad_id,
            eos_token_id=self.eos_id, output_logits=True, return_dict_in_generate=True,
        )
        with torch.inference_mode():
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gcfg)
        seqs = gen.sequences[:, P:].tolist()
        texts, scores = [], []
        for b in range(B):
            g = seqs[b]
            if self.eos_id in g:
                g = g[: g.index(self.eos_id) + 1]
            texts.append(self.tokenizer.decode(g, skip_special_tokens=False))
            lsm = torch.log_softmax(torch.stack([step[b] for step in gen.logits]).float(), dim=-1)  # [T, V]
            T = lsm.shape[0]
            row = []
            for a in actions[b]:
                s = 0.0
                for t, tok in enumerate(a):
                    if t >= T:
                        break
                    s += float(lsm[t, tok])
                    if t >= len(g) or tok != g[t]:
                        break
                row.append(s)
            scores.append(row)
        return texts, scores
