"""Chat templates render exactly as transformers renders them."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from hf_chat_templates import ALL_STYLES, LLAMA3_STYLE, MISTRAL_STYLE, NAMESPACE_STYLE, QWEN_STYLE
from hf_fixtures import CHATML_TEMPLATE, train_tokenizer, write_tokenizer_dir

from forgellm.errors import InvalidRequestError, ModelLoadError
from forgellm.hf import Tokenizer, compile_chat_template, render_chat_template

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city — «météo» 天气",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello! 你好 😀"}],
    "with_system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  What is 2+2?  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "Write code."},
        {"role": "assistant", "content": "def f():\n    return 1"},
        {"role": "user", "content": "Thanks </s> <|im_end|>"},
    ],
}

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,  # OpenAI clients send null content with tool calls; it must be dropped
        "reasoning_content": "  I should call the tool.  ",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": '{"temp": 21}'},
]


@pytest.fixture(scope="module")
def ours(chatml_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(chatml_tokenizer_dir)


@pytest.fixture(scope="module")
def ours_llama(llama_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(llama_tokenizer_dir)


@pytest.mark.parametrize("style", sorted(ALL_STYLES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_templates_match_transformers(request, style, conversation, add_generation_prompt):
    # Llama/Mistral-style templates need a bos_token; the ChatML tokenizer has none.
    needs_bos = style in ("llama3", "mistral")
    ours = request.getfixturevalue("ours_llama" if needs_bos else "ours")
    reference = request.getfixturevalue("hf_llama_tokenizer" if needs_bos else "hf_chatml_tokenizer")
    messages = CONVERSATIONS[conversation]
    kwargs = {"chat_template": ALL_STYLES[style], "add_generation_prompt": add_generation_prompt}
    expected = reference.apply_chat_template(messages, tokenize=False, **kwargs)
    got = ours.apply_chat_template(messages, **kwargs)
    assert got == expected
    assert messages[-1]["content"].strip() in got
    assert got.endswith("assistant\n") == (add_generation_prompt and style in ("qwen", "namespace"))


def test_undefined_bos_token_is_an_invalid_request(ours, hf_chatml_tokenizer):
    import jinja2

    messages = CONVERSATIONS["single_user"]
    with pytest.raises(jinja2.UndefinedError):
        hf_chatml_tokenizer.apply_chat_template(messages, chat_template=LLAMA3_STYLE, tokenize=False)
    with pytest.raises(InvalidRequestError, match="bos_token"):
        ours.apply_chat_template(messages, chat_template=LLAMA3_STYLE)


@pytest.mark.parametrize("template", [QWEN_STYLE, NAMESPACE_STYLE], ids=["qwen", "namespace"])
@pytest.mark.parametrize("extra", [{}, {"enable_thinking": False}])
def test_tool_calls_and_kwargs_match_transformers(ours, hf_chatml_tokenizer, template, extra):
    kwargs = {"chat_template": template, "tools": TOOLS, **extra}
    expected = hf_chatml_tokenizer.apply_chat_template(
        TOOL_CONVERSATION, tokenize=False, add_generation_prompt=True, **kwargs
    )
    got = ours.apply_chat_template(TOOL_CONVERSATION, add_generation_prompt=True, **kwargs)
    assert got == expected
    assert "get_weather" in got and "None" not in got


def test_namespace_template_shows_reasoning_after_last_query(ours):
    got = ours.apply_chat_template(TOOL_CONVERSATION, chat_template=NAMESPACE_STYLE, enable_thinking=False)
    assert "<think>\nI should call the tool.\n</think>" in got
    assert '[{"type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}}]' in got
    assert "Tool results above." in got
    assert got.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_default_template_is_the_inline_one(ours, hf_chatml_tokenizer):
    messages = CONVERSATIONS["multi_turn"]
    assert ours.chat_template == CHATML_TEMPLATE
    expected = hf_chatml_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages) == expected
    assert expected.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_llama3_style_puts_bos_first(ours_llama, hf_llama_tokenizer):
    messages = CONVERSATIONS["with_system"]
    got = ours_llama.apply_chat_template(messages, chat_template=LLAMA3_STYLE)
    assert got == hf_llama_tokenizer.apply_chat_template(
        messages, chat_template=LLAMA3_STYLE, tokenize=False, add_generation_prompt=True
    )
    assert got.startswith("<s><|start_header_id|>system") and got.count("<s>") == 1
    assert "What is 2+2?<|eot_id|>" in got  # | trim removed the spaces


def test_mistral_style_raise_exception_becomes_invalid_request(ours_llama, hf_llama_tokenizer):
    import jinja2

    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError) as hf_error:
        hf_llama_tokenizer.apply_chat_template(bad, chat_template=MISTRAL_STYLE, tokenize=False)
    with pytest.raises(InvalidRequestError) as error:
        ours_llama.apply_chat_template(bad, chat_template=MISTRAL_STYLE)
    assert str(error.value) == str(hf_error.value)
    assert "roles must alternate" in str(error.value)


def test_strftime_now_and_tojson_options():
    template = compile_chat_template(
        "{{ strftime_now('%Y') }}|{{ data | tojson }}|{{ data | tojson(indent=1, sort_keys=true) }}"
    )
    got = render_chat_template(template, [{"role": "user", "content": "x"}], data={"b": "é<>", "a": [1]})
    year, compact, indented = got.split("|")
    assert int(year) in (datetime.datetime.now().year, datetime.datetime.now().year - 1)
    assert compact == '{"b": "é<>", "a": [1]}'  # no HTML escaping, no ASCII escaping
    assert indented == '{\n "a": [\n  1\n ],\n "b": "é<>"\n}'


def test_sandbox_blocks_underscore_namespace_and_dunder_access():
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(InvalidRequestError):
        render_chat_template(compile_chat_template("{% set ns = namespace(_x=1) %}{{ ns._x }}"), messages)
    with pytest.raises(InvalidRequestError):
        render_chat_template(compile_chat_template("{{ messages.__class__.__mro__ }}"), messages)


def test_special_tokens_are_variables_and_kwargs_override(ours):
    template = "{{ eos_token }}|{{ pad_token }}|{{ bos_token is defined }}|{{ custom }}"
    assert ours.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template, custom=7) == (
        "<|im_end|>|<|endoftext|>|False|7"
    )
    assert (
        ours.apply_chat_template([{"role": "user", "content": "x"}], chat_template=template, eos_token="E")[:2] == "E|"
    )


def test_caller_messages_are_not_modified(ours):
    messages = [dict(m) for m in TOOL_CONVERSATION]
    ours.apply_chat_template(messages, chat_template=NAMESPACE_STYLE)
    assert messages == TOOL_CONVERSATION and "thinking" not in messages[1]


def test_template_compiled_once_per_tokenizer(ours):
    template = "{{ messages[0].content }}!"
    ours.apply_chat_template([{"role": "user", "content": "a"}], chat_template=template)
    compiled = ours._compiled[template]
    assert ours.apply_chat_template([{"role": "user", "content": "b"}], chat_template=template) == "b!"
    assert ours._compiled[template] is compiled
    for i in range(100):  # per-request templates do not grow the cache without bound
        ours.apply_chat_template([{"role": "user", "content": "c"}], chat_template=f"{{{{ {i} }}}}")
    assert len(ours._compiled) <= 32


def test_chat_template_errors(tmp_path, ours):
    with pytest.raises(InvalidRequestError, match="invalid chat template"):
        ours.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% if %}")
    with pytest.raises(InvalidRequestError, match="empty conversation"):
        ours.apply_chat_template([])
    broken = write_tokenizer_dir(tmp_path / "broken", train_tokenizer(), {"chat_template": "{% for %}"})
    with pytest.raises(ModelLoadError, match="does not compile"):
        Tokenizer.from_dir(broken)
    plain = Tokenizer.from_dir(write_tokenizer_dir(tmp_path / "plain", train_tokenizer(), {}))
    assert plain.chat_template is None
    with pytest.raises(InvalidRequestError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "x"}])


def test_jinja_file_wins_over_inline_and_named_templates(tmp_path):
    named = [{"name": "default", "template": "D{{ messages|length }}"}, {"name": "tool_use", "template": "T"}]
    directory = write_tokenizer_dir(tmp_path / "named", train_tokenizer(), {"chat_template": named})
    tokenizer = Tokenizer.from_dir(directory)
    messages = [{"role": "user", "content": "x"}]
    assert tokenizer.chat_template == "D{{ messages|length }}"
    assert tokenizer.apply_chat_template(messages) == "D1"
    assert tokenizer.apply_chat_template(messages, tools=TOOLS) == "T"
    assert tokenizer.apply_chat_template(messages, chat_template="tool_use") == "T"
    (directory / "chat_template.jinja").write_text("J{{ add_generation_prompt }}", encoding="utf-8")
    from_file = Tokenizer.from_dir(directory)
    assert from_file.chat_template == "J{{ add_generation_prompt }}"
    assert from_file.apply_chat_template(messages, add_generation_prompt=False) == "JFalse"
