"""The providers' prompt caches: the marker on a request's stable prefix, the cached tokens in a reply's usage.

What is sent always starts with the stable prefix (the conversation): the same bytes on every call of an answer
and on later turns (OpenAI's automatic prefix cache, vLLM/SGLang prefix caching). Anthropic's cache needs a
``cache_control`` marker at its end (``mark_stable_prefix``).
"""

from __future__ import annotations

from typing import Any

_EPHEMERAL = {"type": "ephemeral"}


def cache_usage(usage: Any) -> tuple[int, int]:
    """(input tokens read from the provider's prompt cache, input tokens written to it) from LiteLLM's usage:
    ``prompt_tokens_details.cached_tokens`` (OpenAI, and Anthropic's reads as LiteLLM maps them) or
    ``cache_read_input_tokens``; ``cache_creation_input_tokens`` (Anthropic)."""
    if usage is None:
        return 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if not cached:
        cached = getattr(usage, "cache_read_input_tokens", None)
    written = getattr(usage, "cache_creation_input_tokens", None)
    return int(cached or 0), int(written or 0)


def mark_stable_prefix(messages: list[dict], conversation: list[dict]) -> list[dict]:
    """``messages`` with an Anthropic ``cache_control`` marker at the end of the conversation (the stable prefix:
    the same on every call of an answer). A last message that was extended (the restate protocol's request) is
    split into two text blocks, the conversation's own text marked."""
    if not conversation:
        return messages
    n = len(conversation)
    last = conversation[-1]
    last_text = last.get("content")
    if not isinstance(last_text, str):
        return messages
    for k in range(len(messages) - n + 1):
        m = messages[k + n - 1]
        text = m.get("content")
        if (messages[k:k + n - 1] == conversation[:-1] and m.get("role") == last.get("role")
                and isinstance(text, str) and text.startswith(last_text) and last_text):
            blocks = [{"type": "text", "text": last_text, "cache_control": dict(_EPHEMERAL)}]
            if text[len(last_text):]:
                blocks.append({"type": "text", "text": text[len(last_text):]})
            out = list(messages)
            out[k + n - 1] = {**m, "content": blocks}
            return out
    return messages
