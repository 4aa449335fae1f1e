"""Shared-prefix packing of DPO pairs: the router prompt is processed once for both answers.

A router pair is a long prompt (system text + tool list + query, 500-4,000 tokens) and two short answers (one
tool call each, ~20-40 tokens). TRL's collator builds two rows per pair, ``prompt + chosen`` and
``prompt + rejected``, so every layer processes the prompt twice. Packed, one pair is ONE row::

    [ prompt[:-1] | prompt[-1], chosen... | prompt[-1], rejected... | pad ... ]
      segment 0     segment 1 (chosen)      segment 2 (rejected)      segment 3

- ``position_ids`` count on through the prompt, and both branches restart at ``len(prompt) - 1``, so each branch
  sees exactly the positions it would see on its own row.
- The attention mask is block-causal: causal everywhere, except that rejected-branch tokens do not see
  chosen-branch tokens; padding sees only itself (no fully masked query row, hence no NaN).
- The last prompt token is repeated at the head of each branch: its hidden state predicts the first answer token,
  and with one copy per branch every position predicts exactly one next token. That lets TRL's fused LM head
  (``trl.trainer.utils.add_fused_lm_head``, which on CUDA projects only the scored positions through the LM head
  and never builds the full logits) score both answers in one call through ``shift_labels``.
- ``shift_labels[t]`` is the token predicted at position ``t`` (``-100`` where nothing is scored); the chosen
  log-probability of a row is the sum over segment 1, the rejected one over segment 2.

Per-sequence log-probabilities equal those of TRL's two-row layout up to float rounding (the test suite checks
this and the DPO loss against TRL's own ``_compute_loss`` on real SmolLM2 weights).

    collate = PackedPreferenceCollator(pad_token_id=tok.pad_token_id, pad_to_multiple_of=16)
    batch = collate([{"prompt_ids": [...], "chosen_ids": [...], "rejected_ids": [...]}, ...])
    mask = block_causal_mask(batch["segment_ids"], attn_implementation="sdpa", dtype=torch.bfloat16)

Shared prefix (``share_prefix=True``): pairs of a batch whose prompts start with the same question-independent
prefix (system text + tool block of one offered set: ~1,400 of a ~1,480-token prompt for 11 models) go in ONE
row, the prefix once and then each pair's own part (rest of its prompt, chosen, rejected); ``pair_ids`` keeps
pairs apart in the mask and in the sums (``pack_shared``). With LoRA on the attention and MLP projections the
prefix's hidden states depend on the adapter, so it is recomputed at every step, but once per batch, not once per
pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

PREFIX, CHOSEN, REJECTED, PAD = 0, 1, 2, 3
IGNORE = -100


def packed_length(prompt_len: int, chosen_len: int, rejected_len: int) -> int:
    """Row length of one packed pair (the last prompt token is repeated once)."""
    return prompt_len + chosen_len + rejected_len + 1


def pack_pair(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> dict[str, list[int]]:
    """One pair as one row: ``input_ids``, ``position_ids``, ``segment_ids`` and ``shift_labels``."""
    p, c, r = list(prompt_ids), list(chosen_ids), list(rejected_ids)
    if not p:
        raise ValueError("a DPO pair needs a non-empty prompt")
    if not c or not r:
        raise ValueError("a DPO pair needs non-empty chosen and rejected answers")
    n = len(p)
    last = p[-1]
    input_ids = p[:-1] + [last] + c + [last] + r
    position_ids = list(range(n - 1)) + list(range(n - 1, n + len(c))) + list(range(n - 1, n + len(r)))
    segment_ids = [PREFIX] * (n - 1) + [CHOSEN] * (len(c) + 1) + [REJECTED] * (len(r) + 1)
    shift_labels = [IGNORE] * (n - 1) + c + [IGNORE] + r + [IGNORE]
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids, "shift_labels": shift_labels}


def _pad_to(rows: list[list[int]], value: int, length: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)


def pack_shared(prefix: Sequence[int], parts: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]) -> dict[str, list[int]]:
    """Several pairs whose prompts start with the same ``prefix`` as ONE row (the prefix processed once)::

        [ prefix | pair 0: rest of prompt[:-1] | last, chosen... | last, rejected... | pair 1: ... | pad ]

    ``parts`` holds per pair (prompt after the prefix, non-empty; chosen; rejected). Position ids count on through
    the prefix and restart there for every pair (each pair sees exactly the positions of its own row);
    ``pair_ids`` is -1 on the shared prefix and the pair's index (in ``parts``) on its own tokens: a pair's tokens
    see the shared prefix and their own pair's earlier tokens only (``block_causal_mask(..., pair_ids=...)``)."""
    pre = list(prefix)
    if not pre:
        raise ValueError("a shared prefix must be non-empty")
    out = {"input_ids": list(pre), "position_ids": list(range(len(pre))), "segment_ids": [PREFIX] * len(pre),
           "shift_labels": [IGNORE] * len(pre), "pair_ids": [-1] * len(pre)}
    for j, (rest, c, r) in enumerate(parts):
        one = pack_pair(list(pre) + list(rest), c, r)
        n = len(one["input_ids"]) - (len(pre))
        for key in ("input_ids", "position_ids", "segment_ids", "shift_labels"):
            out[key].extend(one[key][len(pre):])
        out["pair_ids"].extend([j] * n)
    return out


