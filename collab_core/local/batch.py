"""Batched local decoding: concurrent generations on one model share each forward pass.

Decoding is memory-bound on a CPU and on Apple silicon: one step over 8 sequences reads the weights once, as a
step over one does. ``BatchScheduler`` gathers the single-token steps of every open ``LaneDecoder`` (one per
concurrent generation) and runs them as one forward pass over mlx-lm's ``BatchKVCache`` (the lanes' caches
merged, left-padded, then extracted back), so each generation keeps its own KV cache, routing, spans, rollback
and stats, and a lane can join or leave between any two steps.

How a round is decided. Every lane runs its generation in its own thread and holds the model's lock while it
does (MLX work is serialized per model); it gives the lock up only where it waits:

* for a step of its own (``LaneStep``) or for its prompt to be read (``LanePrefill``): a **round** runs once
  every open lane has a step or a prompt waiting or is away, and no generation is on its way in (waiting for the
  lock in ``entry``); ``linger`` caps the wait, counted from the last join or submission: 5 ms, or a quarter of
  the last round's time if more. The thread that finds it due runs it: first one **prefill round** for every
  prompt waiting (the lanes' caches merged, the prompts right-padded, as mlx-lm's batched prompt processing
  does), then one decode step for every step waiting;
* while it is **away** (``LaneDecoder.blocking``: waiting for the cloud), rounds do not wait for it; its
  submitted step still goes into the rounds the others run;
* while its caller reads an event (``stepped_out``) it holds no lock either, but rounds wait for its next step
  (up to ``linger``): it comes as soon as the caller asks for the next event.

A lane that is alone decodes exactly as ``StepDecoder`` does (its own cache, the next forward pass queued
before the current token is read), so a single request pays nothing for batching (it waits ``gather_s``, 2 ms,
before reading its prompt, for requests sent together with it). Multi-token feeds (cloud spans) and rollback are
per lane, on the lane's own cache.

Where batching does not apply: a lane whose cache is not a plain ``KVCache`` (rotating windows, quantized or
state-space caches) takes its own forward pass inside the round and reads its prompt alone; greedy answers are
the same as alone up to float rounding in a batched matrix product or a padded prefill (tested on the bundled
model, with routing on).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ..scoring import summary_graph
from ..threads import mark_mlx_thread
from .decoder import Step, StepDecoder, greedy
from .loading import LocalModel

T = TypeVar("T")

_MODEL_LOCKS: dict[int, threading.RLock] = {}
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(lm: LocalModel) -> threading.RLock:
    """MLX work on one local model is serialized, whoever does it (MLX state is not shared safely across
    threads); the same thread may interleave two streams. A generation holds it except where it waits (for a
    batched step, for the cloud, for its caller to read an event)."""
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(id(lm), threading.RLock())


@contextlib.contextmanager
def released(lock) -> Iterator[None]:
    """``lock`` (an ``RLock`` held by this thread, at any depth) let go for the block, then taken back."""
    state = lock._release_save()
    try:
        yield
    finally:
        lock._acquire_restore(state)


class LaneStep:
    """A step submitted to a round: a ``Step`` once the round has run (reading any field waits for it)."""

    __slots__ = ("_lane", "_step", "cancelled", "error")

    def __init__(self, lane: LaneDecoder):
        self._lane = lane
        self._step: Step | None = None
        self.cancelled = False
        self.error: BaseException | None = None  # the round that carried it failed

    @property
    def done(self) -> bool:
        return self._step is not None

    def resolved(self) -> Step:
        if self._step is None:
            self._lane.scheduler.wait_for(self)
        return self._step

    # the fields of ``Step``
    @property
    def token(self):
        return self.resolved().token

    @property
    def token_id(self) -> int:
        return self.resolved().token_id

    @property
    def confidence(self):
        return self.resolved().confidence

    @property
    def logprobs(self):
        return self.resolved().logprobs

    @property
    def hidden(self):
        return self.resolved().hidden


class LanePrefill:
    """A prompt body submitted to a prefill round (``done`` once the lane's cache holds it)."""

    __slots__ = ("body", "cancelled", "done", "error", "lane")

    def __init__(self, lane: LaneDecoder, body: list[int]):
        self.lane, self.body = lane, body
        self.done = self.cancelled = False
        self.error: BaseException | None = None


class LaneDecoder(StepDecoder):
    """A ``StepDecoder`` whose single-token steps go through a ``BatchScheduler`` round (see the module)."""

    def __init__(self, lm: LocalModel, scheduler: BatchScheduler, **kwargs):
        super().__init__(lm, **kwargs)
        self.scheduler = scheduler
        self._pending: LaneStep | None = None

    @property
    def batchable(self) -> bool:
        from mlx_lm.models.cache import KVCache

        return all(type(c) is KVCache for c in self.cache)

    def _settle(self) -> None:
        """Wait for this lane's submitted step, if any: the cache must hold it before a per-lane operation."""
        if self._pending is not None:
            self._pending.resolved()

    def step(self, token):
        self._settle()
        if self.scheduler.alone(self):
            return super().step(token)  # exactly StepDecoder: own cache, forward pass queued, nothing waits
        tid = token if isinstance(token, int) else int(token.item())
        self._tokens.append(tid)
        ls = LaneStep(self)
        self._pending = ls
        self._steps.append(ls)  # type: ignore[arg-type]  # a Step once read
        self.scheduler.submit(self, tid, ls)
        return ls

    def _round_done(self, ls: LaneStep, step: Step) -> None:
        ls._step = step
        if self._pending is ls:
            self._pending = None

    def cancel_pending(self) -> None:
        """Drop a submitted step no round has run yet (the generation ended): the lane's tokens lose it too."""
        ls = self._pending
        if ls is None or ls.done:
            self._pending = None
            return
        ls.cancelled = True
        self._pending = None
        self._tokens.pop()
        if self._steps and self._steps[-1] is ls:
            self._steps.pop()

    def prefill(self, ids: Sequence[int]) -> Step:
        """As ``StepDecoder.prefill``; beside other lanes, the prompt (less its last token) is read in a batched
        prefill round with theirs, then its last token is a step of the next round."""
        self._settle()
        todo = self._keep_prefix(ids)
        if len(todo) < 2 or not self.batchable or not self.scheduler.company(self):
            return self._append(todo)
        body = todo[:-1]
        self.scheduler.prefill(self, body)
        self._tokens.extend(body)
        self._steps.clear()
        return self.step(todo[-1])

    def feed(self, ids: Sequence[int]) -> Step:
        self._settle()
        return super().feed(ids)

    def rollback(self, k: int) -> Step:
        self._settle()
        return super().rollback(k)

    def constrain(self, step, allowed) -> Step:
        return super().constrain(step.resolved() if isinstance(step, LaneStep) else step, allowed)

    def reset(self) -> None:
        self.cancel_pending()
        super().reset()

    def _twin(self) -> LaneDecoder:
        """A branch drafts in the same rounds as its trunk (joined here; ``close`` makes it leave)."""
        self._settle()
        twin = LaneDecoder(self.lm, self.scheduler, sampler=self.sampler, top_k=self.top_k,
                           want_hidden=self.want_hidden, prefill_step_size=self.prefill_step_size,
                           history=self._steps.maxlen)
        self.scheduler.join(twin)
        return twin

    def fork(self, back: int = 0, *, end: Step | None = None) -> LaneDecoder:
        self._settle()
        return super().fork(back, end=end)  # type: ignore[return-value]

    def adopt(self, branch: StepDecoder, end: Step) -> Step:
        self.scheduler.withdraw(self)  # a step of the old sequence no round has run is dropped
        if isinstance(branch, LaneDecoder):
            branch.close()
        return super().adopt(branch, end)

    def close(self) -> None:
        """A branch leaves the rounds (a step of it no round has run is dropped, its token too)."""
        self.scheduler.leave(self)

    def blocking(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` with the model given up meanwhile (this lane is away; its submitted step still runs)."""
        return self.scheduler.away(self, fn, *args)


class BatchScheduler:
    """Runs the lanes' single-token steps as batched forward passes (see the module docstring).

    Every method is called by a lane's thread holding ``lock`` (the model's ``RLock``); waiting releases it.
    """

    def __init__(self, lock, *, linger_s: float = 0.005, linger_share: float = 0.25, gather_s: float = 0.002):
        self.lock = lock
        self.gather_s = gather_s
        self.cond = threading.Condition(lock)
        self.linger_s = linger_s
        self.linger_share = linger_share
        self._last_round_s = 0.0
        self.open: set[LaneDecoder] = set()
        self.away_lanes: set[LaneDecoder] = set()
        self.pending: list[tuple[LaneDecoder, int, LaneStep]] = []
        self.prefills: list[LanePrefill] = []
        self.rounds = 0  # batched forward passes run
        self.rows = 0  # steps they carried
        self.prefill_rounds = 0  # prefill rounds run
        self.prefill_rows = 0  # prompts they read
        self._calls = 0
        self._arriving = 0  # generations on their way in, not yet holding the lock
        self._arrivals = threading.Lock()
        self._activity = 0.0  # when a lane last joined or submitted

    @contextlib.contextmanager
    def entry(self) -> Iterator[None]:
        """The model lock, held for a new generation. Until it has it, the generation counts as arriving: rounds
        wait for it (up to ``linger``), so that requests sent together read their prompts in one prefill round."""
        mark_mlx_thread()
        with self._arrivals:
            self._arriving += 1
        try:
            self.lock.acquire()
        finally:
            with self._arrivals:
                self._arriving -= 1
        try:
            yield
        finally:
            self.lock.release()

    # -- lanes --------------------------------------------------------------------------------------------------
    def join(self, lane: LaneDecoder) -> None:
        self.open.add(lane)
        self._activity = time.perf_counter()

    def leave(self, lane: LaneDecoder) -> None:
        lane.cancel_pending()
        self.pending = [p for p in self.pending if p[0] is not lane]
        self.open.discard(lane)
        self.away_lanes.discard(lane)
        self.cond.notify_all()  # the others may now be due

    def withdraw(self, lane: LaneDecoder) -> None:
        """Drop the lane's submitted step if no round has run it yet (it stays open)."""
        lane.cancel_pending()
        self.pending = [p for p in self.pending if p[0] is not lane]

    def alone(self, lane: LaneDecoder) -> bool:
        return len(self.open) <= 1 and not self.pending and not self._arriving

    def company(self, lane: LaneDecoder) -> bool:
        """Whether other generations decode beside ``lane`` or are on their way in. A lone lane first lets the
        requests sent together with it arrive (one wait of ``gather_s``, before its prompt is read)."""
        if self.alone(lane):
            self.cond.wait(self.gather_s)
        return not self.alone(lane)

    def submit(self, lane: LaneDecoder, tid: int, ls: LaneStep) -> None:
        self.pending.append((lane, tid, ls))
        self._activity = time.perf_counter()
        self.cond.notify_all()

    def prefill(self, lane: LaneDecoder, body: list[int]) -> None:
        """Read ``body`` into the lane's cache in a prefill round (with the other lanes' prompts); blocks."""
        job = LanePrefill(lane, body)
        self.prefills.append(job)
        self._activity = time.perf_counter()
        self.cond.notify_all()
        self.wait_for(job)

    def away(self, lane: LaneDecoder, fn: Callable[..., T], *args) -> T:
        self.away_lanes.add(lane)
        self.cond.notify_all()
        try:
            with released(self.lock):
                return fn(*args)
        finally:
            self.away_lanes.discard(lane)

    @contextlib.contextmanager
    def stepped_out(self, lane: LaneDecoder) -> Iterator[None]:
        """The lane's caller has the floor (it reads an event), with the model given up. Not away: the lane
        submits its next step as soon as its caller asks for the next event, and rounds wait for it (up to
        ``linger``)."""
        with released(self.lock):
            yield

    # -- rounds -------------------------------------------------------------------------------------------------
    def _due(self) -> bool:
        if not (self.pending or self.prefills) or self._arriving:
            return False
        ready = {p[0] for p in self.pending} | {j.lane for j in self.prefills} | self.away_lanes
        return self.open <= ready

    @property
    def linger(self) -> float:
        """How long a round waits for a lane that has not submitted yet: ``linger_s``, or ``linger_share`` of the
        last round's time if more (on a busy CPU a lane's own work between steps takes longer)."""
        return max(self.linger_s, self.linger_share * self._last_round_s)

    def wait_for(self, job: LaneStep | LanePrefill) -> None:
        """Block until a round has run ``job`` (running it here when it is due): it waits for every open lane
        to submit, at most ``linger`` after the last one joined or submitted."""
        while not job.done:
            if job.error is not None:
                raise job.error
            if job.cancelled:
                raise RuntimeError("a cancelled step was read")
            linger = self.linger
            if self._due() or time.perf_counter() - self._activity >= linger:
                self._round()
                self._activity = time.perf_counter()
                continue
            self.cond.wait(linger)

    def _round(self) -> None:
        jobs, self.prefills = self.prefills, []
        if jobs:
            self._prefill_round(jobs)
        batch, self.pending = self.pending, []
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            together = [p for p in batch if p[0].batchable]
            alone = [p for p in batch if not p[0].batchable]
            if len(together) == 1:
                alone, together = alone + together, []
            for lane, tid, ls in alone:
                step = StepDecoder._forward(lane, _ids([tid]))
                step.wait()  # read on the lane's thread: evaluated here, where it was made
                lane._round_done(ls, step)
            if together:
                self._forward_batch(together)
            self.rounds += 1
            self.rows += len(batch)
            self._last_round_s = time.perf_counter() - t0
        except BaseException as exc:  # every lane in the round gets the error (none waits forever)
            for lane, _, ls in batch:
                if not ls.done:
                    ls.error = exc
                    if lane._pending is ls:
                        lane._pending = None
            raise
        finally:
            self.cond.notify_all()

    def _prefill_round(self, jobs: list[LanePrefill]) -> None:
        """Read every job's prompt body into its lane's cache: one batched forward pass per chunk (the lanes'
        caches merged, the bodies right-padded, as mlx-lm's batched prompt processing does), or the lane's own
        chunked prefill for a lone job."""
        import mlx.core as mx
        from mlx_lm.models.cache import BatchKVCache

        try:
            lanes = [j.lane for j in jobs]
            first = lanes[0]
            with mx.stream(first._stream):
                if len(jobs) == 1:
                    first._read(jobs[0].body)
                else:
                    lengths = [len(j.body) for j in jobs]
                    width = max(lengths)
                    pad = [width - n for n in lengths]
                    caches = [BatchKVCache.merge([lane.cache[i] for lane in lanes]) for i in range(len(first.cache))]
                    for c in caches:
                        c.prepare(lengths=lengths, right_padding=pad)
                    tokens = mx.array([j.body + [0] * p for j, p in zip(jobs, pad)], dtype=mx.uint32)
                    chunk = max(256, first.prefill_step_size // len(jobs))  # about as many tokens per pass as alone
                    for s in range(0, width, chunk):
                        first.model(tokens[:, s:s + chunk], cache=caches)
                        mx.eval([c.state for c in caches])
                    for c in caches:
                        c.finalize()
                    for row, lane in enumerate(lanes):
                        lane.cache = [c.extract(row) for c in caches]
                    mx.eval([c.state for lane in lanes for c in lane.cache])
            for j in jobs:
                j.done = True
            self.prefill_rounds += 1
            self.prefill_rows += len(jobs)
        except BaseException as exc:  # every prompt in the round gets the error (none waits forever)
            for j in jobs:
                j.error = exc
            raise
        finally:
            self.cond.notify_all()

    def _forward_batch(self, batch: list[tuple[LaneDecoder, int, LaneStep]]) -> None:
        import mlx.core as mx
        from mlx_lm.models.cache import BatchKVCache

        lanes = [lane for lane, _, _ in batch]
        first = lanes[0]
        n_layers = len(first.cache)
        with mx.stream(first._stream):
            caches = [BatchKVCache.merge([lane.cache[i] for lane in lanes]) for i in range(n_layers)]
            ids = mx.array([[tid] for _, tid, _ in batch], dtype=mx.uint32)
            hidden = None
            if any(lane.want_hidden for lane in lanes):
                h = first.model.model(ids, cache=caches)[:, -1, :]
                logits = first._head()(h)
                hidden = h
            else:
                logits = first.model(ids, cache=caches)[:, -1, :]
            logprobs = (logits - mx.logsumexp(logits, axis=-1, keepdims=True)).astype(mx.float32)
            k = max(lane.top_k for lane in lanes)
            packed, top = summary_graph(logprobs, k)  # one graph for every row
            greedy_rows = mx.argmax(logprobs, axis=-1) if any(lane.sampler is greedy for lane in lanes) else None
            # every array a lane reads is evaluated here: an array made on this thread's generation stream
            # cannot be evaluated later on the lane's own thread
            steps, outs = [], [logprobs]
            for row, lane in enumerate(lanes):
                lp = logprobs[row]
                token = greedy_rows[row] if lane.sampler is greedy else lane.sampler(lp[None]).squeeze()
                n = lane.top_k
                if n == k:
                    p_row, t_row = packed[row], top[row]
                else:  # a lane that keeps fewer candidates: its own top-n (the k best are not ordered)
                    t_row = mx.argpartition(-lp, kth=n - 1)[:n]
                    p_row = mx.concatenate([packed[row, :1], lp[t_row]])
                hid = hidden[row] if hidden is not None and lane.want_hidden else None
                steps.append(Step(lp, token, p_row, t_row, hid))
                outs += [lp, token, p_row, t_row] + ([hid] if hid is not None else [])
            for row, lane in enumerate(lanes):
                lane.cache = [c.extract(row) for c in caches]
            mx.eval(*outs, *[c.state for lane in lanes for c in lane.cache])
        for (lane, _, ls), step in zip(batch, steps):
            lane._calls += 1  # a pass over its sequence (``passes``), as ``_forward`` counts a lone one
            lane._round_done(ls, step)
        self._calls += 1
        if self._calls % 256 == 0:
            mx.clear_cache()


def run_lanes(lm: LocalModel, jobs: Sequence[Callable[[LaneDecoder], T]], *, max_batch: int = 8,
              want_hidden: bool = False) -> list[T]:
    """Run ``jobs`` (each a function of a decoder, e.g. one greedy answer) up to ``max_batch`` at a time, their
    single-token steps batched; their results in order. For offline work (calibration, traces)."""
    import concurrent.futures as cf

    lock = model_lock(lm)
    sched = BatchScheduler(lock)

    def on_a_lane(jobs_here):
        with sched.entry():
            lane = LaneDecoder(lm, sched, want_hidden=want_hidden)
            sched.join(lane)
            try:
                return [job(lane) for job in jobs_here]  # one lane, one KV cache: shared prefixes are reused
            finally:
                sched.leave(lane)

    if max_batch <= 1:
        return on_a_lane(jobs)
    with cf.ThreadPoolExecutor(max_batch) as ex:
        return [r for (r,) in ex.map(lambda job: on_a_lane([job]), jobs)]


def _ids(ids: list[int]):
    import mlx.core as mx

    return mx.array(ids, dtype=mx.uint32)
