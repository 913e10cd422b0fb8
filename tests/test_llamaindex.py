"""LlamaIndex CollabLLM and CollabEmbedding.

The LLM on the tiny random model (fast; the text is gibberish but deterministic), the cloud leg on a
FakeCloud peer on loopback with a ScheduledRouter; the query-engine example on the bundled SmolLM2.
"""

import importlib.util
import math
import threading
from pathlib import Path

import pytest
from conftest import LoopTicker
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CloudConfigError, ModelLoadError
from collab_core.local.embedding import embedding_dim
from collab_core.prompts import encode_prompt
from collab_core.router import ScheduledRouter
from llamaindex_collab import CollabEmbedding, CollabLLM
from llamaindex_collab.base import to_engine_messages

PROMPT = "What is the capital of France?"
MESSAGES = [ChatMessage(role=MessageRole.SYSTEM, content="Be brief."), ChatMessage(role="user", content=PROMPT)]
ENGINE_MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
CLOUD = "text-completion-openai/fake"
N = 24


@pytest.fixture
def llm(tiny_dir):
    return CollabLLM(local_model=str(tiny_dir), max_tokens=N)


def _assert_usage(raw, prompt_tokens, completion_tokens):
    u = raw["usage"]
    assert all(isinstance(v, int) for v in u.values())
    assert u == {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
    assert raw["collab"]["total_tokens"] == completion_tokens
    assert isinstance(raw["collab"]["cloud_tokens"], int) and isinstance(raw["collab"]["cloud_calls"], int)


# -- construction and metadata ------------------------------------------------------------------------------
def test_construction_is_cheap_and_metadata_comes_from_the_model(tiny_dir, tiny_lm):
    lazy = CollabLLM(local_model="/no/such/model")  # nothing is loaded by construction...
    assert lazy.to_payload()["model_name"] == "/no/such/model"  # ...nor by the callbacks' payload
    with pytest.raises(ModelLoadError):
        _ = lazy.metadata  # the model loads on first use
    md = CollabLLM(local_model=str(tiny_dir), max_tokens=N).metadata
    assert md.context_window == tiny_lm.context_window == 256
    assert md.num_output == N and md.is_chat_model and md.is_function_calling_model
    assert md.model_name == str(tiny_dir)


def test_bad_cloud_settings_fail_at_construction(monkeypatch):
    with pytest.raises(CloudConfigError, match="unknown cloud model"):
        CollabLLM(cloud_model="gpt-4o-mni")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CloudConfigError, match="OPENAI_API_KEY"):
        CollabLLM(cloud_model="gpt-4o-mini")
    assert "api_key" not in CollabLLM(cloud_model="gpt-4o-mini", api_key="sk-secret").to_dict()


# -- complete / chat ----------------------------------------------------------------------------------------
def test_complete_uses_the_chat_template_and_reports_usage(llm, tiny_lm):
    ref = Engine(tiny_lm).generate(PROMPT, max_tokens=N)
    r = llm.complete(PROMPT)
    assert r.text == ref.text and r.text
    _assert_usage(r.raw, len(encode_prompt(tiny_lm, PROMPT)), ref.stats.total_tokens)
    assert r.raw["collab"]["cloud_tokens"] == 0 and r.raw["collab"]["token_sources"] == ["local"] * len(
        ref.events)
    assert r.raw["finish_reason"] == r.additional_kwargs["finish_reason"] == ref.finish_reason
    assert r.raw["model"] == str(tiny_lm.spec)
    # the LLM's system_prompt goes into the template; formatted=True sends the prompt as is, no template
    sys_llm = CollabLLM(local_model=llm.local_model, max_tokens=2, system_prompt="Be brief.")
    assert sys_llm.complete(PROMPT).raw["usage"]["prompt_tokens"] == len(
        encode_prompt(tiny_lm, PROMPT, system="Be brief."))
    raw_prompt = llm.complete(PROMPT, formatted=True, max_tokens=4)
    assert raw_prompt.raw["usage"]["prompt_tokens"] == len(tiny_lm.tokenizer.encode(PROMPT))
    assert raw_prompt.raw["usage"]["completion_tokens"] <= 4


def test_chat_goes_through_the_chat_template(llm, tiny_lm):
    ref = Engine(tiny_lm).generate(ENGINE_MESSAGES, max_tokens=N)
    r = llm.chat(MESSAGES)
    assert r.message.role == MessageRole.ASSISTANT and r.message.content == ref.text
    ids = encode_prompt(tiny_lm, ENGINE_MESSAGES)
    assert tiny_lm.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # the generation prompt
    _assert_usage(r.raw, len(ids), ref.stats.total_tokens)


