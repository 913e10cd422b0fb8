"""Constrained decoding: the grammar's mask on the local logits, and a cloud span checked against it."""

import json

import pytest

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.engine.reconcile import Reconciliation, check_grammar
from collab_core.errors import GrammarError
from collab_core.local.grammar import GrammarState, closed, json_constraint, tool_call_schema, tool_constraint
from collab_core.router import ScheduledRouter

SCHEMA = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["unit", "n"]}


def _ids(lm, text):
    return list(lm.tokenizer.encode(text, add_special_tokens=False))


def test_closed_schemas_refuse_invented_keys():
    s = closed({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}},
                "anyOf": [{"properties": {"c": {}}}], "x": {"const": {"properties": {}}}})
    assert s["additionalProperties"] is False and s["properties"]["a"]["additionalProperties"] is False
    assert s["anyOf"][0]["additionalProperties"] is False
    assert s["x"] == {"const": {"properties": {}}}  # values are not schemas
    assert closed({"type": "object", "properties": {}, "additionalProperties": True})["additionalProperties"]


def test_mask_allows_exactly_the_grammar(tiny_lm):
    g = GrammarState(tiny_lm, json_constraint(SCHEMA))
    mask = g.allowed_numpy()
    assert mask.shape == (tiny_lm.config["vocab_size"],)
    allowed = {tiny_lm.tokenizer.decode([i]) for i in mask.nonzero()[0]}
    assert all(t.strip() in ("", "{") or t.strip().startswith("{") for t in allowed)
    assert not any(mask[sorted(tiny_lm.eos_token_ids)])  # the end only once the value is complete
    text = '{"unit": "celsius", "n": 42}'
    g.consume_all(_ids(tiny_lm, text))
    assert g.accepting and all(g.allowed_numpy()[sorted(tiny_lm.eos_token_ids)])


def test_valid_prefix_and_rollback(tiny_lm):
    g = GrammarState(tiny_lm, json_constraint(SCHEMA))
    good = _ids(tiny_lm, '{"unit": "celsius"')
    bad = _ids(tiny_lm, ', "colour": 1}')
    assert g.valid_prefix(good + bad) >= len(good) and g.valid_prefix(good + bad) < len(good + bad)
    g.consume_all(good)
    g.rollback(len(good))
    assert g.consumed == 0 and g.valid_prefix(good) == len(good)
    with pytest.raises(GrammarError):
        g.rollback(1)
    with pytest.raises(GrammarError):
        g.consume(_ids(tiny_lm, "x")[0])


def test_check_grammar_keeps_the_valid_prefix_of_a_span(tiny_lm):
    g = GrammarState(tiny_lm, json_constraint(SCHEMA))
    answer = _ids(tiny_lm, '{"unit": ')
    draft = _ids(tiny_lm, '"fahrenheit"')
    g.consume_all(answer + draft)
    valid, invalid = _ids(tiny_lm, '"celsius"'), _ids(tiny_lm, ' oops')
    r = check_grammar(Reconciliation(0, tuple(valid + invalid), None, len(draft), True), g, answer, draft)
    assert r.cloud == tuple(valid) and r.keep_from is None and not r.ends and r.rollbacks == len(draft)
    assert g.consumed == len(answer) + len(valid)
    # a span with nothing valid is refused: the draft stands, the grammar is back at answer + draft
    g2 = GrammarState(tiny_lm, json_constraint(SCHEMA))
    g2.consume_all(answer + draft)
    r = check_grammar(Reconciliation(0, tuple(invalid), None, len(draft), True), g2, answer, draft)
    assert r.cloud == () and r.keep_from == 0 and r.rollbacks == 0 and not r.ends
    assert g2.consumed == len(answer + draft) and g2.valid_prefix(_ids(tiny_lm, ', "n": 1}')) > 0
    # a whole valid span that agrees with the draft keeps the rest of the draft
    g3 = GrammarState(tiny_lm, json_constraint(SCHEMA))
    g3.consume_all(answer + draft)
    r = check_grammar(Reconciliation(0, tuple(draft[:1]), 1, 0, False), g3, answer, draft)
    assert r.keep_from == 1 and r.cloud == tuple(draft[:1]) and g3.consumed == len(answer + draft)


def test_tool_grammars(tiny_lm):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}},
        {"name": "ping"}]
    assert tool_call_schema(tools)["anyOf"][1]["properties"]["name"] == {"const": "ping"}
    forced = GrammarState(tiny_lm, tool_constraint(tools, start="<tool_call>", end="</tool_call>", forced=True))
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    ids = _ids(tiny_lm, call)
    assert forced.valid_prefix(ids) == len(ids)
    assert forced.valid_prefix(_ids(tiny_lm, "Sure")) == 0  # forced: no text first
    free = GrammarState(tiny_lm, tool_constraint(tools, start="<tool_call>", end="</tool_call>", forced=False))
    text = _ids(tiny_lm, "Let me add. " + call)
    assert free.valid_prefix(text) == len(text)
    bad = _ids(tiny_lm, 'Let me. <tool_call>\n{"name": "mul"')
    assert free.valid_prefix(bad) < len(bad)  # a call to an unknown tool is cut where it goes wrong
    assert free.valid_prefix(_ids(tiny_lm, "Just text, no call.")) == len(_ids(tiny_lm, "Just text, no call."))
    two = _ids(tiny_lm, call + "\n" + call)
    assert free.valid_prefix(two) == len(two)
    chatty = _ids(tiny_lm, call + " and then some text")
    assert len(_ids(tiny_lm, call)) <= free.valid_prefix(chatty) < len(chatty)  # after a call: a call or the end


def test_structured_output_always_parses_and_validates(tiny_long):
    """The tiny model's weights are random: left alone it writes noise; under the grammar, valid JSON."""
    e = Engine(tiny_long)
    for seed in range(3):
        g = e.generate("Temperature?", json_schema=SCHEMA, max_tokens=60, temperature=1.0, seed=seed)
        value = json.loads(g.text)
        assert value == g.structured.value and value["unit"] in ("celsius", "fahrenheit") and 0 <= value["n"] <= 99
        assert set(value) == {"unit", "n"} and g.finish_reason == "stop"


def test_a_forced_structure_cut_short_raises(tiny_long):
    with pytest.raises(GrammarError, match="max_tokens"):
        Engine(tiny_long).generate("Temperature?", json_schema=SCHEMA, max_tokens=3)


def test_a_routed_span_is_cut_to_its_valid_prefix(tiny_long):
    """Routed after ``{"unit": ``, the cloud answers with text that is valid for a while, then breaks the schema: its
    valid prefix is committed as the cloud's, the rest is the local model's (constrained); the result validates."""
    with FakeCloud(reply='"celsius", "colour": "red"}') as fc:
        e = Engine(tiny_long, cloud="text-completion-openai/fake", api_base=fc.url, router=ScheduledRouter([8]),
                   pipeline="sync")
        ev = list(e.stream("Temperature?", json_schema=SCHEMA, max_tokens=60))
        assert fc.requests  # the span was asked for
    final = ev[-1]
    text = "".join(x.text for x in ev)
    value = json.loads(text)
    assert final.structured.value == value and set(value) == {"unit", "n"}
    sources = [x.source for x in ev[:-1]]
    cloud_text = "".join(x.text for x in ev[:-1] if x.source == "cloud")
    assert "cloud" in sources and "colour" not in text and cloud_text.strip().startswith('"celsius"')
