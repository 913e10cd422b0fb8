"""LangChain CollabLLM: the langchain-tests standard suites, plus what they do not cover.

The integration suite runs the real bundled SmolLM2 locally; the cloud leg is replayed from a cassette
recorded against mlx_lm.server on loopback (every routed span gets that recorded reply). The standard tests
SmolLM2 cannot pass are skipped there, with the reason, and run on Qwen2.5-Coder-0.5B (marker ``qwen``), whose
cloud replies are replayed from ``cassettes/qwen_suite``.
"""

import os
import re

import pytest
from conftest import LOOPBACK_BASE, LoopTicker, use_cassette
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CloudConfigError
from collab_core.router import ScheduledRouter
from langchain_collab import CollabLLM

CLOUD = {"cloud_model": "text-completion-openai/default_model",
         "api_base": os.environ.get("COLLAB_SUITE_API_BASE") or LOOPBACK_BASE}
# The local model of the standard integration suite: the bundled SmolLM2 by default; the whole suite on another
# model (Qwen: fetched and converted on first use, 491 MB): COLLAB_SUITE_LOCAL_MODEL=qwen2.5-coder-0.5b
LOCAL: dict = {"local_model": m} if (m := os.environ.get("COLLAB_SUITE_LOCAL_MODEL")) else {}
QWEN = "qwen2.5-coder-0.5b"
SMOLLM = "smollm2-135m"  # named: the default local model is Qwen2.5-Coder-0.5B
# What SmolLM2-135M cannot do, and the standard tests that ask for it: on SmolLM2 they are skipped, and
# TestCollabLLMQwenIntegration runs them on Qwen2.5-Coder-0.5B, which can.
_STRINGS = ("SmolLM2-135M cannot write free text inside a JSON value: greedy, it repeats itself ('A cat is a cat, "
            "a cat is ...') until the token limit, where the grammar closes the value cut short; run on Qwen "
            "(TestCollabLLMQwenIntegration)")
SMOLLM_LIMITS = {name: _STRINGS for name in (
    "test_structured_output", "test_structured_output_async", "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param", "test_json_mode", "test_bind_runnables_as_tools",
    "test_unicode_tool_call_integration")}
SMOLLM_LIMITS["test_agent_loop"] = ("SmolLM2-135M answers in prose when a tool call is optional (tool_choice "
                                    "'auto'); run on Qwen (TestCollabLLMQwenIntegration)")


class TestCollabLLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return CollabLLM

    @property
    def chat_model_params(self):
        return dict(CLOUD)

    @property
    def init_from_env_params(self):
        return ({"OPENAI_API_KEY": "sk-from-env"}, {"cloud_model": "gpt-4o-mini"}, {"api_key": "sk-from-env"})

    @property
    def model_override_value(self):
        return "text-completion-openai/other_model"


def _suite_params(local: dict) -> dict:
    # room for a tool call or a small JSON object (a plain answer usually ends well before)
    # the Qwen run records against the stand-in on this CPU: slow calls must not time out into the cassette
    return {**CLOUD, "threshold": 0.5, "max_tokens": 96, "pipeline": "sync", "local_model": SMOLLM, **local,
            **({"timeout": 300} if local else {})}


class _Suite(ChatModelIntegrationTests):
    """What both runs of the standard integration suite share."""

    @property
    def chat_model_class(self):
        return CollabLLM

    # tools and structured output, enforced by the grammar (capability flags: bind_tools with tool_choice and
    # with_structured_output are overridden, so has_tool_calling / has_tool_choice / has_structured_output hold)
    @property
    def supports_json_mode(self):
        return True

    @property
    def model_override_value(self):
        return "text-completion-openai/other_model"


@pytest.mark.smollm
class TestCollabLLMIntegration(_Suite):
    @pytest.fixture(autouse=True)
    def _smollm_limits(self, request):
        if not LOCAL.get("local_model") and request.node.originalname in SMOLLM_LIMITS:
            pytest.skip(SMOLLM_LIMITS[request.node.originalname])

    @pytest.fixture(autouse=True)
    def _replay_cloud(self, request):
        if not LOCAL:  # SmolLM2: every routed span gets the one recorded reply
            with use_cassette("loopback_completion", match_on=("method", "path"), allow_playback_repeats=True):
                yield
            return
        with _qwen_cassette(request):
            yield

    @property
    def chat_model_params(self):
        return _suite_params(LOCAL)


def _qwen_cassette(request):
    """The Qwen run: each test replays the stand-in cloud's own replies to its spans, in order (recorded with
    COLLAB_RECORD_MODE=once COLLAB_SUITE_API_BASE=<the stand-in's /v1>)."""
    return use_cassette("qwen_suite/" + re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name), match_on=("method", "path"))


@pytest.mark.qwen
class TestCollabLLMQwenIntegration(_Suite):
    """The standard tests SmolLM2 cannot pass (``SMOLLM_LIMITS``), on Qwen2.5-Coder-0.5B; the others run on SmolLM2."""

    @pytest.fixture(autouse=True)
    def _replay_cloud(self, request):
        with _qwen_cassette(request):
            yield

    @property
    def chat_model_params(self):
        return _suite_params({"local_model": QWEN})


