"""Batched local decoding: concurrent generations on one model share each forward pass.

Decoding is memory-bound on a CPU and on Apple silicon: one step over 8 sequences reads the weights once, as one
does. ``BatchScheduler`` holds the single-token steps that open ``LaneDecoder``s (one per generation, one per draft
branch) have submitted; ``run_round`` runs them as one forward pass over a batched cache that is kept from round to
round (``rows.py``: rebuilt only where lanes join or leave it; a lane reads its row back for its own operations),
so each generation keeps its own routing, spans, rollback and stats, and a lane can join or leave between any two
rounds. Nothing here waits or locks: it all runs on the model's loop thread (``loop.py``); a submitted step is a
``LaneStep``, read once a round ran it, and a round's error is set on exactly the steps it carried.

A lane alone decodes exactly as ``StepDecoder`` does (the next forward pass queued before the current token is
read): a single request pays nothing for batching. A prompt read beside other lanes goes into the rounds' prefill
with the other prompts (right-padded, as mlx-lm's batched prompt processing does), ``prefill_chunk`` tokens a round
so that a long prompt does not stall the others' streams; its last token goes into the round after its last chunk.
Spans fed in and rollback are per lane. A lane whose cache cannot merge or trim (quantized, state-space: asked of
the cache, ``_mergeable``) takes its own forward pass in the round. Greedy answers are the same as alone up to
float rounding in a batched matrix product or a padded prefill (tested on the bundled model, with routing on).
"""

from __future__ import annotations

from collections.abc import Sequence

from .decoder import Step, StepDecoder
from .loading import LocalModel
from .rows import BatchRows, forward_rows


def _mergeable(cache) -> bool:
    """Whether a layer's cache can join a batch, asked of the cache: it can be trimmed (rollback) and merged into
    a batched cache (``merge``, whose ``extract`` gives one row back)."""
    return cache.is_trimmable() and callable(getattr(type(cache), "merge", None))


class LaneStep:
    """A step submitted to a round: a ``Step`` once the round has run it (``done``); read before, it raises."""

    __slots__ = ("_lane", "_step", "cancelled", "error")

    def __init__(self, lane: LaneDecoder):
        self._lane = lane
        self._step: Step | None = None
        self.cancelled = False
        self.error: BaseException | None = None  # the round that carried it failed

    @property
    def done(self) -> bool:
        return self._step is not None

    def settled(self) -> bool:
        """Run, failed or dropped: nothing more will happen to it."""
        return self._step is not None or self.error is not None or self.cancelled

    def resolved(self) -> Step:
        if self.error is not None:
            raise self.error
        if self._step is None:
            raise RuntimeError("a step was read before a round ran it" if not self.cancelled else
                               "a cancelled step was read")
        return self._step

    # the fields of ``Step``
    token = property(lambda self: self.resolved().token)
    token_id = property(lambda self: self.resolved().token_id)
    confidence = property(lambda self: self.resolved().confidence)
    logprobs = property(lambda self: self.resolved().logprobs)
    hidden = property(lambda self: self.resolved().hidden)


class LanePrefill:
    """A prompt body submitted to the prefill rounds (``read``: how much of it the lane's cache holds)."""

    __slots__ = ("body", "error", "lane", "read")

    def __init__(self, lane: LaneDecoder, body: list[int]):
        self.lane, self.body, self.read = lane, body, 0
        self.error: BaseException | None = None