def test_streams_concatenate_to_the_full_text_with_sources_and_usage_last(llm, tiny_lm):
    full = llm.complete(PROMPT).text
    for chunks in (list(llm.stream_complete(PROMPT)), list(llm.stream_chat([ChatMessage(role="user",
                                                                                       content=PROMPT)]))):
        deltas = [c.delta for c in chunks]
        assert "".join(deltas) == full and " " in full  # spaces intact
        ids = [c.raw["token"] for c in chunks[:-1]]
        assert tiny_lm.tokenizer.decode(ids) == full  # one chunk per token, nothing lost between them
        last = getattr(chunks[-1], "text", None) or chunks[-1].message.content
        assert last == full  # the cumulative text
        assert all(c.additional_kwargs["source"] == "local" and "usage" not in c.raw for c in chunks[:-1])
        _assert_usage(chunks[-1].raw, chunks[-1].raw["usage"]["prompt_tokens"], len(ids))
        assert chunks[-1].additional_kwargs["finish_reason"] in ("stop", "length")


def test_stop_sequences_are_honoured(tiny_dir, llm):
    full = llm.complete(PROMPT).text
    stop = full[5:8]
    want = full[: full.index(stop)]
    r = llm.complete(PROMPT, stop=[stop])
    assert r.text == want and r.raw["finish_reason"] == "stop"
    assert "".join(c.delta for c in llm.stream_complete(PROMPT, stop=[stop])) == want
    assert CollabLLM(local_model=str(tiny_dir), max_tokens=N, stop=[stop]).complete(PROMPT).text == want


def test_abandoned_stream_releases_the_engine(llm):
    for _ in llm.stream_complete(PROMPT):
        break
    out = []
    t = threading.Thread(target=lambda: out.append(llm.complete(PROMPT, max_tokens=3)), daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive() and out[0].raw["usage"]["completion_tokens"] <= 3


# -- async ------------------------------------------------------------------------------------------------------
async def test_async_forms_match_the_sync_ones(llm):
    full = llm.complete(PROMPT).text
    chat = llm.chat(MESSAGES).message.content
    assert (await llm.acomplete(PROMPT)).text == full
    assert (await llm.achat(MESSAGES)).message.content == chat
    chunks = [c async for c in await llm.astream_complete(PROMPT)]
    assert "".join(c.delta for c in chunks) == full and chunks[-1].raw["usage"]["completion_tokens"] > 0
    assert all(c.additional_kwargs["source"] == "local" for c in chunks)
    chunks = [c async for c in await llm.astream_chat(MESSAGES)]
    assert "".join(c.delta for c in chunks) == chat and chunks[-1].message.content == chat
    assert chunks[-1].raw["usage"]["completion_tokens"] == chunks[-1].raw["collab"]["total_tokens"]


async def test_async_never_blocks_the_event_loop(tiny_dir):
    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=40)
    llm.complete(PROMPT, max_tokens=1)  # model loaded: what follows is decoding only
    seen = []
    async with LoopTicker() as t:
        async for _chunk in await llm.astream_complete(PROMPT):
            seen.append(t.ticks)  # the ticker's count when each chunk arrives
        start = t.ticks
        await llm.acomplete(PROMPT)
        after_complete = t.ticks
    # A blocking stream (CustomLLM's async default) runs to the end inside the consumer: the ticker would be
    # frozen at one count for all 41 chunks. Here the loop kept serving it while tokens were decoded.
    assert len(seen) == 41 and seen[-1] > seen[0]
    assert any(b > a for a, b in zip(seen, seen[1:]))
    assert after_complete > start


# -- callbacks and instrumentation -----------------------------------------------------------------------------
async def test_callbacks_and_instrumentation_see_every_call(tiny_dir, tiny_lm):
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent

    class Ends(BaseEventHandler):
        seen: list = []

        def handle(self, event, **kwargs):
            if isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)):
                self.seen.append(event.response)

    counter = TokenCountingHandler(tokenizer=tiny_lm.tokenizer.encode)
    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=8, callback_manager=CallbackManager([counter]))
    ends = Ends()
    dispatcher = get_dispatcher()
    dispatcher.add_event_handler(ends)
    try:
        responses = [llm.complete(PROMPT), llm.chat(MESSAGES), list(llm.stream_complete(PROMPT))[-1],
                     list(llm.stream_chat(MESSAGES))[-1], await llm.acomplete(PROMPT), await llm.achat(MESSAGES),
                     [c async for c in await llm.astream_complete(PROMPT)][-1],
                     [c async for c in await llm.astream_chat(MESSAGES)][-1]]
    finally:
        dispatcher.event_handlers.remove(ends)
    assert len(counter.llm_token_counts) == len(responses) == 8
    for event, r in zip(counter.llm_token_counts, responses):
        assert event.prompt_token_count == r.raw["usage"]["prompt_tokens"] > 0  # read from raw["usage"]
        assert event.completion_token_count == r.raw["usage"]["completion_tokens"] > 0
    assert counter.total_llm_token_count == sum(r.raw["usage"]["total_tokens"] for r in responses)
    assert [r.raw["usage"] for r in ends.seen] == [r.raw["usage"] for r in responses]


