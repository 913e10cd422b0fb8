"""Privacy on the way out: a redaction hook over everything sent to the cloud, placeholders restored in the spans.

The wire tests read what actually reached the (fake) cloud: the raw request bodies it recorded."""

from __future__ import annotations

import re

import pytest
from fleet import reply as restating_reply

from collab_core import Engine
from collab_core.cloud.client import CloudClient, CloudConfig, SpanRequest
from collab_core.cloud.redact import FunctionRedactor, Redactor, make_redactor
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import ConfigError
from collab_core.router import ScheduledRouter

EMAIL, PHONE, KEY = "alice.martin@example.com", "+1 415 555 0132", "sk-proj-Q7xk29LmZp03RtYv88Wq"
SECRETS = (EMAIL, PHONE, KEY, "alice.martin", "555 0132", "Q7xk29LmZp03RtYv88Wq")
PROMPT = f"Write to {EMAIL} (or call {PHONE}) that the key {KEY} was rotated."


@pytest.mark.parametrize(("text", "kinds"), [
    ("Mail alice.smith@example.co.uk or bob@corp.io today.", ["EMAIL", "EMAIL"]),
    ("Call +1 415 555 0132, (415) 555-0132, 020 7946 0958 or 415.555.0132.", ["PHONE"] * 4),
    ("sk-proj-AbCdEf0123456789XyZabc, sk-ant-api03-abcdefghijklmnop0123, AKIAIOSFODNN7EXAMPLE, "
     "ghp_abcdefghijklmnopqrstuvwxyz0123456789, Bearer abc.def-ghi_jkl0123456789", ["KEY"] * 5),
    ("In 2024, 3.14, version 1.2.3, 12 apples, 100,000 people, on 2024-05-01, port 8080.", []),
])
def test_the_default_redactor(text, kinds):
    r = Redactor()
    out = r.redact(text)
    assert re.findall(r"<([A-Z]+)_\d+>", out) == kinds
    assert r.restore(out) == text
    assert r.redact(text) == out  # the same value always gets the same placeholder: a stable prefix


def test_make_redactor():
    assert make_redactor(None) is None and make_redactor("none") is None
    assert isinstance(make_redactor("default"), Redactor)
    fn = make_redactor(str.upper)
    assert isinstance(fn, FunctionRedactor) and fn.redact("a") == "A" and fn.restore("x") == "x"
    with pytest.raises(ConfigError):
        make_redactor(42)
    with pytest.raises(ConfigError):
        make_redactor(lambda s: None).redact("x")


def _on_the_wire(fc: FakeCloud) -> bytes:
    return b"\n".join(r["raw"] for r in fc.requests)


def test_nothing_redacted_reaches_the_wire_and_spans_are_restored(tiny_lm):
    """Text completion: the cloud reads placeholders only, and writes one back; the answer gets the original."""
    def echo_placeholder(body: dict) -> str:
        return " " + re.search(r"<EMAIL_\d+>", body["prompt"]).group(0)

    with FakeCloud(reply=echo_placeholder, finish_reason="stop") as fc:
        eng = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, redact="default",
                     router=ScheduledRouter([2, 6]), pipeline="sync", cache=False)
        eng.prewarm(PROMPT).result()  # the prewarm call goes through the redactor too
        gen = eng.generate(PROMPT, max_tokens=64)
    wire = _on_the_wire(fc)
    assert len(fc.requests) >= 2 and b"<EMAIL_1>" in wire and b"<PHONE_1>" in wire and b"<KEY_1>" in wire
    for secret in SECRETS:
        assert secret.encode() not in wire
    cloud_text = "".join(e.text for e in gen.events if e.source == "cloud")
    assert EMAIL in cloud_text and "<EMAIL" not in gen.text  # the placeholder came back restored


def test_chat_turns_are_redacted_and_aligned(tiny_lm):
    """A chat protocol (restate) with a system message and an earlier turn: every message is redacted, the reply
    (which restates the redacted answer) lines up, and later calls repeat the same placeholders."""
    messages = [{"role": "system", "content": f"The user's key is {KEY}."},
                {"role": "user", "content": f"My email is {EMAIL}."},
                {"role": "assistant", "content": f"Noted: {EMAIL}, phone {PHONE}."},
                {"role": "user", "content": "Say something about the sea."}]
    with FakeCloud(reply=restating_reply) as fc:
        eng = Engine(tiny_lm, cloud="openai/fake", api_base=fc.url, redact="default",
                     router=ScheduledRouter([2, 8, 14]), pipeline="sync", cache=False)
        gen = eng.generate(messages, max_tokens=20)
    assert gen.stats.cloud_calls == 3 and gen.stats.cloud_failures == 0 and gen.stats.cloud_tokens > 0
    wire = _on_the_wire(fc)
    for secret in SECRETS:
        assert secret.encode() not in wire
    for r in fc.requests:
        sent = r["body"]["messages"]
        assert sent[0]["content"] == "The user's key is <KEY_1>."
        assert sent[2]["content"] == "Noted: <EMAIL_1>, phone <PHONE_1>."


def test_a_user_function_redacts_everything_sent(tiny_lm):
    with FakeCloud(reply=" ok") as fc:
        eng = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url,
                     redact=lambda s: s.replace("Project Falcon", "[codename]"), router=ScheduledRouter([1, 3]),
                     pipeline="sync", cache=False)
        eng.generate("Summarise the Project Falcon launch plan.", max_tokens=8)
    wire = _on_the_wire(fc)
    assert len(fc.requests) == 2 and b"Falcon" not in wire and b"[codename]" in wire


def test_the_client_redacts_every_field_it_sends():
    client = CloudClient(CloudConfig(model="openai/fake", api_base="http://127.0.0.1:9/v1", strategy="anchor",
                                     redact="default"))
    req = SpanRequest(messages=[{"role": "user", "content": [{"type": "text", "text": f"mail {EMAIL}"}]}],
                      prompt_text=f"<user>mail {EMAIL}", partial=f" I wrote to {EMAIL} and", prefix=f"{PHONE}:")
    _, kw = client.build(req)
    sent = repr(kw)
    assert EMAIL not in sent and PHONE not in sent and "<EMAIL_1>" in sent and "<PHONE_1>" in sent
    assert req.partial.endswith(f"{EMAIL} and")  # the request itself is untouched


def test_adapters_and_settings_take_a_redactor(tiny_dir):
    from langchain_collab import CollabLLM

    llm = CollabLLM(local_model=str(tiny_dir), cloud_model="openai/fake", base_url="http://127.0.0.1:9/v1",
                    redact="default")
    assert isinstance(llm._engine().cloud.redactor, Redactor)
