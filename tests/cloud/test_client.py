"""Every continuation strategy, replayed from cassettes (no network).

`loopback_*` cassettes are real exchanges with mlx_lm.server on 127.0.0.1 (SmolLM2 as the "cloud");
re-record them with `python cassettes/record.py`. `*.documented.yaml` cassettes were written from the
provider's documented wire format because that provider cannot be reached here; the record script
replaces them with real recordings when the provider's key is set.
"""

import json

import pytest
from conftest import CASSETTES, LOOPBACK_BASE, exchanges, record_mode, sent_bodies, use_cassette

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.cloud.protocols import CHAT_PROTOCOL
from collab_core.router import ScheduledRouter

pytestmark = pytest.mark.smollm
QUESTION = "What is the capital of France?"


def _cassette_for(name: str) -> str:
    """A real recording if one exists (or is being made), else the one written from the documented format."""
    if record_mode() != "none" or (CASSETTES / f"{name}.yaml").exists():
        return name
    return f"{name}.documented"


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_completion_strategy_loopback(smollm, pipeline):
    eng = Engine(smollm, cloud="text-completion-openai/default_model", api_base=LOOPBACK_BASE,
                 router=ScheduledRouter([5]), pipeline=pipeline, cache=False)
    assert eng.cloud.strategy == "completion"
    with use_cassette("loopback_completion") as cass:
        gen = eng.generate(QUESTION, max_tokens=24)
    assert exchanges(cass) == 1
    body = sent_bodies(cass)[0]
    assert body["prompt"].endswith("<|im_start|>assistant\nThe capital of France is")
    assert body["max_tokens"] == 4 and body["temperature"] == 0
    cloud = [e for e in gen.events if e.source == "cloud"]
    assert cloud and gen.stats.cloud_tokens == len(cloud) and gen.stats.cloud_calls == 1
    # mlx_lm.server trims the span's leading space ("Paris."): the word boundary is restored
    assert gen.text.startswith("The capital of France is Paris")
    assert gen.stats.cloud_input_tokens > 0 and gen.stats.cloud_output_tokens > 0
    assert gen.stats.cloud_failures == 0


def test_token_exact_completion_loopback(smollm):
    """Cloud and local share a tokenizer (here both SmolLM2): spans come back as token ids and are spliced token
    for token -- a span of one token is exactly one cloud token, with no word boundary to guess. No spare tokens
    (``tests/engine/test_spare.py``): one call per routed position, as recorded."""
    cfg = CloudConfig(model="text-completion-openai/default_model", api_base=LOOPBACK_BASE, span_tokens=1,
                      spare_tokens=0, vocab=smollm.vocab_fingerprint)
    eng = Engine(smollm, cloud=cfg, router=ScheduledRouter([4, 5, 6]), pipeline="sync", cache=False)
    with use_cassette("loopback_token_exact") as cass:
        gen = eng.generate(QUESTION, max_tokens=24)
    assert eng.cloud.token_exact
    bodies = sent_bodies(cass)
    assert len(bodies) == 3 and all(b["max_tokens"] == 1 and b["logprobs"] is True for b in bodies)
    cloud = [e for e in gen.events if e.source == "cloud"]
    assert [e.token for e in cloud] == [e.token for e in gen.events[4:7]]  # positions 4, 5, 6: one token each
    assert gen.stats.cloud_calls == 3 and gen.stats.cloud_tokens == 3 and gen.stats.cloud_failures == 0
    assert gen.stats.rollbacks == 0
    assert gen.text.startswith("The capital of France is Paris")  # the space comes with the token


def test_token_exact_needs_the_same_vocabulary(smollm, tiny_lm):
    from collab_core.cloud.client import CloudClient

    for vocab, strategy, exact in [("local", "completion", True), (smollm.vocab_fingerprint, "completion", True),
                                   (tiny_lm.vocab_fingerprint, "completion", tiny_lm.vocab_fingerprint ==
                                    smollm.vocab_fingerprint), (None, "completion", False),
                                   ("local", "anchor", False)]:
        client = CloudClient(CloudConfig(model="openai/x", api_base=LOOPBACK_BASE, strategy=strategy, vocab=vocab))
        assert client.bind(smollm.vocab_fingerprint) is exact


def test_chat_protocol_loopback(smollm):
    """The chat-only protocol ``auto`` picks (``restate``), against a real chat endpoint (mlx_lm.server)."""
    eng = Engine(smollm, cloud="openai/default_model", api_base=LOOPBACK_BASE, router=ScheduledRouter([5]),
                 pipeline="sync", cache=False)
    assert eng.cloud.strategy == CHAT_PROTOCOL == "restate"
    with use_cassette("loopback_chat") as cass:
        gen = eng.generate(QUESTION, max_tokens=24)
    assert exchanges(cass) == 1
    msgs = sent_bodies(cass)[0]["messages"]
    # the question itself ends with the instruction: the conversation's prefix is the same for every call
    assert msgs == [{"role": "user", "content": QUESTION + '\n\nBegin your answer with exactly these words: '
                                                           '"The capital of France is"'}]
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 0
    assert any(e.source == "cloud" for e in gen.events)
    assert gen.text.startswith("The capital of France is ") and "France is The" not in gen.text