for _name in dir(TestCollabLLMQwenIntegration):  # only the tests SmolLM2 cannot pass are collected here
    if _name.startswith("test_") and _name not in SMOLLM_LIMITS:
        setattr(TestCollabLLMQwenIntegration, _name, None)


# -- beyond the standard suites -----------------------------------------------------------------------------
PROMPT = "What is the capital of France?"


def test_construction_is_cheap_and_shares_the_model(tiny_dir):
    from collab_core.local.loading import _CACHE

    before = dict(_CACHE)
    a = CollabLLM(local_model=str(tiny_dir), max_tokens=4)
    b = CollabLLM(local_model=str(tiny_dir), max_tokens=8)
    assert dict(_CACHE) == before or (str(tiny_dir), "auto") in before  # nothing loaded by construction
    a.invoke("hi")
    b.invoke("hi")
    assert a._engine().local_model is b._engine().local_model


def test_bad_cloud_settings_fail_at_construction(monkeypatch):
    with pytest.raises(CloudConfigError, match="unknown cloud model"):
        CollabLLM(cloud_model="gpt-4o-mni")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CloudConfigError, match="OPENAI_API_KEY"):
        CollabLLM(cloud_model="gpt-4o-mini")


def test_stream_sources_usage_once_and_callbacks_per_token(tiny_dir):
    from langchain_core.callbacks import BaseCallbackHandler

    class Counter(BaseCallbackHandler):
        tokens: list = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    counter = Counter()
    counter.tokens = []
    with FakeCloud(reply=" Paris is") as fc:
        llm = CollabLLM(local_model=str(tiny_dir), cloud_model="text-completion-openai/fake", api_base=fc.url,
                        router=ScheduledRouter([2]), max_tokens=10, pipeline="sync")
        chunks = list(llm.stream(PROMPT, config={"callbacks": [counter]}))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert isinstance(full, AIMessageChunk)
    assert sum(c.usage_metadata is not None for c in chunks) == 1 and chunks[-1].usage_metadata
    assert chunks[-1].chunk_position == "last"
    sources = full.response_metadata["collab_sources"]
    assert "cloud" in sources and sources.count("cloud") == full.response_metadata["collab"]["cloud_tokens"]
    # once per token, plus the closing chunk (no text) that carries usage and stats
    assert len(counter.tokens) == len(sources) + 1 == 11  # the last may flush held-back bytes
    assert "".join(counter.tokens) == full.content
    assert full.usage_metadata["output_tokens"] == 10
    assert full.response_metadata["collab"]["cloud_calls"] == 1


def test_invoke_reports_routing_stats_and_model_name(tiny_dir):
    with FakeCloud(reply=" Paris") as fc:
        llm = CollabLLM(local_model=str(tiny_dir), cloud_model="text-completion-openai/fake", api_base=fc.url,
                        router=ScheduledRouter([1]), max_tokens=8)
        msg = llm.invoke([SystemMessage("Be brief."), HumanMessage(PROMPT)])
        assert fc.requests[0]["body"]["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert isinstance(msg, AIMessage) and " Paris" in msg.content
    c = msg.response_metadata["collab"]
    assert c["cloud_calls"] == 1 and c["cloud_tokens"] >= 1 and 0 < c["routed_share"] < 1
    assert c["token_sources"].count("cloud") == c["cloud_tokens"]
    assert msg.response_metadata["model_name"].endswith("+text-completion-openai/fake")
    assert msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + 8


def test_chain_with_output_parser(tiny_dir):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    chain = ChatPromptTemplate.from_messages([("human", "Say {thing}.")]) | CollabLLM(
        local_model=str(tiny_dir), max_tokens=6) | StrOutputParser()
    out = chain.invoke({"thing": "hello"})
    assert isinstance(out, str) and out == CollabLLM(local_model=str(tiny_dir), max_tokens=6).invoke(
        "Say hello.").content


async def test_async_does_not_block_the_loop(tiny_dir):
    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=40)
    seen, chunks = [], []
    async with LoopTicker() as t:
        async for c in llm.astream(PROMPT):
            chunks.append(c)
            seen.append(t.ticks)
    assert seen[-1] > seen[0] and chunks[-1].usage_metadata["output_tokens"] == 40
    results = await llm.abatch([PROMPT, "Name a fruit."])
    assert all(isinstance(r, AIMessage) and r.content for r in results)


def test_stop_is_honoured_across_tokens(tiny_dir):
    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=30)
    full = llm.invoke(PROMPT).content
    stop = full[5:8]
    cut = llm.invoke(PROMPT, stop=[stop])
    assert cut.content == full[: full.index(stop)] and cut.response_metadata["finish_reason"] == "stop"


