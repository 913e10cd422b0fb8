"""LlamaIndex chat messages as the engine's ``{"role", "content"}`` messages (no routing logic here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock

from collab_core.prompts import chat_role, message_text


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as ``{"role", "content"}`` dicts. The blocks go through the core's
    ``message_text``: an ``ImageBlock``, ``AudioBlock``, ``DocumentBlock`` or other non-text block raises
    ``UnsupportedInputError``. A message's calls are its ``additional_kwargs["tool_calls"]``, else its
    ``ToolCallBlock``s."""
    out = []
    for m in messages:
        role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
        msg: dict[str, Any] = {"role": chat_role(role), "content": message_text(m.blocks)}
        calls = m.additional_kwargs.get("tool_calls") or [
            {"id": b.tool_call_id, "name": b.tool_name, "arguments": b.tool_kwargs}
            for b in m.blocks if isinstance(b, ToolCallBlock)]
        if calls:
            msg["tool_calls"] = list(calls)
        if msg["role"] == "tool":
            msg.update({k: m.additional_kwargs[k] for k in ("tool_call_id", "name") if m.additional_kwargs.get(k)})
        out.append(msg)
    return out
