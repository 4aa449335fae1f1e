"""The router prompt and action format (prompting.py) and the offline Qwen2.5 tokenizer (qwen.py), with the real
SmolLM2 tokenizer and exact Qwen2.5 token ids."""

from __future__ import annotations

import json

import pytest

from xrouter_lite.pool import ModelSpec
from xrouter_lite.prompting import (
    HISTORY_CHARS,
    ActionParseError,
    PromptTooLongError,
    action_text,
    build_router_prompt,
    conversation_to_query,
    dpo_example,
    encode_action,
    encode_prompt,
    parse_action,
    prompt_from_example,
    render_prompt,
    template_supports_tools,
)


@pytest.fixture(scope="module")
def qwen_tok():
    from xrouter_lite.qwen import qwen_tokenizer

    return qwen_tokenizer()


def _gsm8k_questions(shared_data, n):
    out = []
    with open(shared_data / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    return out


# ---- the prompt -----------------------------------------------------------------------------------------------


def test_prompt_lists_exactly_the_offered_models_in_order(pool18):
    offered = pool18.subset(["o3", "gpt-4o-mini", "gpt-4.1"])
    p = build_router_prompt("How many legs has a spider?", offered)
    assert p.offered == ["o3", "gpt-4o-mini", "gpt-4.1"]
    assert [t["function"]["name"] for t in p.tools] == ["call_o3", "call_gpt_4o_mini", "call_gpt_4_1"]
    assert p.tool_to_model == {"call_o3": "o3", "call_gpt_4o_mini": "gpt-4o-mini", "call_gpt_4_1": "gpt-4.1"}
    assert p.query == "How many legs has a spider?"
    assert "$10.00 per 1M input tokens" not in p.tools[1]["function"]["description"]  # gpt-4o-mini is cheap
    with pytest.raises(ValueError, match="duplicate"):
        build_router_prompt("q", [offered[0], offered[0]])
    with pytest.raises(ValueError, match="at least one"):
        build_router_prompt("q", [])


def test_smollm2_render_keeps_every_tool_and_the_whole_query(smol_tokenizer, pool18):
    assert not template_supports_tools(smol_tokenizer)  # SmolLM2's template ignores tools=
    query = "A long question. " * 200 + "END-OF-QUERY"
    p = build_router_prompt(query, list(pool18))
    text = render_prompt(smol_tokenizer, p)
    for spec in pool18:
        assert f'"name": "{spec.tool_name}"' in text
    assert query in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "<tools>" in text and "</tools>" in text


def test_prompt_over_the_cap_raises_never_truncates(smol_tokenizer, pool18):
    p = build_router_prompt("word " * 3000, list(pool18))
    n = len(encode_prompt(smol_tokenizer, p, max_prompt_tokens=None))
    assert n > 3000
    with pytest.raises(PromptTooLongError) as e:
        encode_prompt(smol_tokenizer, p, max_prompt_tokens=n - 1)
    assert e.value.n_tokens == n and e.value.cap == n - 1
    assert len(encode_prompt(smol_tokenizer, p, max_prompt_tokens=n)) == n


def test_conversation_history_rule():
    msgs = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first " * 100},
        {"role": "assistant", "content": "answer"},
        {"role": "tool", "content": "a tool result"},
        {"role": "user", "content": [{"type": "text", "text": "the last question"}]},
    ]
    q = conversation_to_query(msgs)
    assert q.endswith("Current request:\nthe last question")
    assert "be nice" not in q and "\ntool: a tool result\n" in q  # tool results are read, system prompts are not
    first_line = q.splitlines()[1]
    assert first_line.startswith("user: first") and len(first_line) == len("user: ") + HISTORY_CHARS
    assert conversation_to_query([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ValueError, match="no user message"):
        conversation_to_query([{"role": "assistant", "content": "x"}])


def test_an_agent_loop_shows_the_tool_calls_and_results_after_the_request():
    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "18 C, rain " + "x" * 500},
    ]
    q = conversation_to_query(msgs)
    head, since = q.split("\n\nSince then:\n")
    assert head == "Weather in Paris?"
    call, result = since.splitlines()
    assert call == 'assistant: [calls: get_weather({"city": "Paris"})]'
    assert result.startswith("tool get_weather: 18 C, rain") and len(result) == len("tool get_weather: ") + HISTORY_CHARS


