"""The wire format without a server: what a request may say, and the shapes of what comes back."""

from __future__ import annotations

import json

import pytest

from collab_core.engine import FinalEvent, TokenEvent
from collab_core.errors import RequestError
from collab_core.scoring import Confidence
from collab_core.server.openai_format import CHAT, COMPLETION, Reply, parse_request, sse
from collab_core.stats import GenerationStats

MSG = [{"role": "user", "content": "Hi"}]


def _error(body, kind=CHAT) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(body, kind=kind)
    return info.value


def test_a_chat_request_becomes_engine_options():
    req = parse_request({"model": "m", "messages": MSG, "max_tokens": 7, "temperature": 0, "top_p": 0.9,
                         "seed": 3, "stop": "\n", "stream": True, "stream_options": {"include_usage": True},
                         "user": "u", "n": 1, "presence_penalty": 0, "collab": {"budget": 0.1, "local_only": False,
                                                                                "max_cloud_calls": 2}}, kind=CHAT)
    assert req.prompt == MSG and req.stream and req.include_usage and req.budget == 0.1
    assert req.options == {"max_tokens": 7, "temperature": 0, "top_p": 0.9, "seed": 3, "stop": ("\n",),
                           "local_only": False, "max_cloud_calls": 2}


def test_max_completion_tokens_wins_over_max_tokens():
    req = parse_request({"messages": MSG, "max_tokens": 7, "max_completion_tokens": 5}, kind=CHAT)
    assert req.options["max_tokens"] == 5


@pytest.mark.parametrize("prompt, expected", [("Once", "Once"), (["Once"], "Once"), ([1, 2, 3], [1, 2, 3])])
def test_a_completion_prompt_is_taken_raw(prompt, expected):
    req = parse_request({"model": "m", "prompt": prompt}, kind=COMPLETION)
    assert req.prompt == expected and req.options == {"chat": False}


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG, "temprature": 0.5}, "temprature"),
    ({"messages": MSG, "prompt": "x"}, "prompt"),  # a completion field on the chat endpoint
    ({"messages": MSG, "collab": {"budgett": 0.1}}, "collab.budgett"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0]"),
])
def test_unknown_fields_are_named(body, param):
    err = _error(body)
    assert err.status == 400 and err.param == param and err.code == "unknown_field"
    assert param.split(".")[-1].split("[")[0] in str(err)


@pytest.mark.parametrize("field, value", [("n", 2), ("tools", [{"type": "function"}]), ("logprobs", True),
                                          ("presence_penalty", 0.5), ("response_format", {"type": "json_object"})])
def test_values_the_server_cannot_honour_are_refused(field, value):
    err = _error({"messages": MSG, field: value})
    assert err.status == 400 and err.param == field and err.code == "unsupported_value"


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG, "max_tokens": "10"}, "max_tokens"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, "max_tokens"),  # a bool is not a number
    ({"messages": MSG, "temperature": -1}, "temperature"),
    ({"messages": MSG, "top_p": 0}, "top_p"),
    ({"messages": MSG, "stream": "yes"}, "stream"),
    ({"messages": MSG, "collab": {"budget": 1.5}}, "collab.budget"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_wrong_types_and_ranges_are_400s(body, param):
    err = _error(body)
    assert err.status == 400 and err.param == param


def test_a_body_that_is_not_an_object_and_bad_completion_prompts():
    assert _error([1, 2]).status == 400
    assert _error({"prompt": ["a", "b"]}, kind=COMPLETION).param == "prompt"  # batches are not served
    assert _error({"prompt": {"x": 1}}, kind=COMPLETION).param == "prompt"


def _stats() -> GenerationStats:
    return GenerationStats(prompt_tokens=9, total_tokens=3, cloud_tokens=1, cloud_calls=1, time_total_s=0.5)


def test_chunks_carry_provenance_and_the_last_one_usage_and_stats():
    reply = Reply.start(CHAT, "local+cloud")
    conf = Confidence(max_prob=0.4, entropy=1.2, margin=0.1, top_ids=(5,), top_probs=(0.4,))
    first = reply.token_chunk(TokenEvent(token=5, text=" Hi", source="local", confidence=conf, score=0.6), first=True)
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": " Hi"}
    assert first["collab"]["tokens"] == [{"token": 5, "text": " Hi", "source": "local", "confidence": 0.4,
                                          "entropy": 1.2, "margin": 0.1, "score": 0.6}]
    cloud = reply.token_chunk(TokenEvent(token=6, text="!", source="cloud"))
    assert cloud["choices"][0]["delta"] == {"content": "!"} and cloud["collab"]["tokens"][0]["source"] == "cloud"
    last = reply.final_chunk(FinalEvent(text="", finish_reason="stop", stats=_stats()), with_usage=True)
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["delta"] == {}
    assert last["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert last["collab"]["stats"]["cloud_calls"] == 1 and last["collab"]["stats"]["routed_share"] == 0.333333
    alone = reply.usage_chunk(_stats())
    assert alone["choices"] == [] and alone["usage"]["total_tokens"] == 12
    assert {first["id"], last["id"], alone["id"]} == {reply.id}


def test_whole_responses_and_sse_framing():
    evs = [TokenEvent(token=1, text="Hel", source="local"), TokenEvent(token=2, text="lo", source="cloud")]
    final = FinalEvent(text="!", finish_reason="length", stats=_stats())
    chat = Reply.start(CHAT, "m").response(evs, final)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"] == {"role": "assistant",
                                                                                    "content": "Hello!"}
    assert [t["source"] for t in chat["collab"]["tokens"]] == ["local", "cloud"] and chat["usage"]["prompt_tokens"] == 9
    comp = Reply.start(COMPLETION, "m").response(evs, final)
    assert comp["object"] == "text_completion" and comp["choices"][0]["text"] == "Hello!"
    frame = sse({"a": "é"})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and json.loads(frame[6:]) == {"a": "é"}
