"""The router's prompt and action format: ONE definition used by training, evaluation and serving.

A router that is trained on one format and served with another is the bug this module exists to prevent:
``build_router_prompt`` makes the messages + tools, ``render_prompt`` turns them into the exact text the base
model sees (through the tokenizer's own chat template and its ``tools=`` support), ``action_text`` is the exact
text of the answer "call model X", and ``parse_action`` reads a generated answer back. Nothing else in the
package builds router prompts.

Action format (Qwen2.5's tool-call format, simple mode: exactly one call)::

    <tool_call>
    {"name": "call_gpt_4o_mini", "arguments": {}}
    </tool_call>

Chat templates without tool support (e.g. SmolLM2's) would silently drop ``tools=``; for those the tool block
is written into the system message with exactly the text Qwen2.5's template uses, so every base model sees the
same information.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .pool import ModelSpec, tool_name

SYSTEM_PROMPT = (
    "You are a cost-aware model router. Read the user's query and pick exactly one of the offered models "
    "(the tools) to answer it. Choose the model most likely to answer correctly at the lowest cost: a cheap "
    "model when it will likely be right, a stronger, pricier one only when the query needs it. "
    "Reply with exactly one tool call and nothing else."
)

# How earlier turns of a conversation are summarised for the router (serving): the last user turn is kept whole;
# at most HISTORY_TURNS earlier turns are shown, each cut to HISTORY_CHARS characters.
HISTORY_TURNS = 4
HISTORY_CHARS = 300

# Qwen2.5's tool block, verbatim from its chat template (used where a template has no tool support).
_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)

DEFAULT_MAX_PROMPT_TOKENS = 4096


class ActionParseError(ValueError):
    """A generated action is not exactly one valid call of an offered tool. ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class PromptTooLongError(ValueError):
    """The rendered router prompt exceeds the token cap. Nothing is ever truncated silently."""

    def __init__(self, n_tokens: int, cap: int):
        super().__init__(
            f"router prompt is {n_tokens} tokens, over the cap of {cap}; offer fewer models or raise max_prompt_tokens "
            "(the tool list and the query are never truncated)"
        )
        self.n_tokens = n_tokens
        self.cap = cap


def format_price(usd_per_m: float) -> str:
    return f"${usd_per_m:.2f}" if usd_per_m >= 0.1 or usd_per_m == 0 else f"${usd_per_m:.3f}"


