"""What a continuation strategy is: the ``Strategy`` interface, the ``SpanRequest`` it works on, and the check
that a chat reply continues the answer at all.

A strategy says how the cloud is asked for the next span of an answer and how its reply is read:

* ``shape`` -- the request (LiteLLM keyword arguments; ``call`` names the LiteLLM call that takes them);
* ``read`` -- the span in the reply's text, or a ``CloudError`` when the reply is no continuation (a failed
  call: the engine keeps its local token);
* ``cache_parts`` -- what of the request shapes the span, and so goes into the span cache's key;
* ``ends_answer`` -- whether a span ends the answer.

The built-in strategies and the registry by name are in ``strategies`` (chat-only protocols in ``protocols``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import CloudError
from ..prompts import Prompt, messages_for, split_prefill

#: A chat reply that copies this many words in a row from the conversation, words the answer so far does not
#: hold, restates the prompt instead of continuing the answer. Shorter runs are an answer quoting the question
#: (a multiple-choice answer restates its choice: at most 5 words with its label on CommonsenseQA but for one
#: choice in 2,000).
RESTATED_WORDS = 6
#: A reply that begins again with this many of the answer's first words starts the answer over.
RESTART_WORDS = 3
CHAT_CALL, TEXT_CALL = "completion", "text_completion"  # LiteLLM's calls: chat messages, a text prompt
UNALIGNED = "UnalignedSpan"  # the ``CloudError.kind`` of a reply that does not continue the answer
_WORD = re.compile(r"\w+")


@dataclass
class SpanRequest:
    """What the cloud needs to continue: the conversation and the answer so far."""

    messages: list[dict]  # the conversation (system/user/assistant turns), without the partial answer
    prompt_text: str  # the prompt rendered with the local chat template, prefill included (text completion)
    partial: str  # the answer so far (text already emitted)
    word_start: bool | None = None  # does the local model think a new word starts here? (spacing hint)
    prefix: str = ""  # the answer's start given with the prompt (an assistant prefill), before ``partial``

    @property
    def answer(self) -> str:
        """The whole answer so far, as a chat model must see it: the prefill, then what was written."""
        return self.prefix + self.partial

    @classmethod
    def for_prompt(cls, prompt: Prompt, prompt_text: str, *, system: str | None = None) -> SpanRequest:
        """The request for ``prompt``'s answer, not begun yet (``prompt_text``: the prompt as the local model
        renders it); each call fills in ``partial`` and ``word_start``."""
        return cls(messages=messages_for(prompt, system), prompt_text=prompt_text, partial="",
                   prefix=split_prefill(prompt)[1])


class Strategy:
    """How the cloud is asked to continue an answer, and how its reply is read. Subclass it, give it a ``name``
    and ``strategies.register`` an instance to use it as ``CloudConfig(strategy=name)``."""

    name: str = ""
    call: str = CHAT_CALL  # the LiteLLM call: ``CHAT_CALL`` (chat messages) or ``TEXT_CALL`` (a prompt)
    token_exact: bool = False  # may spans come back as token ids (a cloud sharing the local vocabulary)?
    keys_word_start: bool = False  # does the spacing hint shape the span (and so go into the cache key)?

    @property
    def chat(self) -> bool:
        """Whether requests are chat messages (which carry prompt-cache markers)."""
        return self.call == CHAT_CALL

    def shape(self, req: SpanRequest, kw: dict, *, span_tokens: int, token_exact: bool) -> dict:
        """``kw`` (LiteLLM's keyword arguments: model, budget, endpoint) completed with the request for the
        span after ``req``'s answer so far; every text in ``req`` has been through the redactor."""
        raise NotImplementedError

    def reply_text(self, choice: Any) -> Any:
        """The reply's text in a response choice."""
        return choice.message.content

    def token_ids(self, choice: Any) -> list[int] | None:
        """The span as the local model's token ids, when the choice carries them (token-exact path only)."""
        return None

    def read(self, text: str, finish: str | None, req: SpanRequest, *, span_tokens: int) -> str:
        """The span in the reply ``text``; raises ``CloudError`` when the reply does not continue the answer."""
        raise NotImplementedError

    def cache_parts(self, req: SpanRequest) -> tuple:
        """What of ``req`` shapes the span: (the context, the answer so far, the spacing hint or None)."""
        return req.messages, req.answer, req.word_start if self.keys_word_start else None

    def ends_answer(self, span: Any) -> bool:
        """Whether ``span`` (a ``CloudSpan`` of this strategy) ends the answer (the cloud model stopped inside it)."""
        return span.finish_reason == "stop"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _runs(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _texts(messages: list[dict]) -> list[str]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return out


def not_a_continuation(continuation: str, req: SpanRequest, *, restated: int = RESTATED_WORDS,
                       restart: int = RESTART_WORDS) -> str | None:
    """Why ``continuation`` (a chat reply's text after the answer so far) does not continue ``req``'s answer --
    it begins the answer over, or restates the prompt (``restated`` words in a row of the conversation that
    the answer so far does not hold) -- or None when nothing says it does not, or the answer has not begun
    (a reply is then the model's own start, free to quote the question)."""
    if not req.answer.strip():
        return None
    cont = _words(continuation)
    answer = _words(req.answer)
    k = min(restart, len(answer))
    if k >= 2 and cont[:k] == answer[:k]:
        return f"it starts the answer over ({' '.join(cont[:k])!r})"
    copied = _runs(cont, restated) - _runs(answer, restated)
    if copied:
        prompt: set[tuple[str, ...]] = set()
        for text in _texts(req.messages):
            prompt |= _runs(_words(text), restated)
        found = copied & prompt
        if found:
            return f"it restates the prompt ({' '.join(min(found))!r})"
    return None


def check_continuation(continuation: str, req: SpanRequest, strategy: str) -> None:
    """Raise the failed call's ``CloudError`` when ``continuation`` does not continue ``req``'s answer."""
    why = not_a_continuation(continuation, req)
    if why is not None:
        raise CloudError(f"the {strategy} reply is not a continuation of the answer so far: {why}: "
                         f"{continuation[:80]!r}", kind=UNALIGNED)
