"""The one prompt type, rendered for the local model and turned into messages for the cloud.

A ``Prompt`` is a string, a chat message list (``{"role", "content"}`` mappings, OpenAI-style), or token ids
already encoded for the local model. A message list that ends with an assistant message gives the start of the
answer (a *prefill*): the local model goes on from it, and the cloud sees it as the answer so far. ``render_prompt`` gives the local model's text and ids (through its chat
template when it has one); ``messages_for`` gives the conversation the chat strategies send to the cloud.
Message content is text: a string, or a list of text parts (``message_text``: OpenAI-style, LangChain or
LlamaIndex); an image, audio, file or other non-text part raises ``UnsupportedInputError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import EmptyPromptError, UnsupportedInputError
from .tools import has_tool_content, normalize_tools, tool_format, tool_messages

#: One chat message: ``{"role": "user" | "assistant" | "system" | "tool", "content": str | [text parts]}``.
Message = Mapping[str, Any]
#: What every generation entry point takes.
Prompt = str | Sequence[Message] | Sequence[int]

# Role names used by LangChain (message.type) and LlamaIndex (MessageRole) -> the roles chat templates know.
_ROLE_ALIASES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "chatbot": "assistant",
                 "model": "assistant", "system": "system", "developer": "system", "tool": "tool", "function": "tool"}


def chat_role(role: str) -> str:
    """A framework's role name as a chat-template role (unknown roles are treated as the user's)."""
    return _ROLE_ALIASES.get(str(role).lower(), "user")


def is_token_ids(prompt: Prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], int)


#: Content-part types that are text (OpenAI chat and Responses, Anthropic, LangChain, LlamaIndex ``block_type``).
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
#: Parts that are not content and are left out: tool calls (a message's calls travel in its ``tool_calls``), a
#: model's reasoning, a cache marker.
SKIPPED_PARTS = frozenset({"tool_call", "tool_call_chunk", "invalid_tool_call", "tool_use", "function_call",
                           "server_tool_call", "reasoning", "thinking", "redacted_thinking", "cache"})


def _part(part: Any) -> tuple[str | None, Any]:
    """(type, text) of one content part: a string, a mapping (OpenAI, LangChain's standard blocks: ``type``;
    LlamaIndex dumped: ``block_type``) or an object with those attributes (a LlamaIndex block)."""
    if isinstance(part, str):
        return "text", part
    if isinstance(part, Mapping):
        return part.get("type") or part.get("block_type"), part.get("text")
    kind = getattr(part, "block_type", None) or getattr(part, "type", None)
    return (kind if isinstance(kind, str) else None), getattr(part, "text", None)


def message_text(content: Any) -> str:
    """A message's content as text: a string, or a list of content parts of which only text is accepted.

    The one check both adapters and the engine go through (LangChain passes a message's ``content``,
    LlamaIndex its ``blocks``): parts are OpenAI-style dicts, LangChain's standard content blocks or LlamaIndex
    blocks. An image, audio, video, file or document part (``image_url``, ``input_audio``, ``file``, ``image``
    with a url, base64 data or an id, ``ImageBlock``, ``AudioBlock``, ``DocumentBlock``...), or any part of
    an unknown type, raises ``UnsupportedInputError``: it is never dropped silently. Tool-call and reasoning
    parts (``SKIPPED_PARTS``) are not content and are left out."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            kind, text = _part(part)
            if kind in TEXT_PARTS:
                parts.append(str(text or ""))
            elif kind not in SKIPPED_PARTS:
                name = kind if kind is not None else type(part).__name__
                raise UnsupportedInputError(f"the local model takes text only, not {name!r} content")
        return "\n".join(parts)
    raise UnsupportedInputError(f"the local model takes text only, not {type(content).__name__} content")


def _messages(prompt: Prompt) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{**m, "role": m["role"], "content": message_text(m.get("content"))} for m in prompt]