def tool_schema(spec: ModelSpec) -> dict[str, Any]:
    """One OpenAI-style function tool describing one offered model (prices, tier, capabilities)."""
    caps = ", ".join(spec.capabilities) if spec.capabilities else "general"
    desc = (
        f"Send the query to {spec.id} ({spec.tier} tier; {format_price(spec.input_price)} per 1M input tokens, "
        f"{format_price(spec.output_price)} per 1M output tokens; good at: {caps})."
    )
    if spec.description:
        desc += " " + spec.description
    return {
        "type": "function",
        "function": {
            "name": spec.tool_name,
            "description": desc,
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    }


@dataclass
class RouterPrompt:
    """What the router is shown: chat messages, the tools (one per offered model) and the offered model ids."""

    messages: list[dict[str, str]]
    tools: list[dict[str, Any]]
    offered: list[str]
    tool_to_model: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> str:
        return self.messages[-1]["content"]


def conversation_to_query(messages: Sequence[dict[str, Any]]) -> str:
    """The documented rule for what the router sees of a conversation.

    The last user turn is kept whole. Up to ``HISTORY_TURNS`` earlier user/assistant/tool turns come before it,
    each cut to ``HISTORY_CHARS`` characters, under an "Earlier conversation" heading. In an agent loop the turns
    after the last user turn (the assistant's tool calls and the tools' results) come after it, the last
    ``HISTORY_TURNS`` of them, cut the same way, under "Since then". An assistant turn that calls tools reads
    ``assistant: <its text> [calls: name(arguments), ...]``; a tool result reads ``tool <name>: <result>``.
    System messages are not shown to the router. A plain conversation (no tools) reads as it always did.
    """

    def text_of(m: dict[str, Any]) -> str:
        c = m.get("content")
        if isinstance(c, list):  # OpenAI content parts
            return " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict) and p.get("type") == "text")
        return "" if c is None else str(c)

    def line(m: dict[str, Any]) -> str:
        t = text_of(m)
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        if isinstance(calls, list) and calls:
            named = []
            for c in calls:
                fn = c.get("function") if isinstance(c, dict) else None
                fn = fn if isinstance(fn, dict) else {}
                named.append(f"{fn.get('name', '?')}({fn.get('arguments', '')})")
            t = (t + " " if t else "") + "[calls: " + ", ".join(named) + "]"
        t = " ".join(t.split())
        if len(t) > HISTORY_CHARS:
            t = t[: HISTORY_CHARS - 3] + "..."
        role = m["role"]
        if role == "tool":
            role = f"tool {m['name']}" if isinstance(m.get("name"), str) else "tool"
        return f"{role}: {t}"

    turns = [m for m in messages if m.get("role") in ("user", "assistant", "tool")]
    last_user = max((i for i, m in enumerate(turns) if m.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("the conversation has no user message")
    query = text_of(turns[last_user])
    earlier = turns[:last_user][-HISTORY_TURNS:]
    since = turns[last_user + 1 :][-HISTORY_TURNS:]
    if earlier:
        query = ("Earlier conversation (summary):\n" + "\n".join(line(m) for m in earlier)
                 + "\n\nCurrent request:\n" + query)
    if since:
        query += "\n\nSince then:\n" + "\n".join(line(m) for m in since)
    return query


def build_router_prompt(query: str | Sequence[dict[str, Any]], offered: Sequence[ModelSpec]) -> RouterPrompt:
    """Messages + tools for one routing decision. ``query`` is a string or an OpenAI-style message list."""
    if len(offered) < 1:
        raise ValueError("at least one model must be offered to the router")
    ids = [m.id for m in offered]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate model in the offered list: {ids}")
    text = query if isinstance(query, str) else conversation_to_query(query)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    return RouterPrompt(
        messages=messages,
        tools=[tool_schema(m) for m in offered],
        offered=ids,
        tool_to_model={m.tool_name: m.id for m in offered},
    )


def action_text(model_id: str) -> str:
    """The exact answer text of the action "call ``model_id``" (without the end-of-turn token)."""
    return "<tool_call>\n" + json.dumps({"name": tool_name(model_id), "arguments": {}}) + "\n</tool_call>"


def _tools_block(tools: Sequence[dict[str, Any]]) -> str:
    return _TOOLS_HEADER + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + _TOOLS_FOOTER


_TOOL_SUPPORT: dict[str, bool] = {}


def template_supports_tools(tokenizer) -> bool:
    """True when the tokenizer's chat template renders ``tools=`` (checked once per chat template).

    The cache is keyed by the template text, not by ``id(tokenizer)``: an id can be reused by another tokenizer once
    the first is freed, and a wrong answer here would silently change the router prompt's format."""
    key = f"{type(tokenizer).__name__}\x1f{getattr(tokenizer, 'chat_template', None)!r}"
    if key not in _TOOL_SUPPORT:
        probe = [{"role": "user", "content": "x"}]
        tool = {
            "type": "function",
            "function": {"name": "xrouter_probe_tool", "description": "p", "parameters": {"type": "object", "properties": {}}},
        }
        try:
            text = tokenizer.apply_chat_template(probe, tools=[tool], tokenize=False, add_generation_prompt=True)
            _TOOL_SUPPORT[key] = "xrouter_probe_tool" in text
        except Exception:
            _TOOL_SUPPORT[key] = False
    return _TOOL_SUPPORT[key]


def render_prompt(tokenizer, prompt: RouterPrompt) -> str:
    """The exact text the base model reads, ending with the assistant turn's opening (generation prompt)."""
    if template_supports_tools(tokenizer):
        return tokenizer.apply_chat_template(
            prompt.messages, tools=prompt.tools, tokenize=False, add_generation_prompt=True
        )
    messages = [dict(m) for m in prompt.messages]
    messages[0]["content"] = messages[0]["content"] + _tools_block(prompt.tools)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """The token that closes the assistant's turn (``<|im_end|>`` for Qwen2.5 and SmolLM2)."""
    return tokenizer.eos_token or ""


def encode_prompt(tokenizer, prompt: RouterPrompt, max_prompt_tokens: int | None = DEFAULT_MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of the rendered prompt; raises PromptTooLongError over the cap."""
    ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise PromptTooLongError(len(ids), max_prompt_tokens)
    return ids


def encode_action(tokenizer, model_id: str) -> list[int]:
    """Token ids of the answer "call ``model_id``", closed by the end-of-turn token. Training scores exactly these
    tokens, and the score-mode router scores exactly these tokens."""
    return tokenizer(action_text(model_id) + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]


_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_TRAILING_SPECIALS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")


def parse_action(text: str, prompt: RouterPrompt) -> str:
    """Read a generated answer back into the chosen model id. Strict: exactly one ``<tool_call>`` with valid JSON
    naming an offered tool. Otherwise ActionParseError with reason ``no_call``, ``unclosed_call``,
    ``multiple_calls``, ``bad_json``, ``unknown_tool`` or ``not_offered``. Never guesses."""
    t = text.strip()
    for s in _TRAILING_SPECIALS:
        t = t.replace(s, "")
    calls = _TOOL_CALL_RE.findall(t)
    if not calls:
        if "<tool_call>" in t:
            raise ActionParseError("unclosed_call", f"a <tool_call> without </tool_call>: {text[:200]!r}")
        raise ActionParseError("no_call", f"no <tool_call> in the answer: {text[:200]!r}")
    if len(calls) > 1 or t.count("<tool_call>") > 1:
        raise ActionParseError("multiple_calls", f"{t.count('<tool_call>')} tool calls; simple mode takes exactly one")
    try:
        obj = json.loads(calls[0])
    except json.JSONDecodeError as e:
        raise ActionParseError("bad_json", f"the tool call is not valid JSON ({e.msg}): {calls[0][:200]!r}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ActionParseError("bad_json", f"the tool call has no string 'name': {calls[0][:200]!r}")
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        raise ActionParseError("bad_json", f"'arguments' must be an object, got {type(args).__name__}")
    name = obj["name"]
    if name in prompt.tool_to_model:
        return prompt.tool_to_model[name]
    if name.startswith("call_"):
        raise ActionParseError("not_offered", f"{name!r} is not among the offered tools {sorted(prompt.tool_to_model)}")
    raise ActionParseError("unknown_tool", f"unknown tool {name!r}")


def dpo_example(
    query: str, offered: Sequence[ModelSpec], chosen: str, rejected: str, **extra: Any
) -> dict[str, Any]:
    """One row of ``dpo_train_data.json`` in TRL's conversational preference format (+ ``tools`` as a JSON string,
    which TRL passes to the chat template). Extra columns (prompt_id, rewards, ...) pass through."""
    p = build_router_prompt(query, offered)
    if chosen not in p.offered or rejected not in p.offered:
        raise ValueError(f"chosen {chosen!r} and rejected {rejected!r} must both be offered ({p.offered})")
    return {
        "prompt": p.messages,
        "chosen": [{"role": "assistant", "content": action_text(chosen)}],
        "rejected": [{"role": "assistant", "content": action_text(rejected)}],
        "tools": json.dumps(p.tools, ensure_ascii=False),
        "offered_models": p.offered,
        "chosen_model": chosen,
        "rejected_model": rejected,
        **extra,
    }


def prompt_from_example(example: dict[str, Any]) -> RouterPrompt:
    """The RouterPrompt stored in a dpo_train_data.json row (messages + tools exactly as written by the pairs
    stage), so training renders the very prompt the pairs stage built."""
    tools = example["tools"]
    tools = json.loads(tools) if isinstance(tools, str) else list(tools)
    offered = list(example["offered_models"])
    names = [t["function"]["name"] for t in tools]
    if len(names) != len(offered):
        raise ValueError(f"row {example.get('prompt_id')!r}: {len(names)} tools but {len(offered)} offered models")
    return RouterPrompt(
        messages=[dict(m) for m in example["prompt"]],
        tools=tools,
        offered=offered,
        tool_to_model=dict(zip(names, offered)),
    )
