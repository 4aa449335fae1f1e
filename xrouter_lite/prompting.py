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
    tools, tool_to_model = _tools_of(offered)
    return RouterPrompt(messages=messages, tools=tools, offered=ids, tool_to_model=dict(tool_to_model))


def identity_memo(table: dict, objs: tuple, build, bound: int = 256):
    """``build()``, memoised in ``table`` on the identity of the objects ``objs`` (kept in the table, so their ids
    are not reused while it holds them); at ``bound`` entries the table starts over. For values derived from
    objects the hot path reuses as they are (an offered set's specs, a tool list, action token lists)."""
    key = tuple(map(id, objs))
    hit = table.get(key)
    if hit is not None and len(hit[0]) == len(objs) and all(a is b for a, b in zip(hit[0], objs)):
        return hit[1]
    value = build()
    if len(table) >= bound:
        table.clear()
    table[key] = (objs, value)
    return value


_TOOLS_MEMO: dict[tuple[int, ...], tuple] = {}


def _tools_of(offered: Sequence[ModelSpec]):
    """The tool list of an offered set, built once per set of (frozen) ModelSpec objects and shared by the prompts
    built from it (never mutated: renderers copy): a batch of decisions builds it once, not once per question."""
    return identity_memo(_TOOLS_MEMO, tuple(offered),
                         lambda: ([tool_schema(m) for m in offered], {m.tool_name: m.id for m in offered}))


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


def common_prefix_len(a, b) -> int:
    """Length of the common prefix of two token sequences (slice comparisons, binary search: C speed)."""
    n = min(len(a), len(b))
    a, b = list(a[:n]), list(b[:n])
    if a == b:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


SCORE_TOKENS = ("full", "distinct")


