"""Continuing an answer on a chat-only model: how the request is worded and how the reply is aligned.

A chat-only model (OpenAI's chat models, Gemini, Claude 4.6+) cannot be handed a partial answer to continue
in place. It must be asked in words, and what it writes back must be lined up against the answer so far:
small instruction followers echo the partial answer, wrap it in quotes or markup, or start over. Each protocol
here is a ``ChatProtocol`` (a ``Strategy``): ``chat_request`` (the messages and the output budget) and ``align``
(the continuation, or ``None`` when the reply cannot be lined up). A reply that cannot be lined up, or whose
continuation starts the answer over or restates the prompt (``strategy.not_a_continuation``), is a failed call:
the engine keeps its local token.

* ``anchor`` -- the unfinished answer goes back as the assistant's own turn, and a user turn asks it to go on,
  starting with the answer's last few words (the *anchor*). The echoed anchor (or its last two words, or the
  whole answer) is expected and cut off; a reply that starts with none of them is unaligned. Output cost: the anchor + the span.
* ``restate`` -- no extra turns: the request's own last user message ends with "Begin your answer with exactly:
  «the answer so far»", and the model answers afresh; the reply must start with the whole answer so far. The
  question stays the last thing the model read. Output cost grows with the answer.
* ``echo`` -- the turns of ``anchor``, but the model rewrites the whole answer so far, word for word, then goes
  on; the reply must start with the whole answer so far. Output cost grows with the answer.
* ``instruct`` -- one instruction to write only the next few words of the partial answer (shown in
  ``<partial>`` tags); an echoed prefix is stripped when recognised, and the reply is otherwise taken as is.

``CHAT_PROTOCOL`` (``restate``) is what ``strategy="auto"`` picks for a chat-only model;
``benchmarks/chat_protocols.py`` measures the protocols against text completion on the same routed positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import CloudError
from ..text import cut_to_word_boundary, fix_spacing, strip_echo
from .strategy import UNALIGNED, SpanRequest, Strategy, check_continuation

#: What ``strategy="auto"`` uses for a chat-only model (chosen by ``benchmarks/chat_protocols.py``).
CHAT_PROTOCOL = "restate"
ANCHOR_WORDS = 3

INSTRUCTION = (
    "You continue a partially written assistant answer. Reply with only the next few words of that answer, "
    "starting exactly where the partial answer stops. Do not repeat the partial answer, do not explain, "
    "do not add quotes."
)
RESUME_SYSTEM = ("Your previous answer was cut off mid-sentence. When asked, resume it exactly where it stopped: "
                 "no greeting, no quotes, no explanation of what you are doing.")
_ANCHOR_ASK = ('Continue your answer from where it was cut off. Start your reply with its last words, "{anchor}", '
               "then write the next few words.")
_RESTATE_ASK = 'Begin your answer with exactly these words: "{answer}"'
_ECHO_ASK = ("Continue your answer from where it was cut off. Start your reply by repeating your answer so far, "
             "word for word, then write the next few words.")
_WS = re.compile(r"\s+")
_MARKUP = re.compile(r"</?(partial|answer|continuation)>", re.I)
_LABEL = re.compile(r"^\s*(continuation|next words|answer)\s*:\s*", re.I)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    max_tokens: int


def anchor_of(answer: str, words: int = ANCHOR_WORDS) -> str:
    """The last ``words`` whitespace-separated words of ``answer`` (all of it when shorter)."""
    parts = answer.split()
    return " ".join(parts[-words:])


def _tokens_for(text: str) -> int:
    """A generous estimate of ``text``'s length in the cloud's tokens (its tokenizer is unknown here)."""
    return len(text) // 3 + len(text.split()) + 2


def _clean(reply: str) -> str:
    text = _MARKUP.sub("", reply).strip("\n")
    text = _LABEL.sub("", text)
    if text[:1] in "\"'“‘`" and text[:1]:
        text = text[1:]
    return text


def match_prefix(text: str, prefix: str) -> int | None:
    """Where ``prefix`` ends in ``text`` when ``text`` starts with it (whitespace runs match any whitespace
    run, a closing quote after it is skipped); None when it does not."""
    i = 0
    t = text.lstrip()
    offset = len(text) - len(t)
    for piece in _WS.split(prefix.strip()):
        if not piece:
            continue
        while i < len(t) and t[i].isspace():
            i += 1
        if not t.startswith(piece, i):
            return None
        i += len(piece)
    if t[i:i + 1] in ("\"", "'", "”", "’", "`") and t[i:i + 1]:
        i += 1
    return offset + i


def cut_words(text: str, words: int) -> str:
    """The first ``words`` words of ``text`` (with their leading whitespace): a chat model asked for "a few
    words" often writes on, and a span should cost about as many tokens whatever the protocol."""
    m = re.match(rf"(\s*\S+){{1,{max(1, words)}}}", text)
    return m.group(0) if m else text