def test_anchor_strategy_loopback_chat(smollm):
    cfg = CloudConfig(model="openai/default_model", api_base=LOOPBACK_BASE, strategy="anchor")
    eng = Engine(smollm, cloud=cfg, router=ScheduledRouter([5]), pipeline="sync", cache=False)
    with use_cassette("loopback_anchor") as cass:
        gen = eng.generate(QUESTION, max_tokens=24)
    assert exchanges(cass) == 1
    msgs = sent_bodies(cass)[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[1] == {"role": "user", "content": QUESTION}  # the conversation first: a stable prefix
    assert msgs[2] == {"role": "assistant", "content": "The capital of France is"}
    assert '"of France is"' in msgs[3]["content"]
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 0
    assert any(e.source == "cloud" for e in gen.events)
    assert gen.text.startswith("The capital of France is ") and "of France is of" not in gen.text


@pytest.mark.parametrize(("model", "cassette", "env"), [
    ("gpt-4o-mini", "openai_chat", "OPENAI_API_KEY"),
    ("gemini/gemini-2.5-flash", "gemini_chat", "GEMINI_API_KEY"),
    ("anthropic/claude-sonnet-4-6", "anthropic46_chat", "ANTHROPIC_API_KEY"),
])
def test_chat_only_providers_use_the_chat_protocol(smollm, monkeypatch, model, cassette, env):
    """OpenAI chat, Gemini and Claude 4.6+ (no assistant prefill) get the chat protocol in their own wire
    formats; the restated answer never reaches the answer twice."""
    if record_mode() == "none":
        monkeypatch.setenv(env, "sk-test-not-a-real-key")
    eng = Engine(smollm, cloud=model, router=ScheduledRouter([5]), pipeline="sync", cache=False)
    assert eng.cloud.strategy == CHAT_PROTOCOL
    with use_cassette(_cassette_for(cassette)) as cass:
        gen = eng.generate(QUESTION, max_tokens=16)
    assert exchanges(cass) == 1
    assert 'Begin your answer with exactly these words: \\"The capital of France is\\"' in json.dumps(
        sent_bodies(cass)[0])
    assert gen.text.startswith("The capital of France is Paris.") and "France is The" not in gen.text
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 0 and gen.stats.cloud_input_tokens > 0
    assert gen.stats.cost_usd > 0  # priced from LiteLLM's (local) cost map
    assert "sk-test" not in (CASSETTES / f"{_cassette_for(cassette)}.yaml").read_text()


def test_instruct_strategy_loopback_chat(smollm):
    """The recorded instruct reply starts the answer over ("The capital of France"): not a continuation, so a
    failed call, and the local model's token stands (it once read "The capital of France is The capital of ...")."""
    cfg = CloudConfig(model="openai/default_model", api_base=LOOPBACK_BASE, strategy="instruct")
    eng = Engine(smollm, cloud=cfg, router=ScheduledRouter([5]), pipeline="sync", cache=False)
    assert eng.cloud.strategy == "instruct"
    with use_cassette("loopback_instruct") as cass:
        gen = eng.generate(QUESTION, max_tokens=24)
    assert exchanges(cass) == 1
    msgs = sent_bodies(cass)[0]["messages"]
    assert msgs[0]["role"] == "system" and "only the next few words" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": QUESTION}  # the conversation first: a stable prefix
    assert msgs[-1]["role"] == "user" and "<partial>The capital of France is</partial>" in msgs[-1]["content"]
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 1 and gen.stats.cloud_tokens == 0
    assert gen.stats.cloud_errors[0].startswith("UnalignedSpan") and "starts the answer over" in gen.stats.cloud_errors[0]
    assert gen.text == "The capital of France is Paris."


def test_anthropic_prefill_strategy(smollm, monkeypatch):
    if record_mode() == "none":  # replaying: any key will do (recording uses the real one)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    eng = Engine(smollm, cloud="anthropic/claude-sonnet-4-5", router=ScheduledRouter([5]), pipeline="sync",
                 cache=False)
    assert eng.cloud.strategy == "prefill"
    with use_cassette(_cassette_for("anthropic_prefill")) as cass:
        gen = eng.generate(QUESTION, max_tokens=16)
    body = sent_bodies(cass)[0]
    assert body["messages"][-1]["role"] == "assistant"
    assert body["messages"][-1]["content"] in ("The capital of France is",
                                                [{"type": "text", "text": "The capital of France is"}])
    assert "sk-ant-test" not in (CASSETTES / f"{_cassette_for('anthropic_prefill')}.yaml").read_text()
    # Anthropic returns "Paris." for a prefill without trailing space: the space is restored
    assert gen.text.startswith("The capital of France is Paris.")
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_input_tokens > 0
    assert gen.stats.cost_usd > 0  # priced from LiteLLM's (local) cost map
    assert gen.finish_reason == "stop"  # end_turn inside the span ends the answer