class LaneDecoder(StepDecoder):
    """A ``StepDecoder`` whose single-token steps go through a ``BatchScheduler`` round (see the module)."""

    def __init__(self, lm: LocalModel, scheduler: BatchScheduler, **kwargs):
        self.scheduler = scheduler
        self._own: list | None = None  # the lane's KV cache per layer; None while the batch holds its row
        super().__init__(lm, **kwargs)
        self._pending: LaneStep | None = None

    @property
    def cache(self) -> list:
        """The lane's KV cache; read back from the batch first if it holds the lane's row (the row leaves it)."""
        if self._own is None:
            self.scheduler.batch.release(self)
        return self._own

    @cache.setter
    def cache(self, caches: list) -> None:
        if self._own is None:
            self.scheduler.batch.drop(self)  # replaced: the row is not read back
        self._own = caches

    @property
    def batchable(self) -> bool:
        return self._own is None or all(_mergeable(c) for c in self._own)

    @property
    def pending(self) -> LaneStep | None:
        """The submitted step no round has run yet (None when settled)."""
        p = self._pending
        return p if p is not None and not p.settled() else None

    def _settled(self) -> None:
        """A per-lane operation needs the cache to hold every submitted step (``loop.settled`` waits for it)."""
        if self.pending is not None:
            raise RuntimeError("a lane's cache was used while a step of it waits for its round")
        self._pending = None

    def step(self, token):
        self._settled()
        if self.scheduler.alone(self):
            return super().step(token)  # exactly StepDecoder: own cache, forward pass queued, nothing waits
        tid = token if isinstance(token, int) else int(token.item())
        self._tokens.append(tid)
        ls = LaneStep(self)
        self._pending = ls
        self._steps.append(ls)  # type: ignore[arg-type]  # a Step once run
        self.scheduler.submit(self, tid, ls)
        return ls

    def _round_done(self, ls: LaneStep, step: Step) -> None:
        ls._step = step
        if self._pending is ls:
            self._pending = None

    def cancel_pending(self) -> None:
        """Drop a submitted step no round has run yet (the generation ended): the lane's tokens lose it too."""
        ls, self._pending = self._pending, None
        if ls is None or ls.settled():
            return
        ls.cancelled = True
        self._tokens.pop()
        if self._steps and self._steps[-1] is ls:
            self._steps.pop()

    def prefill(self, ids: Sequence[int]) -> Step:
        """As ``StepDecoder.prefill``; beside other lanes, the prompt (less its last token) is read in a batched
        prefill round with theirs, and its last token is a step of the decode round that follows it."""
        self._settled()
        todo = self._keep_prefix(ids)
        if len(todo) < 2 or not self.batchable or self.scheduler.alone(self):
            return self._append(todo)
        body = todo[:-1]
        self.scheduler.prefill(self, body)
        self._tokens.extend(body)
        self._steps.clear()
        return self.step(todo[-1])

    def feed(self, ids: Sequence[int]) -> Step:
        self._settled()
        return super().feed(ids)

    def rollback(self, k: int) -> Step:
        self._settled()
        return super().rollback(k)

    def constrain(self, step, allowed) -> Step:
        return super().constrain(step.resolved() if isinstance(step, LaneStep) else step, allowed)

    def reset(self) -> None:
        self.cancel_pending()
        super().reset()

    def _twin(self) -> LaneDecoder:
        """A branch drafts in the same rounds as its trunk (joined here; ``close`` makes it leave)."""
        twin = LaneDecoder(self.lm, self.scheduler, sampler=self.sampler, top_k=self.top_k,
                           want_hidden=self.want_hidden, prefill_step_size=self.prefill_step_size,
                           history=self._steps.maxlen)
        self.scheduler.join(twin)
        return twin

    def fork(self, back: int = 0, *, end: Step | None = None) -> LaneDecoder:
        self._settled()
        return super().fork(back, end=end)  # type: ignore[return-value]

    def adopt(self, branch: StepDecoder, end: Step) -> Step:
        self.scheduler.withdraw(self)  # a step of the old sequence no round has run is dropped
        if isinstance(branch, LaneDecoder):
            branch.close()
        return super().adopt(branch, end)

    def close(self) -> None:
        """A branch leaves the rounds (a step of it no round has run is dropped, its token too)."""
        self.scheduler.leave(self)


