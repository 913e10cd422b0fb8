"""A forced structure closes before max_tokens: near the limit the grammar steers to a short valid completion
(``collab_core.local.closing``), so structured output, JSON mode and a forced tool call come back whole."""

import json

import pytest

from collab_core import Engine
from collab_core.engine.reconcile import Reconciliation, check_grammar
from collab_core.local.closing import SLACK, char_tokens, closing_plan
from collab_core.local.grammar import GrammarState, json_constraint, tool_constraint

SCHEMA = {"type": "object", "properties": {"unit": {"enum": ["celsius", "fahrenheit"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["unit", "n"]}
JOKE = {"type": "object", "properties": {"setup": {"type": "string"}, "punchline": {"type": "string"}},
        "required": ["setup", "punchline"]}
JSON_MODE = {"type": "object"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _ids(lm, text):
    return list(lm.tokenizer.encode(text, add_special_tokens=False))


def _plan(lm, g):
    return closing_plan(g.matcher, g.tokenizer, *char_tokens(g.tokenizer, g.constraint.markers))


@pytest.mark.parametrize(("schema", "partial", "whole"), [
    (SCHEMA, '{"unit": "cel', '{"unit": "celsius", "n": 0}'),
    (SCHEMA, '{"unit": "fahrenheit", "n": 4', '{"unit": "fahrenheit", "n": 4}'),
    (SCHEMA, "", None),  # from nothing: any short valid value
    (None, '{"a": [1, {"b": "some text', '{"a": [1, {"b": "some text"}]}'),
    (None, '{"a": [1, {"b": "x"}, ', None),  # an item must follow: any short one
    (JOKE, '{"setup": "Why did the cat', '{"setup": "Why did the cat", "punchline": ""}'),
])
def test_the_closing_plan_completes_the_value(tiny_lm, schema, partial, whole):
    g = GrammarState(tiny_lm, json_constraint(schema))
    g.consume_all(_ids(tiny_lm, partial))
    plan = _plan(tiny_lm, g)
    assert plan and g.valid_prefix(plan) == len(plan)
    text = partial + tiny_lm.tokenizer.decode(plan)
    value = json.loads(text)
    if whole is not None:
        assert text == whole
    assert g.consumed == len(_ids(tiny_lm, partial))  # the search does not move the grammar
    g.consume_all(plan)
    assert g.accepting and _plan(tiny_lm, g) == [] and isinstance(value, dict)


def test_the_mask_allows_only_the_closing_near_the_limit(tiny_lm):
    g = GrammarState(tiny_lm, json_constraint(JOKE))
    g.consume_all(_ids(tiny_lm, '{"setup": "Why did the cat'))
    plan = g.plan()
    free = g.allowed_numpy().sum()
    assert free > 100 and g.allowed_numpy(len(plan) + SLACK + 1).sum() == free  # room left: any string character
    for budget in (len(plan) + SLACK, len(plan)):
        mask = g.allowed_numpy(budget)
        assert mask.sum() == 1 and mask[plan[0]]


@pytest.mark.parametrize("seed", range(4))
def test_json_mode_closes_within_a_small_budget_on_a_random_model(tiny_long, seed):
    """The tiny model's weights are random: in JSON mode it writes noise inside strings and nested values and
    never closes them by itself (GrammarError before); steered, every answer is a whole object in budget."""
    e = Engine(tiny_long)
    for max_tokens, schema in ((24, JSON_MODE), (40, JSON_MODE), (30, JOKE)):
        g = e.generate("Describe a cat.", json_schema=schema, max_tokens=max_tokens, temperature=1.0, seed=seed)
        value = json.loads(g.text)
        assert value == g.structured.value and isinstance(value, dict) and g.stats.total_tokens <= max_tokens
        if schema is JOKE:
            assert set(value) == {"setup", "punchline"}


@pytest.mark.parametrize("seed", range(3))
def test_a_forced_tool_call_closes_within_a_small_budget(tiny_long, seed):
    # the tiny vocabulary spells the shortest call in 68 tokens
    g = Engine(tiny_long).generate("Weather in Paris?", tools=[WEATHER], tool_choice="required", max_tokens=90,
                                   temperature=1.0, seed=seed)
    assert len(g.tool_calls) == 1 and not g.structured.invalid_tool_calls
    assert g.tool_calls[0].name == "get_weather" and isinstance(g.tool_calls[0].arguments["city"], str)


def test_a_span_is_kept_only_as_far_as_the_value_can_still_close(tiny_lm):
    g = GrammarState(tiny_lm, json_constraint(JOKE))
    answer = _ids(tiny_lm, '{"setup": "Why did')
    g.consume_all(answer)
    span = tuple(_ids(tiny_lm, " the cat sit on the warm computer keyboard all day long"))
    closing = len(g.plan())
    max_tokens = len(answer) + closing + 3  # room for 3 of the span's tokens, and the closing
    r = check_grammar(Reconciliation(0, span, None, 0, False), g, answer, [], max_tokens=max_tokens)
    assert 0 < len(r.cloud) < len(span) and g.consumed == len(answer) + len(r.cloud)
    assert len(answer) + len(r.cloud) + len(g.plan()) <= max_tokens
    g2 = GrammarState(tiny_lm, json_constraint(JOKE))  # without a limit the whole span is valid
    g2.consume_all(answer)
    assert check_grammar(Reconciliation(0, span, None, 0, False), g2, answer, []).cloud == span


def test_a_forced_marker_token_grammar_closes(tiny_lm):
    ids = _ids(tiny_lm, "<tool_call>")
    g = GrammarState(tiny_lm, tool_constraint([WEATHER], start="<tool_call>", end="</tool_call>", forced=True))
    g.consume_all(ids + _ids(tiny_lm, '\n{"name": "get_weather", "arguments": {"city": "Par'))
    plan = g.plan()
    assert tiny_lm.tokenizer.decode(plan) == '"}}\n</tool_call>'


@pytest.mark.smollm
def test_smollm_json_mode_gets_a_whole_object_within_a_budget_too_small_for_its_text(smollm):
    e = Engine(smollm)
    prompt = "Tell me a long joke about cats, as JSON with many details."
    free = e.generate(prompt, max_tokens=120)  # what it writes unconstrained: more than the budget
    assert free.stats.total_tokens > 40
    for schema in (JSON_MODE, JOKE):
        g = e.generate(prompt, json_schema=schema, max_tokens=24)
        value = json.loads(g.text)
        assert isinstance(value, dict) and value == g.structured.value and g.stats.total_tokens <= 24
        if schema is JOKE:
            assert set(value) == {"setup", "punchline"} and value["setup"]  # its own text, closed


@pytest.mark.smollm
def test_smollm_structured_output_through_langchain_within_a_small_budget(smollm):
    from pydantic import BaseModel

    from langchain_collab import CollabLLM

    class Joke(BaseModel):
        setup: str
        punchline: str

    llm = CollabLLM(local_model="smollm2-135m", max_tokens=28)
    joke = llm.with_structured_output(Joke).invoke("Tell me a long joke about cats.")
    assert isinstance(joke, Joke) and joke.setup
