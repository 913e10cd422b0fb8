"""Draft branches: while a span is in flight, the routed position's next-best local candidates are drafted too.

Each branch is a decoder forked from the trunk's KV cache (lazy slices, nothing recomputed) that decodes in the same
batched rounds as the trunk's draft; when the span comes back, the branch whose first token is the cloud's first
is adopted (its sequence and cache become the trunk's). ``Branches`` is the part of ``Run`` that does it; its
methods that wait for a round are coroutines, advanced by the model's loop like the rest of the generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

from ..cloud.client import CloudSpan
from ..local.decoder import Step, StepDecoder
from ..local.loop import ready, settled
from ..scoring import Confidence
from .reconcile import reconcile

Drafted = tuple[int, Confidence, "float | None"]  # (token, its confidence, its routing score)


@dataclasses.dataclass
class Branch:
    """A draft from one of the local model's other candidates at a routed position, on a forked decoder."""

    dec: StepDecoder
    draft: list[Drafted]  # its candidate first
    end: Step  # the Step at its cache's end (its next token)
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.dec.close()  # a step no round ran is dropped: the end is then the one before it
            self.end = self.dec.rollback(0)


class Branches:
    """``Run``'s branches (a mixin: the attributes are ``Run``'s)."""

    branches: list[Branch]

    def _fork_branches(self, conf: Confidence, score: float | None, at: Step) -> Generator[Any, None, None]:
        """Fork a branch for each of the local model's next-best candidates at the routed position (the cache
        holds the routed token: one back). They decode in the same batched rounds as the trunk's draft."""
        if self.n_branches <= 1 or self.grammar is not None or not self.dec.can_fork or self.pending.future is None:
            return  # (a span already here, from the cache or a spare, is settled next: no draft to race it)
        yield from settled(self.dec)  # the trunk's cache holds the routed token before it is copied
        for cand in conf.top_ids[1:self.n_branches]:
            if cand in self.eos:
                continue
            dec = self.dec.fork(back=1, end=at)
            self.branches.append(Branch(dec, [(cand, conf, score)], dec.step(cand)))

    def _advance_branches(self) -> Generator[Any, None, None]:
        """One token on every open branch, in step with the trunk's draft; a branch stops where the trunk's
        draft stops, at EOS, or before a token the router would send (it leaves the batch, its cache kept)."""
        for b in self.branches:
            if b.closed:
                continue
            if self.draft_closed or len(b.draft) >= self.max_draft or \
                    len(self.answer) + len(b.draft) >= self.max_tokens:
                b.close()
                continue
            yield from ready(b.end)
            tid, conf = b.end.token_id, b.end.confidence
            if tid in self.eos or self._would_route(tid, conf, b.end, at=len(b.draft)):
                b.close()
                continue
            b.draft.append((tid, conf, None))
            b.end = b.dec.step(tid)

    def _pick_branch(self, span: CloudSpan | None, draft: list[Drafted]) -> tuple[list[Drafted], Step | None]:
        """The draft to settle ``span`` against: the trunk's, or the branch whose first token is the cloud's first
        (its sequence and KV cache then become the trunk's: returns the Step at its end, else None)."""
        branches, self.branches = self.branches, []
        if not branches or span is None or not draft:
            return draft, None
        r = reconcile(self.lm.tokenizer, self.answer, [], span.text, ends_answer=span.ends_answer,
                      max_tokens=self.max_tokens, eos=self.eos, token_ids=span.token_ids)
        if r.replace or not r.cloud or r.cloud[0] == draft[0][0]:
            return draft, None
        for b in branches:
            if b.draft[0][0] == r.cloud[0]:
                self.stats.branches_adopted += 1
                return b.draft, self.dec.adopt(b.dec, b.end)
        return draft, None
