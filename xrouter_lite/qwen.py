"""Qwen2.5's tokenizer and chat template, offline: exact Qwen2.5 token counts without the Hugging Face Hub.

    from xrouter_lite.qwen import qwen_tokenizer
    tok = qwen_tokenizer()                       # a transformers PreTrainedTokenizerFast
    tok("Hello world")["input_ids"]              # [9707, 1879], as Qwen2.5's own tokenizer gives
    tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)

How it is built: the byte-level BPE comes from Qwen2.5's ``qwen.tiktoken`` ranks (``assets.qwen_vocab_path()``,
151,643 entries) through ``transformers``' ``TikTokenConverter``, with Qwen2's pre-tokenizer regex (single digits:
``\\p{N}``, unlike tiktoken's cl100k ``\\p{N}{1,3}``), NFC normalisation, byte-level decoding and Qwen2.5's 22
added tokens (ids 151643..151664; ``<tool_call>``/``</tool_call>`` are not special). The chat template is
Qwen2.5-Instruct's, with its native ``tools=`` support (``xrouter_lite/assets/qwen2_5_chat_template.jinja``,
byte-identical to the original Qwen2.5 template that TRL keeps in ``trl/chat_templates/qwen2_5.jinja``, so TRL
recognises the tokenizer as Qwen2.5).

The first call builds the merges (a few seconds) and saves the tokenizer under ``models/qwen2.5-tokenizer/``;
later calls reload it from there (well under a second) and keep it in memory for the process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from .assets import models_dir, qwen_vocab_path

QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's added tokens in id order, from 151643; (text, special).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", True),
    ("<|fim_middle|>", True),
    ("<|fim_suffix|>", True),
    ("<|fim_pad|>", True),
    ("<|repo_name|>", True),
    ("<|file_sep|>", True),
)
FIRST_ADDED_ID = 151643
MODEL_MAX_LENGTH = 131072
CACHE_DIRNAME = "qwen2.5-tokenizer"
_BUILD_VERSION = 1


def chat_template_path() -> Path:
    return Path(__file__).resolve().parent / "assets" / "qwen2_5_chat_template.jinja"


def chat_template() -> str:
    """Qwen2.5-Instruct's chat template (with tools support)."""
    return chat_template_path().read_text(encoding="utf-8")


def _stamp(vocab: Path, template: str) -> dict:
    st = vocab.stat()
    return {
        "version": _BUILD_VERSION,
        "vocab_size_bytes": st.st_size,
        "template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
    }


def build_qwen_tokenizer(vocab_path: str | Path | None = None):
    """Build the tokenizer from the tiktoken ranks (slow path, a few seconds). Prefer ``qwen_tokenizer()``."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = Path(vocab_path) if vocab_path else qwen_vocab_path()
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN2_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    n_base = backend.get_vocab_size(with_added_tokens=False)
    if n_base != FIRST_ADDED_ID:
        raise ValueError(f"{vocab}: expected {FIRST_ADDED_ID} BPE ranks (Qwen2.5), found {n_base}")
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    for i, (t, _) in enumerate(ADDED_TOKENS):
        got = backend.token_to_id(t)
        if got != FIRST_ADDED_ID + i:
            raise RuntimeError(f"added token {t!r} got id {got}, expected {FIRST_ADDED_ID + i}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        padding_side="right",
    )
    tok.chat_template = chat_template()
    return tok


@functools.lru_cache(maxsize=1)
def qwen_tokenizer(cache_dir: str | None = None):
    """Qwen2.5's tokenizer (exact token ids) with Qwen2.5-Instruct's chat template, built once and cached on disk."""
    from transformers import PreTrainedTokenizerFast

    vocab = qwen_vocab_path()
    template = chat_template()
    out = Path(cache_dir) if cache_dir else models_dir() / CACHE_DIRNAME
    stamp_file = out / "xrouter_build.json"
    stamp = _stamp(vocab, template)
    if stamp_file.exists() and (out / "tokenizer.json").exists():
        try:
            if json.loads(stamp_file.read_text(encoding="utf-8")) == stamp:
                tok = PreTrainedTokenizerFast.from_pretrained(str(out))
                tok.chat_template = template
                return tok
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    tok = build_qwen_tokenizer(vocab)
    # written beside the target under a per-process name, then renamed: concurrent builders never see half a folder
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tok.save_pretrained(str(tmp))
        (tmp / "xrouter_build.json").write_text(json.dumps(stamp), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            pass  # another process put its (identical) build in place first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok
