"""One generation: the state machine that decodes, scores, routes, settles cloud spans and emits tokens.

``Run`` is built by ``Engine`` with everything it needs passed in (the local model, its decoder, the router, the
cloud leg's client, cache and executor); it touches nothing else. ``events()`` is the algorithm, a coroutine that
the model's loop (``local/loop.py``) advances on its thread: it yields the events for the reader, and a ``Wait``
wherever it needs a round to run its step, a span to come back or a pacing hold to pass (the other generations
decode meanwhile):

1. **decode** the next local token (queueing the following forward pass first, as mlx-lm does);
2. while a cloud span is in flight, **draft**: keep the local token aside, emit nothing -- until the span
   is back, or the draft reaches a token the router would send (decoded again and routed once the span is
   settled: a draft never commits a token unrouted that the sync pipeline would have routed);
3. otherwise **score** it and let the router **route** it: start a cloud call (the token becomes the first
   draft token) or **emit** it as the local model's;
4. when the span is ready (or drafting must stop), **settle** it against the draft (``reconcile``), emit the
   result and bring the KV cache to it (rollback and feed): ``settle.py``, as the draft branches are
   ``branches.py``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from typing import Any

from ..cloud.cache import SpanCache
from ..cloud.client import CloudClient, CloudSpan, SpanRequest
from ..cloud.leg import CloudLeg, Pending, SpendLimit, Submit
from ..errors import ContextOverflowError, GrammarError
from ..local.decoder import Step, StepDecoder
from ..local.grammar import GrammarState
from ..local.loading import LocalModel
from ..local.loop import Wait, ready
from ..prompts import Prompt, cloud_prompt, render_prompt
from ..router import Router
from ..scoring import Confidence, TokenSignal
from ..settings import GenerationConfig
from ..stats import GenerationStats
from ..text import TextStream
from ..tools import constraint, structured_result
from .branches import Branch, Branches, Drafted
from .events import Event, FinalEvent, TokenEvent
from .pacing import Pacer
from .settle import Settling

Co = Generator[Any, None, Any]  # a coroutine of the loop: yields events and ``Wait``s


class Run(Settling, Branches):
    """The state of one generation. ``events()`` is the coroutine that advances it."""

    def __init__(self, lm: LocalModel, decoder: StepDecoder, router: Router, prompt: Prompt, cfg: GenerationConfig,
                 *, cloud: CloudClient | None, cache: SpanCache | None, submit: Submit, max_draft: int,
                 spend: SpendLimit | None = None, branches: int = 1, pacer: Pacer | None = None):
        self.t0 = time.perf_counter()
        self.lm, self.dec, self.router, self.cfg, self.max_draft = lm, decoder, router, cfg, max_draft
        self.n_branches = branches if max_draft > 0 else 1
        self.pacer = pacer if max_draft > 0 else None
        self._pass_from: float | None = None  # when the last draft pass was queued (its cycle is timed)
        self._passes0 = decoder.passes
        self.prompt_text, self.ids = render_prompt(lm, prompt, chat=cfg.chat, system=cfg.system, tools=cfg.tools,
                                                   json_schema=cfg.json_schema)
        window = lm.context_window
        if len(self.ids) >= window:
            raise ContextOverflowError(f"prompt has {len(self.ids)} tokens; the local model's context is {window}")
        self.max_tokens = min(cfg.max_tokens, window - len(self.ids))
        self.stats = GenerationStats(prompt_tokens=len(self.ids))
        self.text = TextStream(lm.tokenizer, cfg.stop)
        self.eos = lm.eos_token_ids
        deadline = self.t0 + cfg.deadline_s if cfg.deadline_s else None
        self.leg = None if cloud is None or cfg.local_only else CloudLeg(
            cloud, cache, self.stats, submit=submit, deadline=deadline, max_calls=cfg.max_cloud_calls,
            max_cost_usd=cfg.max_cloud_cost_usd, spend=spend)
        # the grammar (tools, structured output): masks every local token, checks every cloud span
        c = constraint(lm, cfg.tools, cfg.tool_choice, cfg.json_schema)
        self.grammar = GrammarState(lm, c) if c is not None else None
        cloud_view = cloud_prompt(prompt, system=cfg.system, tools=cfg.tools, json_schema=cfg.json_schema)
        self.request = SpanRequest.for_prompt(cloud_view, self.prompt_text,  # partial filled per call
                                              system=None if cloud_view is not prompt else cfg.system)
        self.answer: list[int] = []  # committed tokens
        self.sources: list[str] = []
        self.draft: list[Drafted] = []
        self.draft_closed = False  # the draft hit EOS or the token limit: wait for the cloud
        self.branches: list[Branch] = []  # drafts from the routed position's other candidates (``branches``)
        self.pending: Pending | None = None
        self.span_tokens = cloud.config.span_tokens if cloud is not None else 1
        self.spare: tuple[int, CloudSpan] | None = None  # (answer length it continues, the last call's spare tokens)
        self.finish = "length"
        self._first = True
        self._accounted = (0, 0, 0)

    # -- the loop ------------------------------------------------------------------------------------------------
    def events(self) -> Co:
        import mlx.core as mx

        if self.cfg.seed is not None:
            mx.random.seed(self.cfg.seed)
        try:
            yield from self._loop()
        finally:  # also when the reader leaves early: no branch stays in the batch, no span is awaited
            for b in self.branches:
                b.close()
            if self.pending is not None:
                self.pending.cancel()

    def _loop(self) -> Co:
        step = self.dec.prefill(self.ids)
        while not (self.finish == "stop" or self.text.stopped):
            if self.pending is not None:
                if self._settle_due():
                    step = yield from self._settle(step)
                    continue
            elif len(self.answer) >= self.max_tokens:
                break
            tid, conf, nxt, last = yield from self._decode(step)
            if self.pending is not None:
                if tid in self.eos or last or not self._would_route(tid, conf, step):
                    self._draft(tid, conf, None, closing=tid in self.eos or last)
                else:  # the draft stops before it: once the span is settled, it is decoded again and routed
                    self._close_draft_before(tid)
                yield from self._advance_branches()
            elif tid in self.eos:  # the cache keeps the EOS: a next turn's template usually repeats it
                self.finish = "stop"
                break
            else:
                score, route = self._score_and_route(tid, conf, step)
                if route:
                    self._send(tid)
                    self._draft(tid, conf, score, closing=last)
                    if not last:
                        yield from self._fork_branches(conf, score, step)
                else:
                    yield self._commit(tid, "local", conf, score)
                    if len(self.answer) % 16 == 0:
                        self._account()
                    if last:
                        break
            if nxt is not None:
                step = nxt
        yield self._finish()

    # -- decode, score, route ------------------------------------------------------------------------------------
    def _decode(self, step: Step) -> Generator[Any, None, tuple[int, Confidence, Step | None, bool]]:
        """Read ``step``'s token, having queued the next forward pass; also whether it is the last (the token
        limit: none is queued). Under a grammar the token is sampled from the masked distribution, and the next
        mask is computed while the next forward pass runs.

        While a span is in flight the next pass is queued only once the token is read, and only if the span has
        not arrived by then: queued ahead, it would run on a sequence the cloud may have just replaced (a pass
        wasted, and the span's own pass waiting behind it)."""
        yield from ready(step)
        if self.grammar is not None:  # near the token limit, a forced structure is steered to its closing
            step = self.dec.constrain(step, self.grammar.allowed(self.max_tokens - len(self.answer) - len(self.draft)))
        last = len(self.answer) + len(self.draft) + 1 >= self.max_tokens
        drafting = self.pending is not None
        nxt = self.dec.step(step.token) if not (last or drafting) else None
        tid, conf = step.token_id, step.confidence
        if drafting and not last and not self.pending.ready:
            yield from self._pace()
            if not self.pending.ready:
                self._pass_from = time.perf_counter()
                nxt = self.dec.step(tid)
        if self.grammar is not None:
            self.grammar.consume(tid)
        if self._first:
            self.stats.time_prefill_s = time.perf_counter() - self.t0
            self._first = False
        return tid, conf, nxt, last

    def _pace(self) -> Co:
        """Time the last draft pass, and hold the next one back while the reply is about to land, where the
        ``Pacer`` finds the pass a likely loss (``pacing.py``); the hold counts as waiting for the cloud."""
        if self.pacer is None:
            return
        now = time.perf_counter()
        if self._pass_from is not None:
            self.pacer.passed(now - self._pass_from)
        hold = self.pacer.hold(now - self.pending.submitted)
        if hold > 0:
            pending = self.pending  # other generations decode meanwhile
            yield Wait(lambda: pending.ready, until=now + hold, future=pending.future)
            self.stats.draft_holds += 1
            self.stats.time_cloud_wait_s += time.perf_counter() - now

    def _score_and_route(self, tid: int, conf: Confidence, step: Step) -> tuple[float | None, bool]:
        if self.leg is None or not self.leg.usable():
            return None, False
        sig = TokenSignal(conf, len(self.answer), tid, step.hidden, after_cloud=self.sources[-1:] == ["cloud"])
        score = self.router.score(sig)
        self.router.observe(score, sig)
        return score, self.router.should_route(score, sig)

    def _would_route(self, tid: int, conf: Confidence, step: Step, at: int | None = None) -> bool:
        """Whether the router would send this drafted token, were it committed where the draft puts it (``at``
        tokens after the answer; default: after the draft). No router state changes: the token is scored for
        real, if at all, once the span is settled."""
        if not self.leg.usable():
            return False
        offset = len(self.draft) if at is None else at  # 1: right after the routed position (a cloud token)
        sig = TokenSignal(conf, len(self.answer) + offset, tid, step.hidden, after_cloud=offset == 1)
        return self.router.should_route(self.router.score(sig), sig)

    def _close_draft_before(self, tid: int) -> None:
        """End the draft before ``tid`` (decoded, fed to the cache and the grammar, not drafted): drafting past
        a token the router would send commits it unrouted, or wastes the work when the cloud disagrees."""
        if self.grammar is not None:
            self.grammar.rollback(1)
        self.draft_closed = True

    def _send(self, tid: int) -> None:
        """Ask the cloud to continue the committed answer (the local token ``tid`` becomes the first draft) --
        or, where the last call's spare tokens continue the answer as it stands, take them, with no call."""
        spare, self.spare = self.spare, None
        if spare is not None and spare[0] == len(self.answer):
            self.stats.cloud_spare_tokens += sum(t not in self.eos for t in spare[1].token_ids[:self.span_tokens])
            self.pending = Pending(None, spare[1], None, len(self.answer), time.perf_counter())
            return
        req = dataclasses.replace(self.request, partial=self.lm.tokenizer.decode(self.answer) if self.answer else "",
                                  word_start=self.lm.tokenizer.decode([tid])[:1].isspace())
        self.pending = self.leg.start(req, len(self.answer))

    def _draft(self, tid: int, conf: Confidence, score: float | None, *, closing: bool) -> None:
        if tid not in self.eos:
            self.draft.append((tid, conf, score))
        self.draft_closed = self.draft_closed or closing

    # -- emit ----------------------------------------------------------------------------------------------------------
    def _commit(self, tid: int, source: str, conf: Confidence | None, score: float | None) -> TokenEvent:
        """Commit one token to the answer; the event to hand to the caller."""
        piece = self.text.add(tid)
        self.answer.append(tid)
        self.sources.append(source)
        if self.stats.time_to_first_token_s is None:
            self.stats.time_to_first_token_s = time.perf_counter() - self.t0
        return TokenEvent(token=tid, text=piece, source=source, confidence=conf, score=score)

    def _commit_all(self, drafted: list[Drafted]) -> list[Event]:
        events: list[Event] = []
        for tid, conf, score in drafted:
            if len(self.answer) >= self.max_tokens or self.text.stopped:
                break
            events.append(self._commit(tid, "local", conf, score))
        return events

    def _account(self) -> None:
        """Tell the router what was committed since the last time (a budget router tracks its share)."""
        total, cloud, src = len(self.answer), self.sources.count("cloud"), self.sources
        calls, (t0, c0, k0) = self.stats.cloud_calls + self.stats.cloud_cache_hits, self._accounted
        runs = sum(1 for i in range(t0, total) if src[i] == "cloud" and (i == 0 or src[i - 1] != "cloud"))
        self.router.account(total - t0, cloud - c0, calls - k0, runs)
        self._accounted = (total, cloud, calls)

    def _finish(self) -> FinalEvent:
        if self.pending is not None:
            self.pending.cancel()
        tail = self.text.finish()
        self._account()
        s = self.stats
        s.total_tokens = len(self.answer)
        s.local_passes = self.dec.passes - self._passes0
        s.cloud_tokens = self.sources.count("cloud")
        s.time_total_s = time.perf_counter() - self.t0
        s.time_local_s = max(0.0, s.time_total_s - s.time_cloud_wait_s)
        s.cloud_disabled_reason = self.leg.off_reason if self.leg is not None else None
        if self.text.stopped:
            self.finish = "stop"
        structured = None
        if self.grammar is not None or self.cfg.tools or self.cfg.json_schema is not None:
            if self.grammar is not None and self.grammar.constraint.forced and not self.grammar.accepting:
                raise GrammarError(f"the answer stopped ({self.finish}, {len(self.answer)} tokens) before the "
                                   f"{'tool call' if self.grammar.constraint.kind == 'tool' else 'JSON value'} "
                                   "was complete: raise max_tokens")
            cfg = self.cfg
            structured = structured_result(self.lm, self.lm.tokenizer.decode(self.answer), cfg.tools,
                                           cfg.tool_choice, cfg.json_schema)
        return FinalEvent(text=tail, finish_reason=self.finish, stats=s, structured=structured)