def test_auto_picks_a_strategy_per_provider(monkeypatch):
    from collab_core.cloud.client import choose_strategy

    assert choose_strategy("anthropic/claude-sonnet-4-6") == CHAT_PROTOCOL  # Claude 4.6+ takes no prefill
    assert choose_strategy("claude-haiku-4-5") == "prefill"
    assert choose_strategy("deepseek/deepseek-chat") == "prefix"
    assert choose_strategy("mistral/mistral-large-latest") == "prefix"
    assert choose_strategy("hosted_vllm/Qwen/Qwen2.5-32B-Instruct") == "completion"
    assert choose_strategy("together_ai/meta-llama/Llama-3-70b") == "completion"
    assert choose_strategy("gpt-4o-mini") == CHAT_PROTOCOL
    assert choose_strategy("gemini/gemini-2.0-flash") == CHAT_PROTOCOL


def test_deepseek_prefix_strategy(smollm, monkeypatch):
    if record_mode() == "none":
        monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-deepseek-test-not-a-real-key")
    eng = Engine(smollm, cloud="deepseek/deepseek-chat", router=ScheduledRouter([5]), pipeline="sync", cache=False)
    assert eng.cloud.strategy == "prefix"
    with use_cassette(_cassette_for("deepseek_prefix")) as cass:
        gen = eng.generate(QUESTION, max_tokens=16)
    last = sent_bodies(cass)[0]["messages"][-1]
    assert last == {"role": "assistant", "content": "The capital of France is", "prefix": True}
    assert gen.text.startswith("The capital of France is Paris")
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_tokens >= 1


def test_vllm_continue_final_message_strategy(smollm):
    eng = Engine(smollm, cloud="hosted_vllm/Qwen/Qwen2.5-32B-Instruct", api_base="http://127.0.0.1:8000/v1",
                 router=ScheduledRouter([5]), pipeline="sync", cache=False)
    eng.cloud.strategy = "continue"
    with use_cassette(_cassette_for("vllm_continue")) as cass:
        gen = eng.generate(QUESTION, max_tokens=16)
    body = sent_bodies(cass)[0]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant", "content": "The capital of France is"}
    assert gen.text.startswith("The capital of France is Paris")


def test_token_ids_of_a_completion_choice():
    from types import SimpleNamespace as NS

    from collab_core.cloud.client import token_ids_of

    assert token_ids_of(NS(logprobs=NS(content=[{"id": 12095, "logprob": -0.7}, {"id": 13, "logprob": -0.5}],
                                      tokens=None))) == [12095, 13]  # mlx_lm.server
    assert token_ids_of(NS(logprobs={"tokens": ["token_id:12095", "token_id:13"]})) == [12095, 13]  # vLLM
    assert token_ids_of(NS(logprobs={"tokens": [" Paris", "."]})) is None  # text tokens: no ids
    assert token_ids_of(NS(logprobs=None)) is None


def test_text_completions_reuse_one_sdk_client(monkeypatch):
    """LiteLLM built an OpenAI client per text completion -- an SSL context (the CA bundle read again) and a new
    connection each time, 17 of 29 ms of Python a call; the cloud client now hands it one of its own."""
    import ssl

    from collab_core.cloud.client import CloudClient, SpanRequest
    from collab_core.devtools.fakecloud import FakeCloud

    made = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: made.append(1) or real(*a, **k))
    with FakeCloud(reply=" the sea") as fc:
        client = CloudClient(CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=2))
        req = SpanRequest(messages=[], prompt_text="Once upon a time", partial=" there was")
        spans = [client.continue_span(req)]
        made.clear()  # the first call made the client (and LiteLLM its own first things)
        spans += [client.continue_span(req) for _ in range(2)]
        client.close()
    assert [s.text for s in spans] == [" the"] * 3  # two tokens asked for, cut to a word boundary
    assert made == []  # one per call without the shared client
    chat = CloudClient(CloudConfig(model="openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1"))
    assert chat._text_client is None  # LiteLLM's own handling elsewhere
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    remote = CloudClient(CloudConfig(model="text-completion-openai/m", api_base="https://example.invalid/v1"))
    assert remote._text_client is None  # no key to hand it: LiteLLM resolves (or reports) the key itself
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-env")
    remote = CloudClient(CloudConfig(model="text-completion-openai/m", api_base="https://example.invalid/v1"))
    assert remote._text_client.api_key == "sk-test-env"