def test_example_chain_runs_and_swaps_provider_by_model_string(tiny_dir, monkeypatch):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("langchain_chain", Path(__file__).parent.parent / "examples" /
                                                  "langchain_chain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "CollabLLM", lambda **kw: CollabLLM(local_model=str(tiny_dir), **kw))
    with FakeCloud(reply=" because") as fc:
        chain = mod.build_chain("text-completion-openai/fake", fc.url, threshold=0.0)
        out = chain.invoke({"question": "Why?"})
        assert isinstance(out, str) and out and fc.requests  # the cloud leg was used
    chain = mod.build_chain(None)  # same chain, local only
    assert isinstance(chain.invoke({"question": "Why?"}), str)


# -- tools and structured output ----------------------------------------------------------------------------------
def test_bind_tools_accepts_every_kind_of_tool_and_maps_tool_choice():
    from langchain_core.tools import tool
    from pydantic import BaseModel

    class Lookup(BaseModel):
        """Look a word up."""

        word: str

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool
    def shout(text: str) -> str:
        """Shout the text."""
        return text.upper()

    raw = {"type": "function", "function": {"name": "ping", "description": "Ping.", "parameters": {
        "type": "object", "properties": {}}}}
    llm = CollabLLM(local_model=SMOLLM, max_tokens=8)
    for choice, expected in ((None, None), ("auto", "auto"), ("any", "required"), ("required", "required"),
                             (True, "required"), ("add", "add"), ({"type": "function", "function": {"name": "shout"}},
                                                                  "shout")):
        bound = llm.bind_tools([Lookup, add, shout, raw], tool_choice=choice)
        assert [t["function"]["name"] for t in bound.kwargs["tools"]] == ["Lookup", "add", "shout", "ping"]
        assert bound.kwargs.get("tool_choice") == expected
    assert bound.kwargs["tools"][1]["function"]["parameters"]["properties"] == {"a": {"type": "integer"},
                                                                                 "b": {"type": "integer"}}


def test_tool_calls_and_results_are_converted_for_the_engine():
    from langchain_core.messages import ToolMessage

    from langchain_collab.chat_models import _to_messages

    msgs = _to_messages([HumanMessage("Weather?"),
                         AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
                         ToolMessage("18 C", tool_call_id="c1", name="get_weather")])
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert msgs[2] == {"role": "tool", "content": "18 C", "tool_call_id": "c1", "name": "get_weather"}


def _weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"18 C in {city}"


@pytest.mark.smollm
def test_tool_calls_invoke_stream_and_a_tool_message_round_trip(smollm):
    from langchain_core.messages import ToolMessage

    llm = CollabLLM(local_model=SMOLLM, max_tokens=64).bind_tools([_weather], tool_choice="any")
    msg = llm.invoke("What is the weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["_weather"] and set(msg.tool_calls[0]["args"]) == {"city"}
    assert "<tool_call>" not in msg.content and not msg.invalid_tool_calls
    chunks = list(llm.stream("What is the weather in Paris?"))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert "<tool_call>" not in full.content and full.tool_calls == [{**msg.tool_calls[0], "id": full.tool_calls[0]["id"]}]
    assert len(chunks[-1].tool_call_chunks) == 1 and chunks[-1].chunk_position == "last"
    # the result goes back through the chat template (generic format for SmolLM2); the cloud sees it as text
    with FakeCloud(reply=" sunny") as fc:
        plain = CollabLLM(local_model=SMOLLM, cloud_model="text-completion-openai/fake", api_base=fc.url, router=ScheduledRouter([0]),
                          max_tokens=6).bind_tools([_weather])
        plain.invoke([HumanMessage("What is the weather in Paris?"), msg,
                      ToolMessage("18 C in Paris", tool_call_id=msg.tool_calls[0]["id"])])
        prompt = fc.requests[0]["body"]["prompt"]
    assert "<tool_response>\n18 C in Paris\n</tool_response>" in prompt and '"name": "_weather"' in prompt


@pytest.mark.smollm
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output(smollm, method):
    from typing import Literal

    from pydantic import BaseModel

    class Pick(BaseModel):
        """A colour and a count."""

        colour: Literal["red", "green", "blue"]
        count: int

    llm = CollabLLM(local_model=SMOLLM, max_tokens=64)
    prompt = "Pick a colour (red, green or blue) and a count, as JSON with keys colour and count."
    if method == "json_mode":  # any JSON object: a dict (or the pydantic model, when it validates)
        out = llm.with_structured_output({"title": "Pick", "type": "object"}, method=method).invoke(prompt)
        assert isinstance(out, dict)
        return
    out = llm.with_structured_output(Pick, method=method).invoke(prompt)
    assert isinstance(out, Pick)
    raw = llm.with_structured_output(Pick, method=method, include_raw=True).invoke(prompt)
    assert raw["parsed"] == out and raw["parsing_error"] is None and isinstance(raw["raw"], AIMessage)
    as_dict = llm.with_structured_output(Pick.model_json_schema(), method=method).invoke(prompt)
    assert Pick.model_validate(as_dict) == out
    # a pydantic.v1 model comes back as an instance too (it came back as a dict: found by the standard suite on
    # Qwen, where SmolLM2's expected failure had hidden it)
    from pydantic import v1

    class PickV1(v1.BaseModel):
        colour: Literal["red", "green", "blue"]
        count: int

    old = llm.with_structured_output(PickV1, method=method).invoke(prompt)
    assert isinstance(old, PickV1) and old.dict() == out.model_dump()
