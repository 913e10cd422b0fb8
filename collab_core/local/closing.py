"""Closing a structure before the token limit: a short way to complete a grammar, and when to take it.

A forced structure (structured output, JSON mode, a forced tool call) that is still open when ``max_tokens``
runs out is no answer at all (``GrammarError``). So as the budget nears its end, ``GrammarState`` steers to a
short valid completion: ``closing_plan`` searches one from the grammar's current position and, once the
tokens left are no more than its length plus ``SLACK``, the mask allows only the plan's next token. The answer
then ends with the value closed the short way (a string cut where it stands and closed, required keys given
their shortest values, open arrays and objects closed), parseable and valid under the schema.

The search: depth first over single-character tokens (plus the grammar's marker tokens), trying at each
position the characters that close things first (``"``, ``}``, ``]``), then the shortest values (``0``), then
separators, letters and the rest, backtracking from dead ends, within ``MAX_BYTES`` characters and
``MAX_TRIES`` token checks. The characters found are then tokenized (fewer tokens than characters) and checked
against the grammar as a whole. It is not always the shortest completion, but it is short and always valid;
where none is found within those bounds (a pattern that needs characters outside ASCII, say) nothing is
steered and the limit acts as before.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

#: Characters tried at each position, in this order: what closes first, then short values and separators.
ORDER = '"}]0,: tfn' + string.ascii_lowercase + string.ascii_uppercase + "123456789" + string.punctuation + "\n"
#: Tokens of slack: steering starts when the tokens left are the plan's length plus this.
SLACK = 2
MAX_BYTES = 400
MAX_TRIES = 4000


def char_tokens(ll_tokenizer, markers: Sequence[int] = ()) -> tuple[list[int], dict[int, bytes]]:
    """(the tokens tried at each position, in order; the bytes of each that is a character): the grammar's
    marker tokens first, then one token for each character of ``ORDER`` that the vocabulary has alone."""
    order, text = list(markers), {}
    for ch in dict.fromkeys(ORDER):
        ids = ll_tokenizer.tokenize_bytes(ch.encode())
        if len(ids) == 1 and ids[0] not in text:
            order.append(ids[0])
            text[ids[0]] = ch.encode()
    return order, text


def _search(matcher, candidates: Sequence[int]) -> list[int] | None:
    """Tokens from ``candidates`` that take ``matcher`` (a copy: it is moved) to an accepting state."""
    if matcher.is_accepting():
        return []
    path: list[int] = []
    stack = [iter(candidates)]
    tries = 0
    while stack:
        nxt = None
        for t in stack[-1]:
            tries += 1
            if tries > MAX_TRIES:
                return None
            if matcher.validate_tokens([t]) == 1:
                nxt = t
                break
        if nxt is None:  # a dead end: back one
            stack.pop()
            if path:
                matcher.rollback(1)
                path.pop()
            continue
        matcher.consume_token(nxt)
        path.append(nxt)
        if matcher.is_accepting():
            return path
        if len(path) >= MAX_BYTES:
            matcher.rollback(1)
            path.pop()
            continue
        stack.append(iter(candidates))
    return None


def _tokenized(ll_tokenizer, path: list[int], text: dict[int, bytes]) -> list[int]:
    """``path`` with each run of characters tokenized as text (markers stay as they are)."""
    out: list[int] = []
    run = b""
    for t in path:
        if t in text:
            run += text[t]
            continue
        if run:
            out += ll_tokenizer.tokenize_bytes(run)
            run = b""
        out.append(t)
    if run:
        out += ll_tokenizer.tokenize_bytes(run)
    return out


def closing_plan(matcher, ll_tokenizer, candidates: Sequence[int], text: dict[int, bytes]) -> list[int] | None:
    """Tokens that complete the grammar from ``matcher``'s position (not moved), or None if none is found."""
    path = _search(matcher.deep_copy(), candidates)
    if not path:
        return path
    short = _tokenized(ll_tokenizer, path, text)
    if len(short) < len(path):
        check = matcher.deep_copy()
        if check.validate_tokens(short) == len(short) and check.consume_tokens(short) and check.is_accepting():
            return short
    return path