def distinct_action_prefixes(actions: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each offered action's tokens up to and including the first one that no other offered action has at that
    point (the whole action when another one starts with all of it). ``score_tokens: distinct`` scores these: the
    tokens after them (the rest of the name, the closing ``", "arguments": {}}</tool_call>``) add the same
    near-zero log-probability to every candidate of a trained router, cost ~5x the candidate tokens of the choice
    itself (11 RouterBench models: 38 of 199 tokens after the shared opening) and favour short names."""
    out = []
    for i, a in enumerate(actions):
        u = max((common_prefix_len(a, b) for j, b in enumerate(actions) if j != i), default=0)
        out.append(list(a[: min(len(a), u + 1)]))
    return out


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
    return _preference_row(p, chosen, rejected, action_text, **extra)


def _preference_row(p: RouterPrompt, chosen: str, rejected: str, text, /, **extra: Any) -> dict[str, Any]:
    """A preference row over the rendered prompt ``p``: ``text(key)`` is an action's assistant message."""
    return {
        "prompt": p.messages,
        "chosen": [{"role": "assistant", "content": text(chosen)}],
        "rejected": [{"role": "assistant", "content": text(rejected)}],
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


# =====================================================================================================================
# Agentic mode (issue 16): the router may call one or two models at once, read their answers, then call again or
# select one earlier answer. One state format for training (pairs --agentic), evaluation (replay) and serving.
# Nothing above changes: a one-model call is written exactly as the one-shot action.
# =====================================================================================================================

AGENTIC_SYSTEM_PROMPT = (
    "You are a cost-aware model router working in turns. Read the user's query; call one of the offered models "
    "(the tools), or two at once, read their answers, then either call another model or pick one earlier answer "
    "with select_response. Every call is paid for: call a cheap model when it will likely be right, and a stronger, "
    "pricier one only when the answers so far disagree or look unreliable. "
    "Reply with exactly one tool call (two tool calls to call two models at once) and nothing else."
)
SELECT_TOOL = "select_response"
AGENTIC_ANSWER_WORDS = 60  # each answer the router reads is cut to this many words; the cut is written out
DEFAULT_MAX_CALLS = 3


@dataclass
class AgenticCall:
    """One model call the router made: the model, its answer (or error), its cost in USD and latency."""

    model_id: str
    response: str | None
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    read: str | None = None  # what the answer says (grading.read_answer), shown to the router; never a grade


def select_tool_schema() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": SELECT_TOOL,
            "description": "Return the answer of one earlier call as the final answer (costs nothing).",
            "parameters": {
                "type": "object",
                "properties": {"model_call_name": {"type": "string", "description": "the call_<model> name of an earlier call"}},
                "required": ["model_call_name"],
            },
        },
    }


def cut_answer(text: str | None, max_words: int = AGENTIC_ANSWER_WORDS) -> str:
    """An answer cut to ``max_words`` words (whitespace-separated, tokenizer-independent); the cut is visible."""
    if text is None:
        return ""
    words = str(text).split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + f" [... cut: {len(words) - max_words} more words]"


def is_select_key(key: str) -> bool:
    return key.startswith(SELECT_TOOL + ":")


def action_models(key: str) -> list[str]:
    """The models of an agentic action key: ``"m"`` (call m), ``"m1 + m2"`` (call both at once) or
    ``"select_response:m"`` (pick m's earlier answer)."""
    if is_select_key(key):
        return [key.split(":", 1)[1]]
    return key.split(" + ")


def call_key(models: Sequence[str]) -> str:
    return " + ".join(models)


def select_key(model_id: str) -> str:
    return f"{SELECT_TOOL}:{model_id}"


def agentic_action_text(key: str) -> str:
    """The exact answer text of an agentic action key (see ``action_models``). A one-model call is exactly
    ``action_text(model)`` (the one-shot action); two models are two tool calls, one per line."""
    if is_select_key(key):
        m = key.split(":", 1)[1]
        return "<tool_call>\n" + json.dumps({"name": SELECT_TOOL, "arguments": {"model_call_name": tool_name(m)}}) + "\n</tool_call>"
    return "\n".join(action_text(m) for m in action_models(key))


def encode_agentic_action(tokenizer, key: str) -> list[int]:
    """Token ids of an agentic action, closed by the end-of-turn token (what training and scoring use)."""
    return tokenizer(agentic_action_text(key) + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]


def _call_block(c: AgenticCall, max_words: int) -> str:
    if c.error is not None:
        body = f"error: {cut_answer(c.error, 20)} (no answer; this call is skipped)"
    else:
        read = c.read if c.read is not None else "none"
        body = f"answer read: {read}\nanswer: {cut_answer(c.response, max_words)}"
    return f"<tool_response>\n{tool_name(c.model_id)} (cost {c.cost:.6f} USD)\n{body}\n</tool_response>"


def _agreement_line(calls: Sequence[AgenticCall]) -> str:
    reads = [c.read for c in calls if c.error is None]
    known = [r for r in reads if r is not None]
    if len(known) < 2:
        return "Agreement: fewer than two answers could be read."
    top = max(set(known), key=known.count)
    n = known.count(top)
    if n == len(reads):
        return f"Agreement: all {n} answers read {top}."
    return f"Agreement: {n} of {len(reads)} answers read {top}; the answers disagree."


def build_agentic_prompt(
    query: str | Sequence[dict[str, Any]],
    offered: Sequence[ModelSpec],
    turns: Sequence[Sequence[AgenticCall]] = (),
    max_calls: int = DEFAULT_MAX_CALLS,
    max_words: int = AGENTIC_ANSWER_WORDS,
) -> RouterPrompt:
    """The router's state in agentic mode: the query, the offered models with prices (the tools, plus
    ``select_response``), and every earlier turn: the router's own tool call(s) as an assistant message and the
    answers as a ``<tool_response>`` user message (Qwen2.5's multi-turn tool format, written out so every chat
    template renders the same text). The last message says how many calls are left and whether the answers read
    so far agree. Rendered by ``render_prompt`` like the one-shot prompt."""
    base = build_router_prompt(query, offered)
    used = sum(len(t) for t in turns)
    left = max(0, max_calls - used)
    messages = [
        {"role": "system", "content": AGENTIC_SYSTEM_PROMPT},
        {"role": "user", "content": base.messages[-1]["content"] + f"\n\n(Agentic mode: at most {max_calls} model calls.)"},
    ]
    done: list[AgenticCall] = []
    for t in turns:
        if not t:
            continue
        messages.append({"role": "assistant", "content": agentic_action_text(call_key([c.model_id for c in t]))})
        done.extend(t)
        status = f"Calls used: {used} of {max_calls}" + ("; no call left, select an answer." if left == 0 else f"; {left} left.")
        blocks = "\n".join(_call_block(c, max_words) for c in t)
        if t is turns[-1]:
            blocks += "\n" + status + "\n" + _agreement_line(done)
        messages.append({"role": "user", "content": blocks})
    tools = base.tools + [select_tool_schema()]
    return RouterPrompt(
        messages=messages, tools=tools, offered=list(base.offered),
        tool_to_model={**base.tool_to_model},
    )


def parse_agentic_action(text: str, prompt: RouterPrompt, called: Sequence[str] = ()) -> str:
    """Read a generated agentic answer back into an action key: one or two ``call_<model>`` tool calls, or one
    ``select_response`` naming an earlier call. Strict, like ``parse_action`` (ActionParseError otherwise)."""
    t = text.strip()
    for s in _TRAILING_SPECIALS:
        t = t.replace(s, "")
    calls = _TOOL_CALL_RE.findall(t)
    if not calls:
        raise ActionParseError("unclosed_call" if "<tool_call>" in t else "no_call", f"{text[:200]!r}")
    if len(calls) > 2:
        raise ActionParseError("multiple_calls", f"{len(calls)} tool calls; at most two at once")
    objs = []
    for c in calls:
        try:
            obj = json.loads(c)
        except json.JSONDecodeError as e:
            raise ActionParseError("bad_json", f"{e.msg}: {c[:200]!r}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ActionParseError("bad_json", f"no string 'name': {c[:200]!r}")
        objs.append(obj)
    if any(o["name"] == SELECT_TOOL for o in objs):
        if len(objs) != 1:
            raise ActionParseError("multiple_calls", "select_response must be the only tool call")
        name = (objs[0].get("arguments") or {}).get("model_call_name")
        m = prompt.tool_to_model.get(name) if isinstance(name, str) else None
        if m is None or m not in called:
            raise ActionParseError("not_offered", f"select_response of {name!r}, which is not an earlier call")
        return select_key(m)
    models = []
    for o in objs:
        m = prompt.tool_to_model.get(o["name"])
        if m is None:
            raise ActionParseError("unknown_tool" if not o["name"].startswith("call_") else "not_offered", o["name"])
        if m in called or m in models:
            raise ActionParseError("not_offered", f"{m!r} was already called")
        models.append(m)
    return call_key(models)


def agentic_dpo_example(
    query: str,
    offered: Sequence[ModelSpec],
    turns: Sequence[Sequence[AgenticCall]],
    chosen: str,
    rejected: str,
    max_calls: int = DEFAULT_MAX_CALLS,
    **extra: Any,
) -> dict[str, Any]:
    """One agentic preference row (TRL conversational format, like ``dpo_example``): the state's messages, the
    chosen and rejected action texts, the tools. ``chosen_model``/``rejected_model`` hold action keys and
    ``offered_models`` the offered ids, followed by every action key of the row (``agentic: true``)."""
    p = build_agentic_prompt(query, offered, turns, max_calls)
    return _preference_row(p, chosen, rejected, agentic_action_text, agentic=True, **extra)


def any_action_text(key: str) -> str:
    """``action_text`` for a model id, ``agentic_action_text`` for an agentic action key (training reads both)."""
    return agentic_action_text(key)


def encode_any_action(tokenizer, key: str) -> list[int]:
    return encode_agentic_action(tokenizer, key)


def prompt_from_any_example(example: dict[str, Any]) -> RouterPrompt:
    """``prompt_from_example`` that also reads agentic rows (their tools end with ``select_response``; their
    chosen/rejected action keys count as offered)."""
    if not example.get("agentic"):
        return prompt_from_example(example)
    tools = example["tools"]
    tools = json.loads(tools) if isinstance(tools, str) else list(tools)
    offered = list(example["offered_models"])
    names = [t["function"]["name"] for t in tools if t["function"]["name"] != SELECT_TOOL]
    if len(names) != len(offered):
        raise ValueError(f"row {example.get('prompt_id')!r}: {len(names)} tools but {len(offered)} offered models")
    keys = [example["chosen_model"], example["rejected_model"]]
    return RouterPrompt(
        messages=[dict(m) for m in example["prompt"]], tools=tools,
        offered=offered + [k for k in keys if k not in offered], tool_to_model=dict(zip(names, offered)),
    )