# -- routing ---------------------------------------------------------------------------------------------------
def test_routed_tokens_come_from_the_cloud(tiny_dir):
    with FakeCloud(reply=" Paris") as fc:
        llm = CollabLLM(local_model=str(tiny_dir), cloud_model=CLOUD, api_base=fc.url, router=ScheduledRouter([2]),
                        pipeline="sync", max_tokens=10)
        chunks = list(llm.stream_complete(PROMPT))
        r = llm.chat(MESSAGES)
        assert fc.requests
    cloud = [c.delta for c in chunks if c.additional_kwargs["source"] == "cloud"]
    assert "".join(cloud).strip() == "Paris" and " Paris" in chunks[-1].text
    assert all(c.raw["source"] == c.additional_kwargs["source"] for c in chunks[:-1])
    stats = chunks[-1].raw["collab"]
    assert stats["cloud_tokens"] == len(cloud) > 0 and stats["cloud_calls"] == 1
    assert r.raw["collab"]["cloud_tokens"] > 0 and " Paris" in r.message.content
    assert r.raw["collab"]["token_sources"].count("cloud") == r.raw["collab"]["cloud_tokens"]
    assert r.raw["model"].endswith("+" + CLOUD) and llm.metadata.model_name.endswith("+" + CLOUD)


async def test_routed_tokens_async_pipeline(tiny_dir):
    with FakeCloud(reply=" Paris") as fc:
        llm = CollabLLM(local_model=str(tiny_dir), cloud_model=CLOUD, api_base=fc.url, router=ScheduledRouter([1]),
                        pipeline="async", max_tokens=10)
        chunks = [c async for c in await llm.astream_chat(MESSAGES)]
    sources = [c.additional_kwargs["source"] for c in chunks[:-1]]
    assert "cloud" in sources and chunks[-1].raw["collab"]["cloud_tokens"] == sources.count("cloud")
    assert " Paris" in chunks[-1].message.content


# -- embedding -------------------------------------------------------------------------------------------------
async def test_embedding_is_normalised_deterministic_and_async(tiny_dir):
    emb = CollabEmbedding(local_model=str(tiny_dir), max_length=16)
    texts = ["The quick brown fox.", "Paris is the capital of France.", ""]
    vecs = emb.get_text_embedding_batch(texts)
    assert [len(v) for v in vecs] == [64, 64, 64] and embedding_dim(emb._model()) == 64  # the hidden size
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)
    assert vecs[0] != vecs[1]
    assert emb.get_query_embedding(texts[1]) == pytest.approx(vecs[1], abs=1e-6)
    assert await emb.aget_query_embedding(texts[1]) == pytest.approx(vecs[1], abs=1e-6)
    batch = await emb.aget_text_embedding_batch(texts[:2])
    assert all(a == pytest.approx(b, abs=1e-6) for a, b in zip(batch, vecs[:2], strict=True))
    long = "word " * 40  # more than max_length tokens: truncated, so a different tail changes nothing
    assert emb.get_text_embedding(long + "tail") == pytest.approx(emb.get_text_embedding(long + "other"), abs=1e-6)


