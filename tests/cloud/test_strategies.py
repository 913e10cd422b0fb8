"""Continuation strategies as objects in a registry by name, and the check that a chat reply continues the answer."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from collab_core import Engine
from collab_core.cloud import strategies as S
from collab_core.cloud.client import CloudClient, CloudConfig, CloudSpan, SpanRequest
from collab_core.cloud.strategy import Strategy, not_a_continuation
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CloudConfigError, CloudError
from collab_core.router import ScheduledRouter

PKG = Path(__file__).resolve().parents[2] / "collab_core"
QUESTION = ("Question: The piece of paper was worth a lot of money, it was an old what?\nChoices:\nA) notebook\n"
            "B) copy machine\nC) thumb drive\nD) stock certificate\nE) wallet\n"
            "Answer with the letter of the correct choice.")
CONV = [{"role": "user", "content": QUESTION}]


def _req(prefix: str = "The answer is", partial: str = "", conv=CONV) -> SpanRequest:
    return SpanRequest(messages=conv, prompt_text="<prompt>" + prefix, partial=partial, prefix=prefix)


# -- the registry ----------------------------------------------------------------------------------------------
def test_the_registry_holds_every_strategy_the_settings_name():
    from collab_core.settings import STRATEGIES

    assert S.strategy_names() == STRATEGIES
    assert all(S.get_strategy(n).name == n and isinstance(S.get_strategy(n), Strategy) for n in STRATEGIES)
    with pytest.raises(CloudConfigError, match="unknown strategy 'telepathy'"):
        S.get_strategy("telepathy")
    with pytest.raises(CloudConfigError, match="unknown strategy"):
        CloudConfig(model="openai/m", strategy="telepathy")


def test_a_strategy_of_ones_own_is_registered_and_used(monkeypatch):
    """A user's strategy: a chat request in its own words, its reply read its own way, called by name."""
    monkeypatch.setattr(S, "_REGISTRY", dict(S._REGISTRY))  # leave the registry as it was

    class Shout(Strategy):
        name = "shout"

        def shape(self, req, kw, *, span_tokens, token_exact):
            kw["messages"] = [*req.messages, {"role": "user", "content": f"GO ON FROM: {req.answer}"}]
            return kw

        def read(self, text, finish, req, *, span_tokens):
            return " " + text.strip().upper()

    S.register(Shout())
    with pytest.raises(CloudConfigError, match="registered already"):
        S.register(Shout())
    with pytest.raises(CloudConfigError, match="name"):
        S.register(Strategy())
    seen = []
    with FakeCloud(reply=lambda body: seen.append(body["messages"]) or "paris", finish_reason="stop") as fc:
        client = CloudClient(CloudConfig(model="openai/fake", api_base=fc.url, strategy="shout"))
        span = client.continue_span(_req("The capital is", conv=[{"role": "user", "content": "Capital?"}]))
    assert client.strategy == "shout" and span.text == " PARIS" and span.strategy == "shout"
    assert seen[0][-1] == {"role": "user", "content": "GO ON FROM: The capital is"}
    assert span.ends_answer  # the base rule: a stop inside the span


def test_ends_answer_is_the_strategys_say():
    stop = {"finish_reason": "stop"}
    assert CloudSpan(text=" B", strategy="completion", **stop).ends_answer
    assert CloudSpan(text=" B", strategy="prefill", **stop).ends_answer
    # a chat-only model asked for "a few words" stops after them: only an empty continuation ends the answer
    assert not CloudSpan(text=" B", strategy="restate", **stop).ends_answer
    assert CloudSpan(text=" ", strategy="restate", **stop).ends_answer
    assert not CloudSpan(text=" B", strategy="completion", finish_reason="length").ends_answer
    assert CloudSpan(text=" B", strategy="", **stop).ends_answer  # unknown strategy: a stop ends it


def test_setting_the_clients_strategy_by_name_sets_the_object():
    client = CloudClient(CloudConfig(model="openai/m", api_base="http://127.0.0.1:9/v1", strategy="anchor"))
    assert client.continuation is S.get_strategy("anchor")
    client.strategy = "completion"
    assert client.continuation is S.get_strategy("completion") and client.build(_req())[0] == "text_completion"
    with pytest.raises(CloudConfigError):
        client.strategy = "nope"


def test_no_module_dispatches_on_strategy_names():
    """Strategy names are compared nowhere in the package: what differs lives in the strategy objects."""
    names = set(S.strategy_names())
    found = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
                    if hits:
                        found.append(f"{path.relative_to(PKG)}:{node.lineno} {hits}")
    assert found == []