# ---- the action ---------------------------------------------------------------------------------------------------


def test_every_action_round_trips_through_smollm2_tokens(smol_tokenizer, pool18, pool_rb):
    for pool in (pool18, pool_rb):
        p = build_router_prompt("q", list(pool))
        for spec in pool:
            ids = encode_action(smol_tokenizer, spec.id)
            assert ids[-1] == smol_tokenizer.eos_token_id
            text = smol_tokenizer.decode(ids)
            assert parse_action(text, p) == spec.id


@pytest.mark.parametrize(
    "text,reason",
    [
        ("I pick gpt-4o-mini", "no_call"),
        ('<tool_call>\n{"name": "call_gpt_4o_mini", "arguments": {}}', "unclosed_call"),
        (action_text("gpt-4o-mini") + action_text("o3"), "multiple_calls"),
        ("<tool_call>\n{name: call_gpt_4o_mini}\n</tool_call>", "bad_json"),
        ('<tool_call>\n{"name": "call_gpt_4o_mini", "arguments": []}\n</tool_call>', "bad_json"),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', "bad_json"),
        (action_text("gpt-5"), "not_offered"),
        ('<tool_call>\n{"name": "search_web", "arguments": {}}\n</tool_call>', "unknown_tool"),
    ],
)
def test_parse_action_is_strict(pool18, text, reason):
    p = build_router_prompt("q", pool18.subset(["gpt-4o-mini", "o3"]))
    with pytest.raises(ActionParseError) as e:
        parse_action(text, p)
    assert e.value.reason == reason


def test_parse_action_accepts_trailing_end_of_turn(pool18):
    p = build_router_prompt("q", pool18.subset(["gpt-4o-mini", "o3"]))
    assert parse_action("  " + action_text("o3") + "<|im_end|>", p) == "o3"


def test_dpo_example_round_trips_to_the_same_prompt(smol_tokenizer, pool_rb):
    offered = pool_rb.subset(["claude-v2", "mistralai/mistral-7b-chat", "gpt-4-1106-preview"])
    row = dpo_example("Which is heavier?", offered, "mistralai/mistral-7b-chat", "gpt-4-1106-preview", prompt_id="x")
    assert row["prompt"][-1] == {"role": "user", "content": "Which is heavier?"}
    assert row["chosen"] == [{"role": "assistant", "content": action_text("mistralai/mistral-7b-chat")}]
    assert row["offered_models"] == [m.id for m in offered] and row["prompt_id"] == "x"
    again = prompt_from_example(json.loads(json.dumps(row)))  # through a JSON file and back
    direct = build_router_prompt("Which is heavier?", offered)
    assert render_prompt(smol_tokenizer, again) == render_prompt(smol_tokenizer, direct)
    with pytest.raises(ValueError, match="must both be offered"):
        dpo_example("q", offered, "claude-v2", "claude-v1")


# ---- the offline Qwen2.5 tokenizer ------------------------------------------------------------------------------


def test_qwen_known_token_ids(qwen_tok):
    assert qwen_tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert qwen_tok.convert_tokens_to_ids("<|im_start|>") == 151644
    assert qwen_tok.convert_tokens_to_ids("<|im_end|>") == 151645 == qwen_tok.eos_token_id
    assert qwen_tok.pad_token_id == 151643
    assert qwen_tok.convert_tokens_to_ids("<tool_call>") == 151657
    assert qwen_tok.convert_tokens_to_ids("</tool_call>") == 151658
    assert qwen_tok.convert_tokens_to_ids("<|file_sep|>") == 151664
    assert len(qwen_tok) == 151665
    # Qwen2 splits numbers into single digits
    assert qwen_tok("12345", add_special_tokens=False)["input_ids"] == [16, 17, 18, 19, 20]