# -- the query-engine example ----------------------------------------------------------------------------------
def _example():
    path = Path(__file__).resolve().parent.parent / "examples" / "llamaindex_query_engine.py"
    spec = importlib.util.spec_from_file_location("llamaindex_query_engine", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.smollm
async def test_query_engine_example_answers_sync_streaming_and_async(smollm):
    ex = _example()
    llm = CollabLLM(local_model=smollm.spec, max_tokens=40)
    embed = CollabEmbedding(local_model=smollm.spec)

    engine = ex.build_query_engine(llm, embed)
    response = engine.query(ex.QUESTION)
    assert "green" in str(response).lower()
    assert "Brindlewood" in response.source_nodes[0].node.get_content()  # retrieval found the right one

    streamed = ex.build_query_engine(llm, embed, streaming=True).query(ex.QUESTION)
    deltas = list(streamed.response_gen)
    assert len(deltas) > 5 and "green" in "".join(deltas).lower()

    response = await engine.aquery("Who is the head baker at the Copper Kettle bakery?")
    assert "Marta" in str(response)
    assert "Copper Kettle" in response.source_nodes[0].node.get_content()


# -- tools and structured output (FunctionCallingLLM) ---------------------------------------------------------
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"18 C and sunny in {city}"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _tools():
    from llama_index.core.tools import FunctionTool

    return [FunctionTool.from_defaults(get_weather), FunctionTool.from_defaults(add)]


def _agent_cloud(body):
    """A scripted cloud for an agent: first a call, then (after the tool's result) a short answer."""
    prompt = body["prompt"]
    partial = prompt.rsplit("<|im_start|>assistant\n", 1)[1]
    if "</tool_response><|im_end|>" in prompt:  # a tool result came back (not the instructions naming the tags)
        target = "It is 18 C and sunny in Paris."
    else:
        target = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    return target[len(partial):] if target.startswith(partial) else " ok"


def test_tool_messages_go_back_through_the_template():
    msgs = [ChatMessage(role="user", content="Weather?"),
            ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
                {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]}),
            ChatMessage(role=MessageRole.TOOL, content="18 C", additional_kwargs={"tool_call_id": "c1",
                                                                                  "name": "get_weather"})]
    out = to_engine_messages(msgs)
    assert out[1]["tool_calls"] == [{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert out[2] == {"role": "tool", "content": "18 C", "tool_call_id": "c1", "name": "get_weather"}


@pytest.mark.smollm
def test_chat_with_tools_predict_and_call_and_stream(smollm):
    llm = CollabLLM(local_model="smollm2-135m", max_tokens=80)
    r = llm.chat_with_tools(_tools(), user_msg="What is the weather in Paris?", tool_required=True)
    calls = llm.get_tool_calls_from_response(r)
    assert len(calls) == 1 and calls[0].tool_name in ("get_weather", "add") and "<tool_call>" not in str(
        r.message.content)
    if calls[0].tool_name == "get_weather":
        assert set(calls[0].tool_kwargs) == {"city"} and isinstance(calls[0].tool_kwargs["city"], str)
    out = llm.predict_and_call(_tools(), user_msg="Add 2 and 3.", tool_required=True)
    assert out.sources and out.sources[0].tool_name in ("get_weather", "add") and not out.sources[0].is_error
    chunks = list(llm.stream_chat_with_tools(_tools(), user_msg="Add 2 and 3.", tool_required=True))
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content == ""  # the call is held back
    streamed = llm.get_tool_calls_from_response(chunks[-1])
    assert len(streamed) == 1 and streamed[0].tool_name in ("get_weather", "add")
    with pytest.raises(ValueError, match="no"):
        llm.get_tool_calls_from_response(llm.chat([ChatMessage(role="user", content="Hi")], max_tokens=4))


@pytest.mark.smollm
def test_structured_predict_and_structured_llm(smollm):
    from llama_index.core.prompts import PromptTemplate
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    llm = CollabLLM(local_model="smollm2-135m", max_tokens=60)
    p = llm.structured_predict(Person, PromptTemplate("Make up a person called {n}."), n="Ann")
    assert isinstance(p, Person) and isinstance(p.age, int)
    r = llm.as_structured_llm(Person).chat([ChatMessage(role="user", content="Make up a person called Bob.")])
    assert isinstance(r.raw, Person)
    g = llm.chat([ChatMessage(role="user", content="A person?")], json_schema=Person.model_json_schema())
    assert Person.model_validate_json(g.message.content)


@pytest.mark.smollm
async def test_function_agent_runs_to_completion_with_a_routed_call(smollm):
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    with FakeCloud(reply=_agent_cloud) as fc:
        llm = CollabLLM(local_model="smollm2-135m", cloud_model=CLOUD, api_base=fc.url, router=ScheduledRouter([0]),
                        pipeline="sync", max_tokens=40)
        agent = FunctionAgent(tools=_tools(), llm=llm, system_prompt="Use the tools.")
        handler = agent.run(user_msg="What is the weather in Paris?")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        answer = await handler
        assert len(fc.requests) >= 2
    assert [(r.tool_name, r.tool_kwargs) for r in results] == [("get_weather", {"city": "Paris"})]
    assert results[0].tool_output.content == "18 C and sunny in Paris"
    assert str(answer).startswith("It is 18 C and sunny in Paris.")
