"""Tool formats, prompts and parsing (collab_core.tools): the model's own format where mlx-lm knows it, the
generic fallback elsewhere; tool calls end to end through the engine."""

import json
import shutil

import pytest

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import ConfigError
from collab_core.prompts import cloud_prompt, render_prompt
from collab_core.router import ScheduledRouter
from collab_core.tools import (
    GENERIC,
    VisibleText,
    normalize_tools,
    parse_tool_calls,
    tool_choice_names,
    tool_format,
    tool_messages,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ADD = {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                       "b": {"type": "integer"}}}}
TOOLS = [WEATHER, ADD]
# A Qwen2.5-style template: a tools section, assistant tool_calls and tool results rendered by the template.
QWEN_LIKE = (
    "{%- if tools %}<|im_start|>system\n{{ messages[0]['content'] if messages[0]['role'] == 'system' else 'You are "
    "helpful.' }}\n\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\nFor each "
    "call return <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>"
    "\n{%- endif %}{%- for message in messages %}{%- if message.role == 'system' and tools %}{%- elif message.role "
    "== 'assistant' and message.tool_calls %}<|im_start|>assistant\n{{ message.content }}{%- for tool_call in "
    "message.tool_calls %}{%- set tool_call = tool_call.function %}\n<tool_call>\n{\"name\": \"{{ tool_call.name }}"
    "\", \"arguments\": {{ tool_call.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n{%- elif "
    "message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
CONVERSATION = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "content": "18 C, sunny", "tool_call_id": "c1", "name": "get_weather"}]


@pytest.fixture(scope="module", params=["text-markers", "token-markers"])
def native_lm(request, tiny_dir, tmp_path_factory):
    """A tiny model with a Qwen2.5-like tools template; with ``token-markers`` its ``<tool_call>`` and
    ``</tool_call>`` are single added tokens, as in Qwen2.5's vocabulary (the grammar must match the token)."""
    from tiny import make_tiny_model

    from collab_core.local.loading import load_local_model

    folder = tmp_path_factory.mktemp("m") / "tiny-qwen-like"
    if request.param == "token-markers":
        make_tiny_model(folder, added=("<tool_call>", "</tool_call>"))
    else:
        shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": QWEN_LIKE}))
    config = json.loads((folder / "config.json").read_text())  # room for the tools section
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return load_local_model(str(folder))


def test_specs_and_choices():
    tools = normalize_tools(TOOLS)
    assert [t["function"]["name"] for t in tools] == ["get_weather", "add"] and tools[1]["type"] == "function"
    with pytest.raises(ConfigError):
        normalize_tools([{"description": "no name"}])
    assert tool_choice_names(tools, "auto") == (tools, False)
    assert tool_choice_names(tools, "none") == ([], False)
    assert tool_choice_names(tools, "any") == (tools, True) == tool_choice_names(tools, "required")
    assert tool_choice_names(tools, "add") == ([tools[1]], True)
    with pytest.raises(ConfigError, match="names no tool"):
        tool_choice_names(tools, "mul")


def test_parse_calls_text_and_invalid_calls():
    text = ('I will check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
            '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call><tool_call>{"name": "x", ')
    content, calls, invalid = parse_tool_calls(text)
    assert content == "I will check."
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"}), ("add", {"a": 1})]
    assert len(invalid) == 1 and invalid[0].text.startswith('{"name": "x"')
    assert calls[0].id != calls[1].id and calls[0].openai()["function"]["name"] == "get_weather"
    assert parse_tool_calls("just text") == ("just text", [], [])
    # a bare call object naming a known tool (a cloud asked in the generic format often answers so)
    for bare in ('{"name": "get_weather", "arguments": {"city": "Tokyo"}}',
                 '```json\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Tokyo\\"}"}\n```'):
        _, calls, _ = parse_tool_calls(bare, GENERIC, TOOLS)
        assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Tokyo"})]
    assert parse_tool_calls('{"name": "nope", "arguments": {}}', GENERIC, TOOLS)[1] == []
    assert parse_tool_calls('{"name": "get_weather", "arguments": {}}')[1] == []  # no tools given: not a call


def test_visible_text_holds_back_the_calls():
    v = VisibleText()
    pieces = ["Hello", " <", "tool", "_call>", "\n{...}", "</tool_call>"]
    assert "".join(v.feed(p) for p in pieces) + v.finish() == "Hello "
    v = VisibleText()
    assert v.feed("a <") == "a " and v.feed("b") == "<b" and v.finish() == ""
    v = VisibleText()
    assert v.feed("x <tool") == "x " and v.finish() == "<tool"  # an unfinished tag that never became one


