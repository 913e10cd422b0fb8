"""Reconciling a cloud span with the local draft: a pure function of token ids and text.

When a span arrives, the answer holds the committed tokens and the draft holds what the local model wrote
while the call was in flight. The span's text is spliced after the answer (re-spelling the answer's last
word fragment together with the span, so tokenization stays natural) -- or, when the cloud shares the local
tokenizer and sent token ids, its tokens are appended as they are; the draft survives only where it spells
the same tokens and goes on after them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..text import common_prefix_len, splice


@dataclass(frozen=True)
class Reconciliation:
    replace: int  # committed tokens taken back (the word fragment the span re-spells)
    cloud: tuple[int, ...]  # the span's tokens, to commit as the cloud's
    keep_from: int | None  # the draft from this index on goes on after the span; None: the draft is dropped
    rollbacks: int  # drafted tokens discarded
    ends: bool  # the cloud ended the answer

    def target(self, answer: Sequence[int], draft: Sequence[int]) -> list[int]:
        """The answer after reconciliation: what the KV cache must hold after the prompt."""
        base = list(answer[: len(answer) - self.replace]) + list(self.cloud)
        return base + (list(draft[self.keep_from:]) if self.keep_from is not None else [])


def reconcile(tokenizer, answer: Sequence[int], draft: Sequence[int], text: str, *, ends_answer: bool,
              max_tokens: int, eos: Collection[int] = (), token_ids: Sequence[int] | None = None) -> Reconciliation:
    """Settle a span of ``text`` (``ends_answer``: the cloud stopped inside it) against ``answer`` + ``draft``.

    An empty span that ends the answer ends it here (the draft is discarded). Otherwise the span's tokens
    (never an EOS, never past ``max_tokens``) replace the answer's last word fragment; the draft is kept after
    them when it agrees with them and the cloud did not end the answer. With ``token_ids`` (the cloud shares
    the local tokenizer) the span is those tokens, appended as they are: nothing is re-spelled.
    """
    if not (token_ids if token_ids is not None else text):
        return Reconciliation(0, (), None, len(draft), True)
    n_back, new_ids = (0, list(token_ids)) if token_ids is not None else splice(tokenizer, list(answer), text)
    base = list(answer[: len(answer) - n_back])
    new_ids = [t for t in new_ids if t not in eos][: max(0, max_tokens - len(base))]
    target = base + new_ids
    drafted = list(answer) + list(draft)
    if not ends_answer and drafted[: len(target)] == target:
        return Reconciliation(n_back, tuple(new_ids), max(0, len(target) - len(answer)), 0, False)
    return Reconciliation(n_back, tuple(new_ids), None, len(drafted) - common_prefix_len(drafted, target),
                          ends_answer)


def check_grammar(r: Reconciliation, grammar, answer: Sequence[int], draft: Sequence[int],
                  max_tokens: int | None = None) -> Reconciliation:
    """Settle ``r`` against a ``GrammarState`` whose position is ``answer`` + ``draft``; returns the
    reconciliation to apply and leaves the grammar at its end.

    The span's longest valid prefix is kept (the rest dropped: the local model, constrained, writes the next
    token itself); a span with no valid token is refused and the draft stands. The draft survives only after a
    span kept whole, and an end of answer counts only where the grammar is complete. With ``max_tokens``, no
    more of the span is kept than leaves room to close a forced structure before the limit.
    """
    grammar.rollback(len(draft) + r.replace)
    budget = None if max_tokens is None else max_tokens - (len(answer) - r.replace)
    n = grammar.valid_prefix(r.cloud, budget)
    if n == 0 and r.cloud:
        grammar.consume_all(list(answer[len(answer) - r.replace:]) + list(draft))  # back to answer + draft
        return Reconciliation(0, (), 0, 0, False)
    cloud = tuple(r.cloud[:n])
    grammar.consume_all(cloud)
    keep_from = r.keep_from if n == len(r.cloud) else None
    if keep_from is not None:
        grammar.consume_all(draft[keep_from:])
    kept = len(draft) - keep_from if keep_from is not None else 0
    return Reconciliation(r.replace, cloud, keep_from, len(draft) - kept, r.ends and n == len(r.cloud) and
                          grammar.accepting)
