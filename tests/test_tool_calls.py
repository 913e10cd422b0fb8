"""collab_core.tool_calls: a malformed call is reported under its own name, and one parser reads a call's
arguments in every form (a request's messages, native or generic format, and the calls a model writes)."""

import json

import pytest

from collab_core.errors import ConfigError
from collab_core.tool_calls import GENERIC, ToolFormat, call_arguments, parse_tool_calls
from collab_core.tools import tool_messages

GOOD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
NATIVE = ToolFormat("native")


@pytest.mark.parametrize(("second", "name"), [
    ('{"name": "add", "arguments": {"a": 1,}}', "add"),  # not JSON, but it names itself
    ('{"name": "add", "arguments": [1, 2]}', "add"),  # JSON, arguments not an object
    ('{"name": "add", "arguments": "{\\"a\\": "}', "add"),  # arguments a string that is not JSON
    ('{"arguments": {"a": 1}, "name": ', None),  # no name to read
    ('{"name": 7, "arguments": {}}', None),  # a name that is not a string
    ("not a call at all", None),
])
def test_a_malformed_call_is_reported_under_its_own_name_or_none(second, name):
    text = f"{GOOD}<tool_call>\n{second}\n</tool_call>"
    content, calls, invalid = parse_tool_calls(text)
    assert content == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert len(invalid) == 1 and invalid[0].text == second.strip()
    assert invalid[0].name == name  # never the first call's name


def test_a_malformed_first_call_does_not_lend_its_name():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": }\n</tool_call><tool_call>\n{"nam'
    _, calls, invalid = parse_tool_calls(text)
    assert calls == [] and [c.name for c in invalid] == ["add", None]


@pytest.mark.parametrize("call", [
    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}},
    {"id": "c1", "name": "add", "args": {"a": 1, "b": 2}},
    {"id": "c1", "name": "add", "arguments": '{"a": 1, "b": 2}'},
])
def test_one_argument_parser_for_both_call_forms(call):
    messages = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    native = tool_messages(messages, None, fmt=NATIVE)[1]["tool_calls"][0]["function"]
    generic = tool_messages(messages, None, fmt=GENERIC)[1]["content"]
    written = json.loads(generic.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert native == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert written == native == {"name": "add", "arguments": call_arguments(call)}


@pytest.mark.parametrize("args", [None, "", "  ", {}])
def test_no_arguments_are_an_empty_object(args):
    assert call_arguments({"function": {"name": "ping", "arguments": args}}) == {}
    assert call_arguments({"name": "ping"}) == {}


@pytest.mark.parametrize("args", ["{not json", "[1, 2]", '"a string"', "42", [1, 2], 42])
def test_unparsable_arguments_raise_in_both_call_forms(args):
    """Not silently sent on: the generic form used to keep the raw string, the native form to send ``{}``."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": args}}]}]
    for fmt in (NATIVE, GENERIC):
        with pytest.raises(ConfigError, match="'add'"):
            tool_messages(messages, None, fmt=fmt)
    # the same parser reads the calls a model writes: there, such a call is reported invalid
    body = json.dumps({"name": "add", "arguments": args})
    _, calls, invalid = parse_tool_calls(f"<tool_call>\n{body}\n</tool_call>")
    assert calls == [] and [c.name for c in invalid] == ["add"]