@dataclass
class PackedPreferenceCollator:
    """Collates ``{"prompt_ids", "chosen_ids", "rejected_ids"[, "ref_chosen_logps", "ref_rejected_logps"]}``
    examples into packed rows, right-padded to the longest row (rounded up to ``pad_to_multiple_of``).

    Returns long tensors ``input_ids``, ``position_ids``, ``segment_ids``, ``shift_labels`` of shape
    ``(batch, length)`` (the 4D attention mask is built on the device from ``segment_ids``; see
    ``block_causal_mask``), and the reference log-probs when the examples carry them."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    share_prefix: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.share_prefix:
            return self._shared(examples)
        packed = [pack_pair(ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) for ex in examples]
        return self._collate(packed, examples)

    def _shared(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pairs of the batch whose prompts share their static prefix (``prefix_len``: the question-independent
        tokens, from ``prefix_cache.PrefixFinder``; without it, the whole prompt but its last token) go in one
        row; ``pair_ids`` hold each pair's index in ``examples`` (the order of the returned log-probs)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, ex in enumerate(examples):
            p = ex["prompt_ids"]
            n = int(ex.get("prefix_len") or len(p) - 1)
            groups.setdefault(tuple(p[: min(n, len(p) - 1)]), []).append(i)
        packed = []
        for key, idx in groups.items():
            if not key:  # nothing shared: one row per pair
                for i in idx:
                    one = pack_pair(examples[i]["prompt_ids"], examples[i]["chosen_ids"], examples[i]["rejected_ids"])
                    one["pair_ids"] = [i] * len(one["input_ids"])
                    packed.append(one)
                continue
            P = len(key)
            row = pack_shared(key, [(examples[i]["prompt_ids"][P:], examples[i]["chosen_ids"], examples[i]["rejected_ids"]) for i in idx])
            row["pair_ids"] = [-1 if j < 0 else idx[j] for j in row["pair_ids"]]
            packed.append(row)
        out = self._collate(packed, examples)
        out["pair_index"] = torch.arange(len(examples), dtype=torch.long)
        return out

    def _collate(self, packed: list[dict[str, list[int]]], examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(p["input_ids"]) for p in packed)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m
        out = {
            "input_ids": _pad_to([p["input_ids"] for p in packed], self.pad_token_id, length),
            "position_ids": _pad_to([p["position_ids"] for p in packed], 0, length),
            "segment_ids": _pad_to([p["segment_ids"] for p in packed], PAD, length),
            "shift_labels": _pad_to([p["shift_labels"] for p in packed], IGNORE, length),
        }
        if "pair_ids" in packed[0]:
            out["pair_ids"] = _pad_to([p["pair_ids"] for p in packed], -1, length)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)
        return out


def block_causal_mask(
    segment_ids: torch.Tensor, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
    pair_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(batch, 1, length, length)`` attention mask of packed rows, in the convention transformers passes
    through unchanged when given a 4D mask: boolean (True = may attend) for ``sdpa``, additive float (0 or the
    dtype's minimum) for ``eager``. With ``pair_ids`` (shared-prefix rows), a pair's tokens also never see
    another pair's tokens (the shared prefix, ``pair_ids == -1``, is seen by all)."""
    seg = segment_ids
    length = seg.shape[1]
    idx = torch.arange(length, device=seg.device)
    causal = (idx[:, None] >= idx[None, :]).unsqueeze(0)  # (1, q, k)
    q_seg = seg[:, :, None]
    k_seg = seg[:, None, :]
    allowed = causal & ~((q_seg == REJECTED) & (k_seg == CHOSEN)) & (k_seg != PAD) & (q_seg != PAD)
    if pair_ids is not None:
        allowed = allowed & ((pair_ids[:, None, :] == -1) | (pair_ids[:, :, None] == pair_ids[:, None, :]))
    allowed = allowed | (idx[:, None] == idx[None, :]).unsqueeze(0)  # padding queries see themselves
    allowed = allowed.unsqueeze(1)
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"packed DPO needs attn_implementation 'sdpa' or 'eager' (a custom 4D mask), got {attn_implementation!r}"
    )


def per_pair_sum(values: torch.Tensor, mask: torch.Tensor, pair_ids: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Sum of ``values`` over the positions of ``mask``, per pair (``pair_ids``), without a host sync."""
    v = values.masked_fill(~mask, 0).reshape(-1)
    idx = pair_ids.clamp(min=0).reshape(-1)
    return torch.zeros(n_pairs, dtype=v.dtype, device=v.device).scatter_add(0, idx, v)


def sequence_logps(per_token_logps: torch.Tensor, shift_labels: torch.Tensor, segment_ids: torch.Tensor,
                   pair_ids: torch.Tensor | None = None, n_pairs: int | None = None):
    """Sum of the per-position log-probs over each pair's chosen and rejected answer: ``(chosen, rejected)``
    (per row, or per pair of ``pair_ids`` for shared-prefix rows)."""
    scored = shift_labels != IGNORE
    if pair_ids is not None:
        return (per_pair_sum(per_token_logps, scored & (segment_ids == CHOSEN), pair_ids, n_pairs),
                per_pair_sum(per_token_logps, scored & (segment_ids == REJECTED), pair_ids, n_pairs))
    chosen = per_token_logps.masked_fill(~(scored & (segment_ids == CHOSEN)), 0).sum(dim=1)
    rejected = per_token_logps.masked_fill(~(scored & (segment_ids == REJECTED)), 0).sum(dim=1)
    return chosen, rejected