def test_generic_fallback_prompt(tiny_lm):
    assert tool_format(tiny_lm) is GENERIC  # the tiny ChatML template has no tools section
    msgs = tool_messages([{"role": "system", "content": "Be brief."}] + CONVERSATION, TOOLS)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in msgs[0]["content"] and "<tool_call>" in msgs[0]["content"]
    assert msgs[2] == {"role": "assistant", "content":
                       '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
    assert msgs[3] == {"role": "user", "content": "<tool_response>\n18 C, sunny\n</tool_response>"}
    text, ids = render_prompt(tiny_lm, CONVERSATION, tools=TOOLS)
    assert "<|im_start|>tool" not in text and "<tool_response>" in text and text.endswith("<|im_start|>assistant\n")
    assert ids == list(tiny_lm.tokenizer.encode(text, add_special_tokens=False))
    schema_text, _ = render_prompt(tiny_lm, "Name?", json_schema={"type": "object", "properties": {"a": {}}})
    assert "JSON schema" in schema_text and '"properties"' in schema_text


def test_native_format_uses_the_template_and_mlx_lm_parser(native_lm):
    fmt = tool_format(native_lm)
    assert fmt.kind == "native" and fmt.start == "<tool_call>" and fmt.parser is native_lm.tokenizer.tool_parser
    text, _ = render_prompt(native_lm, CONVERSATION, tools=TOOLS)
    assert "# Tools\n<tools>" in text and '"name": "add"' in text  # the template's own tools section
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in text
    assert "You can call these tools" not in text  # not the generic instructions
    # the cloud always gets the generic text form
    cloud = cloud_prompt(CONVERSATION, tools=TOOLS)
    assert cloud[0]["role"] == "system" and "You can call these tools" in cloud[0]["content"]
    assert all(set(m) == {"role", "content"} for m in cloud)


BOUNDED = [{"name": "add", "parameters": {"type": "object", "required": ["a", "b"], "properties": {
    "a": {"type": "integer", "minimum": 0, "maximum": 999}, "b": {"type": "integer", "minimum": 0, "maximum": 999}}}},
    {"name": "unit", "parameters": {"type": "object", "properties": {"u": {"enum": ["C", "F"]}}, "required": ["u"]}}]


@pytest.mark.parametrize("choice", ["required", "add"])
@pytest.mark.parametrize("seed", [1, 2])
def test_forced_calls_parse_and_validate_on_a_random_model(native_lm, choice, seed):
    """The tiny model's weights are random; under the grammar its forced call always parses and validates."""
    g = Engine(native_lm).generate("Add 2 and 3?", tools=BOUNDED, tool_choice=choice, max_tokens=120,
                                   temperature=1.0, seed=seed)
    assert g.finish_reason == "stop" and len(g.tool_calls) == 1 and not g.structured.invalid_tool_calls
    call = g.tool_calls[0]
    assert call.name in (("add", "unit") if choice == "required" else ("add",))
    if call.name == "add":
        assert set(call.arguments) == {"a", "b"} and all(0 <= v <= 999 for v in call.arguments.values())
    else:
        assert call.arguments in ({"u": "C"}, {"u": "F"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_optional_calls_are_text_or_valid_calls_on_a_random_model(native_lm, seed):
    """tool_choice auto: prose, or prose then calls that parse and validate -- never a half call."""
    g = Engine(native_lm).generate("Add 2 and 3?", tools=BOUNDED, max_tokens=120, temperature=1.0, seed=seed)
    assert not g.structured.invalid_tool_calls
    if g.finish_reason == "stop":
        assert all(c.name in ("add", "unit") for c in g.tool_calls)


def test_single_token_markers_are_matched_as_tokens(native_lm):
    from collab_core.tools import constraint

    start = native_lm.tokenizer.encode("<tool_call>", add_special_tokens=False)
    lark = constraint(native_lm, BOUNDED, "required", None).lark
    if len(start) == 1:  # the token-markers model
        assert lark.startswith(f"%llguidance {{}}\nstart: <[{start[0]}]>")
    else:
        assert '"<tool_call>"' in lark


@pytest.mark.smollm
def test_smollm_calls_a_tool_with_a_value_from_the_cloud(smollm):
    """SmolLM2 (generic format) writes the structure; the routed value token comes from the cloud."""

    def reply(body):  # the cloud continues the call it is shown with a city of its own
        partial = body["prompt"].rsplit("<|im_start|>assistant\n", 1)[1]
        target = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
        return target[len(partial):] if target.startswith(partial) else " nonsense"

    with FakeCloud(reply=reply) as fc:
        e = Engine(smollm, cloud="text-completion-openai/fake", api_base=fc.url, pipeline="sync",
                   router=ScheduledRouter([12]))
        g = e.generate("What is the weather in Paris?", tools=TOOLS, tool_choice="required", max_tokens=60)
        assert fc.requests
    assert [(c.name, c.arguments) for c in g.tool_calls] == [("get_weather", {"city": "Lyon"})]
    assert "cloud" in [ev.source for ev in g.events] and g.stats.cloud_tokens >= 1