def _with_system(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    if not system:
        return messages
    return [{"role": "system", "content": system}] + [m for m in messages if m.get("role") != "system"]


def split_prefill(prompt: Prompt) -> tuple[Prompt, str]:
    """(the conversation, the answer's start): a trailing assistant message is the answer's start."""
    if isinstance(prompt, (list, tuple)) and prompt and not is_token_ids(prompt) and \
            isinstance(prompt[-1], Mapping) and prompt[-1].get("role") == "assistant":
        return list(prompt[:-1]), message_text(prompt[-1].get("content"))
    return prompt, ""


def render_prompt(lm, prompt: Prompt, *, chat: bool | None = None, system: str | None = None,
                  tools: Sequence[Mapping[str, Any]] | None = None,
                  json_schema: Mapping[str, Any] | None = None) -> tuple[str, list[int]]:
    """The prompt as text and as token ids for the local model ``lm``.

    A string goes through the chat template (with the generation prompt) when the model has one, unless
    ``chat=False``; a message list always does, and a trailing assistant message is appended after the
    generation prompt as the answer's start; token ids are taken as they are. ``tools`` and ``json_schema``
    (and a conversation's earlier tool calls and results) are written in the model's tool format
    (``tools.tool_messages``): its template's tools section where it has one, the generic fallback otherwise.
    """
    tok = lm.tokenizer
    if is_token_ids(prompt):
        return tok.decode(list(prompt)), list(prompt)
    structured = bool(tools) or json_schema is not None
    if isinstance(prompt, str):
        if not prompt.strip():
            raise EmptyPromptError("the prompt is empty")
        use_chat = lm.has_chat_template if chat is None else chat
        if not use_chat and not structured:
            return prompt, list(tok.encode(prompt))
    conversation, prefill = split_prefill(prompt)
    messages = _messages(conversation)
    if not any(m["content"].strip() or m.get("tool_calls") for m in messages):
        raise EmptyPromptError("the message list has no content")
    messages = _with_system(messages, system)
    template_kw: dict[str, Any] = {}
    if structured or has_tool_content(messages):
        fmt = tool_format(lm)
        messages = tool_messages(messages, tools, json_schema, fmt)
        if fmt.kind == "native" and tools:
            template_kw["tools"] = normalize_tools(tools)
    if not lm.has_chat_template:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:" + prefill
        return text, list(tok.encode(text))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kw) + prefill
    return text, list(tok.encode(text, add_special_tokens=False))


def cloud_prompt(prompt: Prompt, *, system: str | None = None, tools: Sequence[Mapping[str, Any]] | None = None,
                 json_schema: Mapping[str, Any] | None = None) -> Prompt:
    """The prompt as the cloud's chat strategies see it: tools, tool calls and results in the generic text
    format (``tools.tool_messages``), so the cloud continues the answer in the format the grammar expects."""
    if is_token_ids(prompt) or not (tools or json_schema is not None or
                                    (not isinstance(prompt, str) and has_tool_content(prompt))):
        return prompt
    conversation, prefill = split_prefill(prompt)
    messages = tool_messages(_with_system(_messages(conversation), system), tools, json_schema)
    return messages + ([{"role": "assistant", "content": prefill}] if prefill else [])


def encode_prompt(lm, prompt: Prompt, *, chat: bool | None = None, system: str | None = None) -> list[int]:
    """Token ids for a prompt (see ``render_prompt``)."""
    return render_prompt(lm, prompt, chat=chat, system=system)[1]


def messages_for(prompt: Prompt, system: str | None = None) -> list[dict[str, str]]:
    """The conversation as ``{"role", "content"}`` chat messages (what the cloud's chat strategies send),
    without a trailing assistant prefill (see ``split_prefill``); empty for token ids."""
    if is_token_ids(prompt):
        return []
    conversation, _ = split_prefill(prompt)
    return [{"role": m["role"], "content": m["content"]} for m in _with_system(_messages(conversation), system)]