def test_qwen_matches_tiktoken_on_real_text(qwen_tok, shared_data):
    """Token for token equal to tiktoken run on the same ranks with Qwen2's regex (the reference encoder)."""
    import unicodedata

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from xrouter_lite.assets import qwen_vocab_path
    from xrouter_lite.qwen import QWEN2_PATTERN

    enc = tiktoken.Encoding("qwen2.5", pat_str=QWEN2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(qwen_vocab_path())), special_tokens={})
    texts = _gsm8k_questions(shared_data, 200) + ["Cafe\u0301 \ufb01 中文 😀 \t\t x  \r\n\r\n  it's  IT'S 3.14159"]
    for t in texts:
        assert qwen_tok(t, add_special_tokens=False)["input_ids"] == enc.encode(unicodedata.normalize("NFC", t)), t


def test_qwen_native_tools_path_equals_the_fallback_text(qwen_tok, smol_tokenizer, pool18):
    """Qwen2.5 renders tools= natively; SmolLM2 gets the same block injected: the two texts are identical."""
    assert template_supports_tools(qwen_tok)
    extra = ModelSpec(
        id="local/modele-fr", litellm_model="ollama/x", input_price=0, output_price=0, context_window=8192,
        max_output_tokens=1024, tier="local", description="Répond en français « vite ».",
    )
    p = build_router_prompt("Combien font 2+2 ? 😀", [*pool18.subset(["gpt-4o-mini", "o3"]), extra])
    native = qwen_tok.apply_chat_template(p.messages, tools=p.tools, tokenize=False, add_generation_prompt=True)
    assert render_prompt(qwen_tok, p) == native
    assert native == render_prompt(smol_tokenizer, p)
    assert native.startswith("<|im_start|>system\nYou are a cost-aware model router.")
    assert "# Tools" in native and "« vite »" in native


def test_qwen_chat_template_is_qwen25_verbatim(qwen_tok):
    """TRL keeps Qwen2.5-Instruct's original template (checked weekly against the Hub) for identity comparison:
    ours is byte-identical, so TRL also recognises the tokenizer as Qwen2.5."""
    from pathlib import Path

    import trl

    ref = Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja"
    if not ref.exists():
        pytest.skip("this TRL version ships no qwen2_5.jinja")
    assert qwen_tok.chat_template == ref.read_text(encoding="utf-8")


def test_qwen_prompt_and_action_round_trip(qwen_tok, pool_rb):
    p = build_router_prompt("Which planet is largest?", list(pool_rb))
    prompt_ids = encode_prompt(qwen_tok, p)
    for spec in pool_rb:
        ids = encode_action(qwen_tok, spec.id)
        assert ids[0] == 151657 and ids[-1] == 151645  # <tool_call> ... <|im_end|>
        full = qwen_tok.decode(prompt_ids + ids)
        assert full.startswith(render_prompt(qwen_tok, p))
        assert parse_action(full[len(render_prompt(qwen_tok, p)):], p) == spec.id


def test_qwen_tokenizer_is_cached_on_disk(tmp_path, qwen_tok):
    from xrouter_lite.qwen import qwen_tokenizer

    a = qwen_tokenizer.__wrapped__(str(tmp_path / "tok"))  # builds and saves
    assert (tmp_path / "tok" / "tokenizer.json").exists()
    b = qwen_tokenizer.__wrapped__(str(tmp_path / "tok"))  # reloads
    text = "<|im_start|>user\nHello world<|im_end|>\n<tool_call>"
    assert a(text)["input_ids"] == b(text)["input_ids"] == qwen_tok(text)["input_ids"]
    assert b.chat_template == qwen_tok.chat_template


def test_tool_support_is_judged_per_template_not_per_object(smol_tokenizer):
    """Regression: the check was cached by id(tokenizer); a freed tokenizer's id reused by one with another template
    would have inherited the wrong answer (and a different prompt format)."""
    import copy

    from xrouter_lite.prompting import template_supports_tools

    assert template_supports_tools(smol_tokenizer) is False
    tok = copy.copy(smol_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if tools %}{% for t in tools %}"
        "{{ t['function']['name'] }}{% endfor %}{% endif %}"
    )
    assert template_supports_tools(tok) is True
    assert template_supports_tools(smol_tokenizer) is False