class BatchScheduler:
    """The lanes' submitted steps and prompts, and the rounds that run them (see the module docstring)."""

    def __init__(self, *, prefill_chunk: int = 512):
        self.prefill_chunk = prefill_chunk  # prompt tokens a lane reads per round beside others
        self.open: set[LaneDecoder] = set()
        self.pending: list[tuple[LaneDecoder, int, LaneStep]] = []
        self.prefills: list[LanePrefill] = []
        self.batch = BatchRows()  # the decode rounds' batched KV cache, kept across rounds
        self.rounds = 0  # batched forward passes run
        self.rows = 0  # steps they carried
        self.prefill_rounds = 0  # prefill rounds run
        self.prefill_rows = 0  # prompts they read
        self._calls = 0

    # -- lanes --------------------------------------------------------------------------------------------------
    def join(self, lane: LaneDecoder) -> None:
        self.open.add(lane)

    def leave(self, lane: LaneDecoder) -> None:
        self.withdraw(lane)
        self.batch.release(lane)  # its row read back now, on the loop (an idle lane's cache is its own)
        for j in [j for j in self.prefills if j.lane is lane]:  # a prompt half read: the tokens its cache holds
            del lane._tokens[len(lane._tokens) - (len(j.body) - j.read):]
            self.prefills.remove(j)
        self.open.discard(lane)

    def withdraw(self, lane: LaneDecoder) -> None:
        """Drop the lane's submitted step if no round has run it yet (it stays open)."""
        lane.cancel_pending()
        self.pending = [p for p in self.pending if p[0] is not lane]

    def alone(self, lane: LaneDecoder) -> bool:
        return len(self.open) <= 1 and not self.pending and not self.prefills

    def submit(self, lane: LaneDecoder, tid: int, ls: LaneStep) -> None:
        self.pending.append((lane, tid, ls))

    def prefill(self, lane: LaneDecoder, body: list[int]) -> None:
        """Read ``body`` into the lane's cache in the next round's prefill (with the other lanes' prompts)."""
        self.prefills.append(LanePrefill(lane, body))

    # -- rounds -------------------------------------------------------------------------------------------------
    def run_round(self) -> None:
        """A chunk of every prompt submitted (one prefill round), then every step submitted whose prompt is read
        (one decode round). An error reaches exactly the steps of its round (set on them, not raised here)."""
        jobs, self.prefills = self.prefills, []
        batch, self.pending = self.pending, []
        if jobs:
            try:
                self.prefills = self._prefill_round(jobs)
            except Exception as exc:  # noqa: BLE001 - set on the prompts' steps, raised where they are read
                failed = {j.lane for j in jobs}
                self._fail([p for p in batch if p[0] in failed], exc)
                batch = [p for p in batch if p[0] not in failed]
            reading = {j.lane for j in self.prefills}  # a prompt's last token waits for its last chunk
            self.pending = [p for p in batch if p[0] in reading]
            batch = [p for p in batch if p[0] not in reading]
        if not batch:
            return
        import mlx.core as mx

        try:
            together = [p for p in batch if p[0].batchable]
            alone = [p for p in batch if not p[0].batchable]
            if len(together) == 1:
                alone, together = alone + together, []
            for lane, tid, ls in alone:
                step = StepDecoder._forward(lane, mx.array([tid], dtype=mx.uint32))
                step.wait()  # evaluated on the loop thread, where it was made
                lane._round_done(ls, step)
            if together:
                self._forward_batch(together)
            self.rounds += 1
            self.rows += len(batch)
        except Exception as exc:  # noqa: BLE001 - every step of the round gets the error (none waits forever)
            self._fail(batch, exc)

    @staticmethod
    def _fail(batch: list[tuple[LaneDecoder, int, LaneStep]], exc: BaseException) -> None:
        for lane, _, ls in batch:
            if not ls.done:
                ls.error = exc
                if lane._pending is ls:
                    lane._pending = None

    def _prefill_round(self, jobs: list[LanePrefill]) -> list[LanePrefill]:
        """Read the next ``prefill_chunk`` tokens of every job's prompt body into its lane's cache: batched forward
        passes (the lanes' caches merged, the chunks right-padded, as mlx-lm's batched prompt processing does), or
        the lane's own chunked read for a lone job. Returns the jobs with tokens left; the lanes whose prompt is read
        stay in the batch for the decode round that runs their last token (``BatchRows.add``)."""
        import mlx.core as mx

        try:
            lanes = [j.lane for j in jobs]
            first = lanes[0]
            pieces = [j.body[j.read:j.read + self.prefill_chunk] for j in jobs]
            with mx.stream(first._stream):
                if len(jobs) == 1:
                    first._read(pieces[0])
                else:
                    lengths = [len(p) for p in pieces]
                    width = max(lengths)
                    pad = [width - n for n in lengths]
                    caches = [type(first.cache[i]).merge([lane.cache[i] for lane in lanes])
                              for i in range(len(first.cache))]
                    for c in caches:
                        c.prepare(lengths=lengths, right_padding=pad)
                    tokens = mx.array([p + [0] * k for p, k in zip(pieces, pad)], dtype=mx.uint32)
                    chunk = max(256, first.prefill_step_size // len(jobs))  # about as many tokens per pass as alone
                    for s in range(0, width, chunk):
                        first.model(tokens[:, s:s + chunk], cache=caches)
                        mx.eval([c.state for c in caches])
                    for c in caches:
                        c.finalize()
                    mx.eval([c.state for c in caches])
                    read = [r for r, (j, p) in enumerate(zip(jobs, pieces)) if j.read + len(p) == len(j.body)]
                    self.batch.add(lanes, caches, read)  # prompts read: their rows join the kept batch as they are
            self.prefill_rounds += 1
            self.prefill_rows += len(jobs)
        except BaseException as exc:
            for j in jobs:
                j.error = exc
            raise
        for j, p in zip(jobs, pieces):
            j.read += len(p)
        return [j for j in jobs if j.read < len(j.body)]

    def _forward_batch(self, batch: list[tuple[LaneDecoder, int, LaneStep]]) -> None:
        """One forward pass over the kept batch, its rows made those of ``batch``'s lanes (``BatchRows.arrange``).
        Nothing is copied back: the rows stay in the batch for the next round."""
        import mlx.core as mx

        submitted = {id(lane): (tid, ls) for lane, tid, ls in batch}
        with mx.stream(batch[0][0]._stream):
            try:
                kv = self.batch.arrange([lane for lane, _, _ in batch])
                lanes = list(self.batch.lanes)
                steps, outs = forward_rows(lanes, [submitted[id(lane)][0] for lane in lanes], kv)
                mx.eval(*outs, *[c.state for c in kv])
            except BaseException:
                self.batch.lost()  # the rows' caches are in an unknown state
                raise
            self.batch.after_round()
        for lane, step in zip(lanes, steps):
            lane._calls += 1  # a pass over its sequence (``passes``), as ``_forward`` counts a lone one
            lane._round_done(submitted[id(lane)][1], step)
        self._calls += 1
        if self._calls % 256 == 0:
            mx.clear_cache()
