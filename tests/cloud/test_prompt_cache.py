"""Provider prompt caching: the stable prefix first and byte-identical (OpenAI, vLLM, SGLang), Anthropic's
``cache_control`` marker on it, cached input tokens in the stats and the cost at cache prices.

The ``*_prompt_cache.documented.yaml`` cassettes were written from the providers' documented wire formats (see
their headers); the prefix test reads the raw bytes that reached a fake cloud."""

from __future__ import annotations

import json
import os

import litellm
import pytest
from cache_doc import DOC, MESSAGES, QUESTION
from conftest import exchanges, record_mode, sent_bodies, use_cassette
from fleet import reply as restating_reply

from collab_core import Engine
from collab_core.cloud.client import CloudClient, CloudConfig, SpanRequest, mark_stable_prefix
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.router import ScheduledRouter

EPHEMERAL = {"type": "ephemeral"}
SHORT_DOC = "You are a geography tutor.\nNote: Paris is the capital of France."  # the tiny model's context is short


def _price(model: str, key: str) -> float:
    return litellm.model_cost[model][key]


@pytest.mark.smollm
def test_anthropic_marks_the_stable_prefix_and_prices_the_cache(smollm, monkeypatch):
    if record_mode() == "none":
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    eng = Engine(smollm, cloud="anthropic/claude-sonnet-4-5", router=ScheduledRouter([2, 5]), pipeline="sync",
                 cache=False)
    assert eng.cloud.strategy == "prefill" and eng.cloud.cache_markers
    with use_cassette("anthropic_prompt_cache.documented") as cass:
        gen = eng.generate(MESSAGES, max_tokens=14)
    assert exchanges(cass) == 2
    for body in sent_bodies(cass):
        assert body["system"] == [{"type": "text", "text": DOC}]  # the long system prompt, the same on both calls
        user = body["messages"][0]
        assert user["content"] == [{"type": "text", "text": QUESTION, "cache_control": EPHEMERAL}]
        assert body["messages"][1]["role"] == "assistant"  # the part that changes comes after the marker
    s = gen.stats
    assert gen.text.startswith("The capital of France is Paris.")
    assert s.cloud_calls == 2 and s.cloud_cache_write_tokens == 1088 and s.cloud_cached_input_tokens == 1088
    m = "claude-sonnet-4-5"
    inp, out = _price(m, "input_cost_per_token"), _price(m, "output_cost_per_token")
    write, read = _price(m, "cache_creation_input_token_cost"), _price(m, "cache_read_input_token_cost")
    expected = (9 * inp + 1088 * write + 3 * out) + (12 * inp + 1088 * read + 3 * out)
    assert s.cost_usd == pytest.approx(expected, rel=1e-6)
    assert s.cost_usd < (9 + 1088) * inp + (12 + 1088) * inp + 6 * out + 1088 * (write - inp)  # the read is cheap


@pytest.mark.smollm
def test_openai_cached_tokens_are_reported_and_priced(smollm, monkeypatch):
    if record_mode() == "none":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    eng = Engine(smollm, cloud="gpt-4o-mini", router=ScheduledRouter([2, 5]), pipeline="sync", cache=False)
    assert not eng.cloud.cache_markers  # OpenAI caches byte-identical prefixes by itself
    with use_cassette("openai_prompt_cache.documented") as cass:
        gen = eng.generate(MESSAGES, max_tokens=14)
    bodies = sent_bodies(cass)
    assert len(bodies) == 2 and "cache_control" not in json.dumps(bodies)
    assert [b["messages"][0] for b in bodies] == [MESSAGES[0]] * 2
    assert all(b["messages"][1]["content"].startswith(QUESTION + "\n\n") for b in bodies)
    s = gen.stats
    assert gen.text.startswith("The capital of France is Paris.")
    assert s.cloud_calls == 2 and s.cloud_cached_input_tokens == 1024 and s.cloud_cache_write_tokens == 0
    m = "gpt-4o-mini"
    inp, out, read = (_price(m, "input_cost_per_token"), _price(m, "output_cost_per_token"),
                      _price(m, "cache_read_input_token_cost"))
    expected = (1131 * inp + 4 * out) + ((1137 - 1024) * inp + 1024 * read + 8 * out)
    assert s.cost_usd == pytest.approx(expected, rel=1e-6)


def _common_prefix(raws: list[bytes]) -> bytes:
    return os.path.commonprefix(raws)


@pytest.mark.parametrize("strategy", ["restate", "anchor", "instruct"])
def test_the_prefix_is_byte_identical_across_calls_and_turns(tiny_lm, strategy):
    """What an OpenAI-compatible server receives: every call of an answer, and of the next turn, starts with the
    same bytes up to the end of the first turn's question (OpenAI's automatic prefix cache needs exactly that)."""
    turn1 = [{"role": "system", "content": SHORT_DOC}, {"role": "user", "content": QUESTION}]
    with FakeCloud(reply=restating_reply) as fc:
        eng = Engine(tiny_lm, cloud=CloudConfig(model="openai/fake", api_base=fc.url, strategy=strategy),
                     router=ScheduledRouter([2, 6, 10]), pipeline="sync", cache=False)
        first = eng.generate(turn1, max_tokens=14)
        n1 = len(fc.requests)
        turn2 = turn1 + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And Italy's?"}]
        eng.generate(turn2, max_tokens=14)
    raws = [r["raw"] for r in fc.requests]
    assert n1 >= 2 and len(raws) >= n1 + 2
    head = raws[0][: raws[0].index(json.dumps(QUESTION)[1:-1].encode()) + len(QUESTION)]
    assert json.dumps(SHORT_DOC)[1:-1].encode() in head  # the system prompt is inside the shared prefix
    assert _common_prefix(raws).startswith(head)


def test_markers_land_at_the_end_of_the_conversation_for_every_protocol():
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    for strategy in ("restate", "anchor", "echo", "instruct", "prefill"):
        client = CloudClient(CloudConfig(model="anthropic/claude-sonnet-4-5", strategy=strategy, api_key="sk-x"))
        _, kw = client.build(SpanRequest(messages=conv, prompt_text="", partial="The answer"))
        marked = [m for m in kw["messages"] if isinstance(m["content"], list)
                  and any("cache_control" in b for b in m["content"])]
        assert len(marked) == 1 and marked[0]["content"][0] == {"type": "text", "text": "Q",
                                                                "cache_control": EPHEMERAL}, strategy
    assert mark_stable_prefix([{"role": "user", "content": "other"}], conv) == [{"role": "user", "content": "other"}]
    off = CloudClient(CloudConfig(model="anthropic/claude-sonnet-4-5", api_key="sk-x", prompt_cache=False))
    assert "cache_control" not in json.dumps(off.build(SpanRequest(messages=conv, prompt_text="", partial=""))[1])