class ChatProtocol(Strategy):
    """A chat-only model asked in words for the next span; the reply restates the answer so far (or a part
    of it, ``echoes``), which is cut off. A chat reply that stops has only stopped writing "a few words": it
    ends the answer only when nothing came after the words it echoed."""

    def __init__(self, name: str):
        self.name = name

    def ask(self, messages: list[dict], answer: str, span_tokens: int) -> ChatRequest:
        """The request once the answer has begun (``messages``: a copy of the conversation)."""
        raise NotImplementedError

    def echoes(self, answer: str) -> list[str]:
        """What of the answer the reply may start with, and is cut off (the first that matches)."""
        return [answer]

    def chat_request(self, conversation: list[dict], answer: str, span_tokens: int) -> ChatRequest:
        """The messages asking for the next ``span_tokens`` of ``answer`` (the answer so far, maybe empty)."""
        msgs = [dict(m) for m in conversation]
        if not answer.strip():  # nothing written yet: the model simply starts its answer
            return ChatRequest(msgs, span_tokens)
        return self.ask(msgs, answer, span_tokens)

    def align(self, reply: str, answer: str) -> str | None:
        """The continuation of ``answer`` in ``reply``, or None when the reply cannot be lined up with it."""
        text = _clean(reply)
        if not answer.strip():
            return text.lstrip()
        end = next((e for e in (match_prefix(text, a) for a in self.echoes(answer)) if e is not None), None)
        if end is None:
            return None
        rest = text[end:]
        if len(answer.split()) >= 2 and (again := match_prefix(rest, answer)) is not None:
            rest = rest[again:]  # the answer so far written twice: a repeated prefix never reaches the answer
        if answer[-1:].isspace():
            rest = rest.lstrip(" ")
        return rest

    def shape(self, req: SpanRequest, kw: dict, *, span_tokens: int, token_exact: bool) -> dict:
        chat = self.chat_request(req.messages, req.answer, span_tokens)
        kw["messages"], kw["max_tokens"] = chat.messages, chat.max_tokens
        return kw

    def read(self, text: str, finish: str | None, req: SpanRequest, *, span_tokens: int) -> str:
        aligned = self.align(text, req.answer)
        if aligned is None:
            raise CloudError(f"the {self.name} reply does not line up with the answer so far: {text[:80]!r}",
                             kind=UNALIGNED)
        check_continuation(aligned, req, self.name)
        if finish == "length":
            aligned = cut_to_word_boundary(aligned)
        text = cut_words(aligned, -(-span_tokens // 2))  # about two tokens a word
        if not req.answer:  # an aligned reply keeps the model's own spacing
            text = fix_spacing(text, req.answer, req.word_start)
        return text

    def ends_answer(self, span) -> bool:
        return span.finish_reason == "stop" and not span.text.strip()


class Restate(ChatProtocol):
    def ask(self, messages: list[dict], answer: str, span_tokens: int) -> ChatRequest:
        ask = _RESTATE_ASK.format(answer=answer.strip())
        if messages and messages[-1].get("role") == "user":  # appended to the question: the prefix stays intact
            messages[-1] = {**messages[-1], "content": f"{messages[-1].get('content') or ''}\n\n{ask}"}
        else:
            messages.append({"role": "user", "content": ask})
        return ChatRequest(messages, _tokens_for(answer) + span_tokens)


class Resume(ChatProtocol):
    """The answer so far goes back as the assistant's turn and a user turn asks it to go on (``anchor``, ``echo``)."""

    def __init__(self, name: str, ask: str, *, anchor_words: tuple[int, ...] = ()):
        super().__init__(name)
        self._ask = ask
        self.anchor_words = anchor_words  # the anchors the reply may start with: the answer's last N words

    def echoes(self, answer: str) -> list[str]:
        # a full echo is always fine; then the anchor, or its last two words (a model may drop the first)
        return [answer] + [anchor_of(answer, n) for n in self.anchor_words if len(answer.split()) >= n]

    def ask(self, messages: list[dict], answer: str, span_tokens: int) -> ChatRequest:
        echoed = anchor_of(answer, self.anchor_words[0]) if self.anchor_words else answer
        turns = [{"role": "system", "content": RESUME_SYSTEM}] + messages + [
            {"role": "assistant", "content": answer}, {"role": "user", "content": self._ask.format(anchor=echoed)}]
        return ChatRequest(turns, _tokens_for(echoed) + span_tokens)


class Instruct(ChatProtocol):
    """One instruction to write only the next few words; the reply is taken as is (an echo stripped when
    recognised), cut at a word boundary, its spacing repaired."""

    keys_word_start = True

    def chat_request(self, conversation: list[dict], answer: str, span_tokens: int) -> ChatRequest:
        shown = answer if answer.strip() else "(nothing yet: write its first few words)"
        return ChatRequest([{"role": "system", "content": INSTRUCTION}] + [dict(m) for m in conversation] + [{
            "role": "user", "content": f"Partial answer to continue:\n<partial>{shown}</partial>\nNext few words only:",
        }], span_tokens)

    def align(self, reply: str, answer: str) -> str | None:
        text = _clean(reply)
        return strip_echo(text, answer) if answer.strip() else text.lstrip()

    def read(self, text: str, finish: str | None, req: SpanRequest, *, span_tokens: int) -> str:
        aligned = self.align(text, req.answer)
        check_continuation(aligned, req, self.name)
        text = cut_words(cut_to_word_boundary(aligned), -(-span_tokens // 2))
        return fix_spacing(text, req.answer, req.word_start)


#: The chat-only protocols by name (each is registered as a strategy in ``strategies``).
PROTOCOLS: dict[str, ChatProtocol] = {p.name: p for p in (
    Resume("anchor", _ANCHOR_ASK, anchor_words=(ANCHOR_WORDS, 2)), Restate("restate"),
    Resume("echo", _ECHO_ASK), Instruct("instruct"))}


def request(protocol: str, conversation: list[dict], answer: str, span_tokens: int) -> ChatRequest:
    """The messages ``protocol`` sends for the next ``span_tokens`` of ``answer`` (the answer so far, maybe empty)."""
    return PROTOCOLS[protocol].chat_request(conversation, answer, span_tokens)


def align(protocol: str, reply: str, answer: str) -> str | None:
    """The continuation of ``answer`` in ``reply`` under ``protocol``, or None when it cannot be lined up."""
    return PROTOCOLS[protocol].align(reply, answer)
