"""Settling a cloud span: wait for it, reconcile it with the draft, emit the result, bring the KV cache to it.

``Settling`` is the part of ``Run`` that does it (a mixin: the attributes are ``Run``'s). A token-exact span longer
than ``span_tokens`` (the call asked for spare tokens) is split there: the rest is kept as ``Run.spare``, which the
next routed position takes with no call if it continues the answer as it stands.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from ..cloud.client import CloudSpan
from ..cloud.leg import Pending
from ..local.decoder import Step
from ..local.loop import Wait, settled
from ..text import common_prefix_len
from .branches import Drafted
from .events import Event
from .reconcile import check_grammar, reconcile

Co = Generator[Any, None, Any]  # a coroutine of the loop: yields events and ``Wait``s


class Settling:
    """``Run``'s settling of spans (a mixin: the attributes are ``Run``'s)."""

    def _settle_due(self) -> bool:
        return (self.pending.ready or self.draft_closed or len(self.draft) >= self.max_draft
                or len(self.answer) + len(self.draft) >= self.max_tokens)

    def _settle(self, step: Step) -> Co:
        """Wait for the span, emit what it settles to, then bring the KV cache to it; returns the Step at the
        cache's end. Emitting first sends the span's text out one forward pass earlier (feeding costs one
        pass for all its tokens, less than decoding them)."""
        pending, self.pending = self.pending, None
        draft, self.draft = self.draft, []
        self.draft_closed = False
        for b in self.branches:  # out of the batch while the trunk waits (their caches kept)
            b.close()
        since = time.perf_counter()
        if not pending.ready:  # other generations decode meanwhile
            yield Wait(lambda: pending.ready, until=self.leg.deadline, future=pending.future)
        span = self.leg.wait(pending, since=since)
        self._pass_from = None
        if self.pacer is not None and span is not None and pending.arrived is not None:
            self.pacer.arrived(pending.arrived - pending.submitted)
        rest = None
        if span is not None:  # spare tokens beyond the span wait for the router's say at the next positions
            span, rest = span.split(self.span_tokens, self.lm.tokenizer.decode)
        draft, adopted = self._pick_branch(span, draft)
        if adopted is not None:
            step = adopted
        target, events = self._apply(span, pending, draft)
        if rest is not None and self.finish != "stop" and self.answer[pending.answer_len:] == span.token_ids:
            self.spare = (len(self.answer), rest)
        self.stats.time_spans_s += time.perf_counter() - pending.submitted
        yield from events
        yield from settled(self.dec)  # the cache holds the trunk's submitted step before it is brought to target
        step = self._sync_cache(target, step)
        self._account()
        return step

    def _apply(self, span: CloudSpan | None, pending: Pending, draft: list[Drafted]) -> tuple[list[int], list[Event]]:
        """(tokens the KV cache must hold after the prompt, events to emit) once ``span`` is settled."""
        if span is None or (not span.text and not span.token_ids and not span.ends_answer):
            if span is not None:
                self.leg.failed("EmptySpan", "the cloud returned no text")
            events = self._commit_all(draft)  # the local draft stands
            return list(self.answer), events
        assert pending.answer_len == len(self.answer)
        r = reconcile(self.lm.tokenizer, self.answer, [t for t, _, _ in draft], span.text,
                      ends_answer=span.ends_answer, max_tokens=self.max_tokens, eos=self.eos,
                      token_ids=span.token_ids)
        if self.grammar is not None:  # the span's valid prefix only
            r = check_grammar(r, self.grammar, self.answer, [t for t, _, _ in draft], max_tokens=self.max_tokens)
        self.stats.rollbacks += r.rollbacks
        if self.pacer is not None and len(draft) > 1:  # a pass running when the reply came: was it of use?
            self.pacer.settled(r.keep_from is not None)
        if draft and r.cloud:  # the local candidates at the routed position, against the cloud's token there
            top = draft[0][1].top_ids
            self.stats.cloud_token_ranks.append(
                None if r.replace else top.index(r.cloud[0]) if r.cloud[0] in top else -1)
        if r.keep_from is not None and len(draft) > r.keep_from:  # drafted tokens go on after the span
            self.stats.drafts_kept += 1
        target = r.target(self.answer, [t for t, _, _ in draft])
        if r.ends:
            self.finish = "stop"
        if r.replace:
            self.text.rewind(r.replace)
            del self.answer[len(self.answer) - r.replace:]
            del self.sources[len(self.sources) - r.replace:]
        events: list[Event] = []
        for tid in r.cloud:
            events.append(self._commit(tid, "cloud", None, None))
            if self.text.stopped:
                break
        events += self._commit_all(draft[r.keep_from:] if r.keep_from is not None else [])
        return target, events

    def _sync_cache(self, target: list[int], end: Step) -> Step:
        """Make the KV cache hold exactly prompt + ``target``; return the Step at its end."""
        full = self.ids + target
        cur = self.dec.tokens
        c = common_prefix_len(cur, full)
        if c == len(cur) == len(full):
            return end
        if c < len(cur):
            end = self.dec.rollback(len(cur) - c)
        if c < len(full):
            end = self.dec.feed(full[c:])
        return end