# Digests of the span cache's key for one request (the answer begun, a spacing hint), as the string-dispatching
# client computed them: caches and recorded cassettes keep working only while these stay the same.
OLD_KEYS = {
    "completion": "288147e1ed8421451feebe901afba0aa4432c1ba1880e70eabb115da090ec8a1",
    "prefill": "4c34bf8526dbbb39292321fa0604674fcf9a3f9edb4fbafc85db27a2235df0a6",
    "prefix": "e835727e1960f26e985cfd487ab534d3509b7f057cfa70e531fb1e61f898d57b",
    "continue": "e7af1fc9ea9de7db4e651573083a89024188055afa1b1355a1c83d5fb1728010",
    "anchor": "1958cb68ba23b731788087810694769faf19947e0b3d1c4e50d983ff57950cd7",
    "restate": "b6c7717eae8bf92efc1331af65cdab8f243f874389c3b28e4511681ebdcc7013",
    "echo": "889bbd02032406605330a541dedee9f29a5828df9856f24d4356087c7aad2343",
    "instruct": "dd21f8404982c1b33a83c842882ce1d7e618830b7fed5ec23b2b8d2b3442b4cb",
}


@pytest.mark.parametrize("name", list(OLD_KEYS))
def test_cache_keys_are_what_they_were(name):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    req = SpanRequest(conv, "<prompt>", " capital of France is", False, "The")
    client = CloudClient(CloudConfig(model="openai/m", api_base="http://127.0.0.1:9/v1", strategy=name, span_tokens=4))
    assert client.cache_key(req) == OLD_KEYS[name]


# -- a chat reply that does not continue the answer is a failed call ----------------------------------------------
@pytest.mark.parametrize(("continuation", "answer", "why"), [
    (" The piece of paper was worth a lot", "The answer is", "restates the prompt"),  # issue 27's invalid answers
    (" piece of paper was worth a lot of", "The answer is The", "restates the prompt"),  # the next call
    (" The capital of France", "The capital of France is", "starts the answer over"),  # the recorded instruct reply
    (" C) thumb drive.", "The answer is", None),  # a choice quoted from the question is an answer
    (" D) stock certificate, since it was old", "The answer is", None),
    (" worth a lot of money, it was", "The piece of paper was", "restates the prompt"),  # so did the answer
    (" in the cupboard after washing it", "You would put a plate", None),  # a few of the question's words
    (" very big", "It is very", None),
])
def test_not_a_continuation(continuation, answer, why):
    got = not_a_continuation(continuation, _req(answer))
    assert (got is None) if why is None else why in got


def test_a_reply_before_the_answer_begins_may_quote_the_question():
    assert not_a_continuation("The piece of paper was worth a lot: a stock certificate", _req("")) is None


def _chat_reply(text: str, finish: str = "length"):
    return NS(choices=[NS(message=NS(content=text), text=text, finish_reason=finish, logprobs=None)])


@pytest.mark.parametrize("name", ["restate", "echo", "anchor", "instruct", "prefill", "prefix", "continue"])
def test_every_chat_strategy_fails_a_restated_question(name):
    client = CloudClient(CloudConfig(model="openai/m", api_base="http://127.0.0.1:9/v1", strategy=name, span_tokens=2))
    restated = "The piece of paper was worth a lot of money"
    echoed = {"prefill": "", "prefix": "", "continue": ""}.get(name, "The answer is ")
    with pytest.raises(CloudError, match="restates the prompt") as err:
        client.parse(_chat_reply(echoed + restated), _req())
    assert err.value.kind == "UnalignedSpan"
    assert client.parse(_chat_reply(echoed + "C) thumb drive."), _req())[0].strip().startswith("C)")


def test_completion_is_not_checked():
    """A text completion continues the prompt's own text: it is read as it was (the chat check is for chat)."""
    client = CloudClient(CloudConfig(model="text-completion-openai/m", api_base="http://127.0.0.1:9/v1",
                                     strategy="completion", span_tokens=16))
    text = " The piece of paper was worth a lot of money"
    assert client.parse(_chat_reply(text, "stop"), _req())[0] == text


def test_the_engine_keeps_its_own_tokens_when_the_cloud_restates_the_question(tiny_lm):
    """The chat path of issue 27: after the prefill the cloud's reply restates the question. That is a failed
    call, the local model's tokens stand (none lost), and a reply that does continue the answer is used."""
    prompt = [*CONV, {"role": "assistant", "content": "The answer is"}]
    local = Engine(tiny_lm).generate(prompt, max_tokens=6)
    restating = "The answer is The piece of paper was worth a lot of money"
    with FakeCloud(reply=restating, finish_reason="length") as fc:
        cfg = CloudConfig(model="openai/fake", api_base=fc.url, strategy="restate", span_tokens=2)
        gen = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([0]), pipeline="sync", cache=False).generate(
            prompt, max_tokens=6)
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 1 and gen.stats.cloud_tokens == 0
    assert gen.stats.cloud_errors[0].startswith("UnalignedSpan") and "restates the prompt" in gen.stats.cloud_errors[0]
    assert gen.text == local.text and "piece" not in gen.text
    with FakeCloud(reply="The answer is D) stock certificate", finish_reason="length") as fc:
        cfg = CloudConfig(model="openai/fake", api_base=fc.url, strategy="restate", span_tokens=2)
        gen = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([0]), pipeline="sync", cache=False).generate(
            prompt, max_tokens=6)
    assert gen.stats.cloud_failures == 0 and gen.stats.cloud_tokens > 0 and gen.text.startswith("D)")
