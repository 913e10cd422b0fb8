"""Images, audio, video and files are refused, never dropped: every form in which LangChain and LlamaIndex
accept them raises the core's ``UnsupportedInputError`` (``collab_core.prompts.message_text``, the one check
both adapters call), before any token is generated. On the tiny random model (fast)."""

import asyncio

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.content import (
    create_audio_block,
    create_file_block,
    create_image_block,
    create_plaintext_block,
    create_video_block,
)
from llama_index.core.base.llms import types as li

from collab_core.errors import UnsupportedInputError
from collab_core.prompts import message_text
from langchain_collab import CollabLLM as LangChainLLM
from llamaindex_collab import CollabLLM as LlamaIndexLLM
from llamaindex_collab.base import to_engine_messages

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
ASK = {"type": "text", "text": "What is in this?"}

# OpenAI-style parts (chat completions and Responses), LangChain's standard blocks (v1: url / base64 / id
# fields; v0: source_type), Anthropic-style sources
PARTS = {
    "image_url": {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    "image_url-http": {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    "input_audio": {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    "file": {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    "input_image": {"type": "input_image", "image_url": "https://example.com/cat.png"},
    "input_file": {"type": "input_file", "file_id": "file-abc"},
    "image-url": create_image_block(url="https://example.com/cat.png"),
    "image-base64": create_image_block(base64=PNG, mime_type="image/png"),
    "image-id": create_image_block(file_id="file-abc"),
    "audio-base64": create_audio_block(base64="UklGRg==", mime_type="audio/wav"),
    "file-url": create_file_block(url="https://example.com/a.pdf"),
    "file-id": create_file_block(file_id="file-abc"),
    "video-url": create_video_block(url="https://example.com/a.mp4"),
    "text-plain": create_plaintext_block(text="a file's text", mime_type="text/plain"),
    "v0-image-url": {"type": "image", "source_type": "url", "url": "https://example.com/cat.png"},
    "v0-image-base64": {"type": "image", "source_type": "base64", "data": PNG, "mime_type": "image/png"},
    "v0-image-id": {"type": "image", "source_type": "id", "id": "file-abc"},
    "v0-audio-base64": {"type": "audio", "source_type": "base64", "data": "UklGRg==", "mime_type": "audio/wav"},
    "v0-file-url": {"type": "file", "source_type": "url", "url": "https://example.com/a.pdf"},
    "anthropic-image": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    "anthropic-document": {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
}


@pytest.fixture(scope="module")
def lc(tiny_dir):
    return LangChainLLM(local_model=str(tiny_dir), max_tokens=4)


@pytest.fixture(scope="module")
def llama(tiny_dir):
    return LlamaIndexLLM(local_model=str(tiny_dir), max_tokens=4)


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_the_core_refuses_every_non_text_part(part):
    for content in ([part], [ASK, part], [part, "and this?"]):
        with pytest.raises(UnsupportedInputError, match=str(part["type"])):
            message_text(content)


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_langchain_refuses_every_part_in_every_message_form(lc, part):
    forms = [
        [{"role": "user", "content": [ASK, part]}],  # an OpenAI-style dict message
        [HumanMessage(content=[ASK, part])],
        [("human", [ASK, part])],  # a tuple
        [("user", [part])],
        [SystemMessage("Be brief."), HumanMessage(content=[part, ASK])],
    ]
    for messages in forms:
        with pytest.raises(UnsupportedInputError):
            lc.invoke(messages)
    with pytest.raises(UnsupportedInputError):
        list(lc.stream(forms[1]))
    with pytest.raises(UnsupportedInputError):
        asyncio.run(lc.ainvoke(forms[0]))


def test_langchain_refuses_an_image_in_any_role(lc):
    image = PARTS["image-url"]
    for history in ([AIMessage(content=[image]), HumanMessage("And?")],
                    [HumanMessage("Draw it."), AIMessage("", tool_calls=[{"name": "draw", "args": {}, "id": "c1"}]),
                     ToolMessage(content=[image], tool_call_id="c1"), HumanMessage("And?")],
                    [SystemMessage(content=[image]), HumanMessage("And?")]):
        with pytest.raises(UnsupportedInputError):
            lc.invoke(history)


def test_langchain_keeps_text_and_leaves_out_tool_and_reasoning_blocks(lc):
    from langchain_collab.chat_models import _to_messages

    msgs = _to_messages([HumanMessage(content=[ASK, "Be brief."]),
                         AIMessage(content=[{"type": "reasoning", "reasoning": "hm"}, {"type": "text", "text": "A cat."},
                                            {"type": "tool_use", "id": "c1", "name": "draw", "input": {}}],
                                   tool_calls=[{"name": "draw", "args": {}, "id": "c1"}])])
    assert [m["content"] for m in msgs] == ["What is in this?\nBe brief.", "A cat."]
    assert lc.invoke([HumanMessage(content=[ASK])]).content  # text parts alone are answered


LI_BLOCKS = {
    "ImageBlock-url": lambda: li.ImageBlock(url="https://example.com/cat.png"),
    "ImageBlock-bytes": lambda: li.ImageBlock(image=PNG.encode(), image_mimetype="image/png"),
    "AudioBlock": lambda: li.AudioBlock(audio=b"UklGRg==", format="wav"),
    "DocumentBlock": lambda: li.DocumentBlock(data=b"JVBERi0=", document_mimetype="application/pdf"),
    "VideoBlock": lambda: li.VideoBlock(url="https://example.com/a.mp4"),
    "CitableBlock": lambda: li.CitableBlock(title="a", source="https://example.com",
                                            content=[li.TextBlock(text="cited")]),
}


@pytest.mark.parametrize("make", LI_BLOCKS.values(), ids=LI_BLOCKS.keys())
def test_llamaindex_refuses_every_non_text_block(llama, make):
    messages = [li.ChatMessage(role="user", blocks=[li.TextBlock(text="What is in this?"), make()])]
    with pytest.raises(UnsupportedInputError):
        to_engine_messages(messages)
    with pytest.raises(UnsupportedInputError):
        llama.chat(messages)
    with pytest.raises(UnsupportedInputError):
        list(llama.stream_chat(messages))
    with pytest.raises(UnsupportedInputError):
        asyncio.run(llama.achat(messages))


def test_llamaindex_leaves_out_thinking_and_reads_tool_call_blocks():
    msg = li.ChatMessage(role="assistant", blocks=[
        li.ThinkingBlock(content="hm"), li.TextBlock(text="Checking."),
        li.ToolCallBlock(tool_call_id="c1", tool_name="get_weather", tool_kwargs={"city": "Paris"})])
    assert to_engine_messages([msg]) == [{"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]}]
