"""Continuing an answer on a chat-only model: how the request is worded and how the reply is aligned.

A chat-only model (OpenAI's chat models, Gemini, Claude 4.6+) cannot be handed a partial answer to continue
in place. It must be asked in words, and what it writes back must be lined up against the answer so far:
small instruction followers echo the partial answer, wrap it in quotes or markup, or start over. Each protocol
here is a pair: ``request`` (the messages and the output budget) and ``align`` (the continuation, or ``None``
when the reply cannot be lined up; the caller then counts a failed call and keeps its local token).

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

``benchmarks/chat_protocols.py`` measures them against text completion on the same routed positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..text import strip_echo

PROTOCOLS = ("anchor", "restate", "echo", "instruct")
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


def request(protocol: str, conversation: list[dict], answer: str, span_tokens: int) -> ChatRequest:
    """The messages asking for the next ``span_tokens`` of ``answer`` (the answer so far, maybe empty)."""
    msgs = [dict(m) for m in conversation]
    if protocol == "instruct":
        shown = answer if answer.strip() else "(nothing yet: write its first few words)"
        return ChatRequest([{"role": "system", "content": INSTRUCTION}] + msgs + [{
            "role": "user", "content": f"Partial answer to continue:\n<partial>{shown}</partial>\nNext few words only:",
        }], span_tokens)
    if not answer.strip():  # nothing written yet: the model simply starts its answer
        return ChatRequest(msgs, span_tokens)
    if protocol == "restate":
        ask = _RESTATE_ASK.format(answer=answer.strip())
        if msgs and msgs[-1].get("role") == "user":  # appended to the question: the shared prefix stays intact
            msgs[-1] = {**msgs[-1], "content": f"{msgs[-1].get('content') or ''}\n\n{ask}"}
        else:
            msgs.append({"role": "user", "content": ask})
        return ChatRequest(msgs, _tokens_for(answer) + span_tokens)
    if protocol == "anchor":
        anchor = anchor_of(answer)
        ask, echoed = _ANCHOR_ASK.format(anchor=anchor), anchor
    elif protocol == "echo":
        ask, echoed = _ECHO_ASK, answer
    else:
        raise ValueError(f"unknown chat protocol {protocol!r}")  # pragma: no cover - CloudConfig checks it
    turns = [{"role": "system", "content": RESUME_SYSTEM}] + msgs + [
        {"role": "assistant", "content": answer}, {"role": "user", "content": ask}]
    return ChatRequest(turns, _tokens_for(echoed) + span_tokens)


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


def align(protocol: str, reply: str, answer: str) -> str | None:
    """The continuation of ``answer`` in ``reply``, or None when the reply cannot be lined up with it."""
    text = _clean(reply)
    if not answer.strip():
        return text.lstrip()
    if protocol == "instruct":
        return strip_echo(text, answer)
    echoes = [answer]  # a full echo is fine under either protocol
    if protocol == "anchor":  # the anchor, or its last two words (a model may drop the first)
        echoes += [anchor_of(answer, n) for n in (ANCHOR_WORDS, 2) if len(answer.split()) >= n]
    end = next((e for e in (match_prefix(text, a) for a in echoes) if e is not None), None)
    if end is None:
        return None
    rest = text[end:]
    if len(answer.split()) >= 2 and (again := match_prefix(rest, answer)) is not None:
        rest = rest[again:]  # the answer so far written twice: a repeated prefix never reaches the answer
    if answer[-1:].isspace():
        rest = rest.lstrip(" ")
    return rest


def cut_words(text: str, words: int) -> str:
    """The first ``words`` words of ``text`` (with their leading whitespace): a chat model asked for "a few
    words" often writes on, and a span should cost about as many tokens whatever the protocol."""
    m = re.match(rf"(\s*\S+){{1,{max(1, words)}}}", text)
    return m.group(0) if m else text
