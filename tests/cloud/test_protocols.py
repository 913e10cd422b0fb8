"""Chat-only continuation protocols: the request they send and how a reply is lined up with the answer."""

from __future__ import annotations

import re

import pytest

from collab_core import Engine
from collab_core.cloud import protocols as P
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.router import ScheduledRouter

CONV = [{"role": "user", "content": "Where would you put a plate after washing it?"}]


def test_an_empty_answer_is_a_plain_chat_request():
    for p in ("anchor", "echo"):
        r = P.request(p, CONV, "", 4)
        assert r.messages == CONV and r.max_tokens == 4


def test_anchor_request_hands_the_answer_back_and_asks_for_its_last_words():
    r = P.request("anchor", CONV, "The plate goes in the", 4)
    roles = [m["role"] for m in r.messages]
    assert roles == ["system", "user", "assistant", "user"]  # the conversation prefix stays stable
    assert r.messages[1] == CONV[0] and r.messages[2]["content"] == "The plate goes in the"
    assert '"goes in the"' in r.messages[3]["content"]
    assert r.max_tokens > 4  # room for the echoed anchor
    echo = P.request("echo", CONV, "The plate goes in the", 4)
    assert echo.max_tokens > r.max_tokens  # the whole answer is written again


def test_anchor_of_takes_the_last_words():
    assert P.anchor_of("The answer is (B") == "answer is (B"
    assert P.anchor_of("Paris") == "Paris"


@pytest.mark.parametrize(("reply", "answer", "expected"), [
    ("answer is (B).", "The answer is", " (B)."),  # the anchor's last two words echoed, then the continuation
    ("goes in the cupboard", "The plate goes in the", " cupboard"),  # the anchor echoed
    ("in the cupboard", "The plate goes in the", " cupboard"),  # its last two words
    ("the cupboard", "The plate goes in the", None),  # one word is not enough to line up
    ("The answer is B", "The answer is", " B"),  # the whole answer echoed
    ('"answer is B', "The answer is", " B"),  # an opening quote
    ("<continuation>answer is B</continuation>", "The answer is", " B"),  # markup never reaches the answer
    ("capital is Paris.", "The capital is Par", "is."),  # the answer stopped mid-word
    ("goes in  the\ncupboard", "It goes in the", "\ncupboard"),  # whitespace runs match any whitespace
    ("B) cupboard", "The answer is", None),  # not lined up: a failed call
    ("The answer is the cupboard", "The answer is the ", "cupboard"),  # answer ends with a space
    ("Cupboard.", "", "Cupboard."),  # nothing written yet: taken as is
])
def test_anchor_alignment(reply, answer, expected):
    assert P.align("anchor", reply, answer) == expected


def test_echo_needs_the_whole_answer():
    assert P.align("echo", "The answer is C", "The answer is") == " C"
    assert P.align("echo", "answer is C", "The answer is") is None


def test_instruct_strips_an_echo_and_markup():
    assert P.align("instruct", "<partial>The answer is</partial> C", "The answer is") == " C"
    assert P.align("instruct", "C) cupboard", "The answer is") == "C) cupboard"


def test_match_prefix():
    assert P.match_prefix("  The answer is B", "The answer is") == len("  The answer is")
    assert P.match_prefix("The answer was B", "The answer is") is None
    assert P.match_prefix("anything", "") == 0


def _anchor_reply(body: dict) -> str:
    """A chat model that follows the anchor protocol: echoes the quoted words, then says ' Paris'."""
    last = body["messages"][-1]["content"]
    m = re.search(r'"([^"]*)"', last)
    return (m.group(1) if m else "") + " Paris"


@pytest.mark.parametrize(("reply", "cloud_ok"), [(_anchor_reply, True), (lambda body: "Sure! Here it is", False)])
def test_the_engine_keeps_its_local_token_when_a_reply_cannot_be_aligned(tiny_lm, reply, cloud_ok):
    local = Engine(tiny_lm).generate("The capital of France is", chat=False, max_tokens=8)
    with FakeCloud(reply=reply) as fc:
        cfg = CloudConfig(model="openai/fake", api_base=fc.url, strategy="anchor")
        eng = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([2]), pipeline="sync")
        gen = eng.generate("The capital of France is", chat=False, max_tokens=8)
    if cloud_ok:
        assert gen.stats.cloud_tokens > 0 and gen.stats.cloud_failures == 0
        assert " Paris" in gen.text and gen.text.startswith(tiny_lm.tokenizer.decode(
            [e.token for e in local.events][:2]))
    else:
        assert gen.stats.cloud_failures == 1 and gen.stats.cloud_tokens == 0
        assert gen.stats.cloud_errors[0].startswith("UnalignedSpan") and gen.text == local.text


def test_a_reply_that_only_echoes_ends_the_answer(tiny_lm):
    """Asked to go on, the chat model wrote only the words it was to echo: the answer ends there."""
    local = Engine(tiny_lm).generate("The capital of France is", chat=False, max_tokens=8)
    partial = tiny_lm.tokenizer.decode([e.token for e in local.events][:2])
    with FakeCloud(reply=lambda body: P.anchor_of(partial), finish_reason="stop") as fc:
        cfg = CloudConfig(model="openai/fake", api_base=fc.url, strategy="anchor")
        gen = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([2]), pipeline="sync").generate(
            "The capital of France is", chat=False, max_tokens=8)
    assert gen.finish_reason == "stop" and gen.stats.total_tokens == 2 and gen.stats.cloud_failures == 0
    assert gen.text == partial


def test_restate_asks_in_the_question_and_needs_the_whole_answer():
    r = P.request("restate", CONV, "The answer is", 2)
    assert len(r.messages) == 1 and r.messages[0]["role"] == "user"
    assert r.messages[0]["content"].startswith(CONV[0]["content"])  # the question's prefix is kept as it was
    assert r.messages[0]["content"].endswith('Begin your answer with exactly these words: "The answer is"')
    assert CONV[0]["content"] == "Where would you put a plate after washing it?"  # the caller's list is untouched
    tool_last = [*CONV, {"role": "tool", "content": "42"}]
    assert P.request("restate", tool_last, "It is", 2).messages[-1]["role"] == "user"
    assert P.align("restate", "The answer is (A) cupboard.", "The answer is") == " (A) cupboard."
    assert P.align("restate", "answer is (A)", "The answer is") is None
    assert P.align("restate", "The answer is The answer is (A)", "The answer is") == " (A)"  # said twice
    assert P.align("restate", "It is very very big", "It is very") == " very big"  # a word twice is fine


def test_every_protocol_is_a_strategy():
    from collab_core.settings import STRATEGIES

    assert set(P.PROTOCOLS) <= set(STRATEGIES) and P.CHAT_PROTOCOL in P.PROTOCOLS
