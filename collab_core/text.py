"""Text: incremental detokenization, stop sequences matched across token boundaries, and the helpers that join
a cloud span to the answer (splice, word boundaries, echoes, spacing)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence


class StopMatcher:
    """Matches stop strings on the decoded text, whatever the token boundaries.

    Text is fed in segments as it streams. ``feed`` returns the part that is safe to emit: text that
    could still be the start of a stop string is held back until it is decided. When a stop string
    appears, everything before it is released and ``stopped`` becomes true; the stop string itself
    and anything after it are dropped.
    """

    def __init__(self, stops: Iterable[str] | None = None):
        self.stops = [s for s in (stops or ()) if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, segment: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return segment
        text = self._pending + segment
        hits = [(text.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            i, s = min(hits)
            self.stopped, self.matched, self._pending = True, s, ""
            return text[:i]
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """At the end of generation: release text held back for a stop string that never came."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


class TextStream:
    """Incremental detokenizer (mlx-lm's, so spaces are never lost) plus stop-string matching.

    ``add(token)`` returns the newly emittable text. ``tokens`` holds every generated token, ``text``
    everything emitted so far. ``reset_to(tokens)`` rebuilds the state after a rollback (only text that
    was never emitted may be rolled back; the engine guarantees that).
    """

    def __init__(self, tokenizer, stops: Sequence[str] | None = None):
        self._tokenizer = tokenizer
        self._stops = list(stops or ())
        self.reset_to([])

    def reset_to(self, tokens: Sequence[int]) -> None:
        self._detok = self._tokenizer.detokenizer
        self._stop = StopMatcher(self._stops)
        self.tokens: list[int] = []
        self.text = ""
        self._shown = ""  # text the caller already has beyond ``text`` (after a rewind)
        for t in tokens:
            self.add(t)

    def rewind(self, n: int) -> None:
        """Drop the last ``n`` tokens (to be replaced by tokens spelling the same text and more).

        Text already released is never released twice: new tokens release only what goes beyond it.
        """
        if n <= 0:
            return
        shown = self.text + self._shown
        self.reset_to(self.tokens[: len(self.tokens) - n])
        self._shown = shown[len(self.text):]

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    def add(self, token: int) -> str:
        self.tokens.append(token)
        self._detok.add_token(token)
        out = self._stop.feed(self._detok.last_segment)
        self.text += out
        return self._unshown(out)

    def _unshown(self, out: str) -> str:
        if not self._shown:
            return out
        k = 0
        while k < min(len(out), len(self._shown)) and out[k] == self._shown[k]:
            k += 1
        self._shown = self._shown[k:] if k == len(out) else ""
        return out[k:]

    def finish(self) -> str:
        """Flush the detokenizer and any held-back text; returns the final piece."""
        self._detok.finalize()
        out = self._stop.feed(self._detok.last_segment) if not self._stop.stopped else ""
        out += self._stop.flush()
        self.text += out
        return self._unshown(out)


def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def splice(tokenizer, answer: Sequence[int], continuation: str, max_back: int = 8) -> tuple[int, list[int]]:
    """Tokens for ``answer`` followed by the text ``continuation``, with the local tokenizer.

    Returns ``(n_back, new_ids)``: drop the last ``n_back`` answer tokens, then append ``new_ids``.
    The continuation is re-tokenized together with the answer's last word fragment (from the last token
    that starts a word), so a word split across the boundary ("Par" + "is") becomes the tokens the local
    model would have used ("Paris"); no spaces are added or removed.
    """
    k = 0
    while k < min(max_back, len(answer)):
        k += 1
        piece = tokenizer.decode([answer[-k]])
        if piece[:1].isspace() or not piece.strip():
            break
    full = tokenizer.decode(list(answer))
    while k and not full.startswith(tokenizer.decode(list(answer[: len(answer) - k]))):
        k -= 1  # never cut inside a character (a word without spaces, e.g. CJK, longer than max_back tokens)
    head = list(answer[: len(answer) - k])
    frag_ids = list(answer[len(answer) - k:])
    frag_text = tokenizer.decode(head + frag_ids)[len(tokenizer.decode(head)):] if k else ""
    joint = list(tokenizer.encode(frag_text + continuation, add_special_tokens=False))
    common = common_prefix_len(joint, frag_ids)
    return len(frag_ids) - common, joint[common:]


def cut_to_word_boundary(text: str) -> str:
    """Drop a trailing partial word (the span was cut by max_tokens), keeping at least one word."""
    if not text or text[-1].isspace():
        return text
    m = re.search(r"\s\S*$", text)
    if m is None or not text[: m.start()].strip():
        return text
    return text[: m.start()]


def strip_echo(text: str, partial: str) -> str:
    """Remove a repeated partial answer (or its tail) that a chat model echoed back."""
    t = text
    for cand in (partial, partial.strip()):
        if cand and t.startswith(cand):
            return t[len(cand):]
    tail = partial.strip()[-40:]
    if len(tail) >= 8 and tail in t[: len(tail) + 8]:
        return t[t.index(tail) + len(tail):]
    return t


def fix_spacing(text: str, partial: str, word_start: bool | None) -> str:
    """The word boundary between ``partial`` and a continuation ``text`` whose leading space a server may have
    dropped (chat models drop it; Anthropic strips a prefill's trailing whitespace; ``mlx_lm.server`` trims
    the first space of every completion). Decided from the partial answer and ``word_start``: does the local
    model's own next token start a new word?"""
    if not partial:
        return text.lstrip()
    if partial[-1].isspace():
        return text.lstrip(" ")
    stripped = text.lstrip(" ")
    if word_start is True and stripped[:1].isalnum():
        return " " + stripped
    if word_start is False:
        return stripped
    return text
