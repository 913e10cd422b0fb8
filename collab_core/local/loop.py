"""One loop per local model: the one thread that runs every forward pass on it.

Every generation on a model is a coroutine (a generator) that the model's ``ModelLoop`` advances on its thread;
no caller's thread touches the model. A generation yields what it has for its reader (events: they go to its
sink, a queue its reader takes them from) and ``Wait``s: for a round to run a step it submitted (``ready``), for
a cloud span (a future), for a pacing hold to pass. Each turn of the loop (``step``, as vLLM's ``EngineCore.step``
schedules, executes and updates):

1. **admit** the generations that arrived (when the loop was idle, after ``gather_s``, so that requests sent
   together read their prompts in one prefill round) and **drop** the ones whose reader left (their coroutine is
   closed: its lanes leave the batch at once);
2. **advance** every generation that can go on -- not waiting, or its wait over, and fewer than ``ahead`` of its
   events unread -- up to its next wait or its next event;
3. **execute** the round (``BatchScheduler.run_round``: every prompt and step submitted) if there is one, else
   sleep until something wakes the loop (an arrival, a reader, a future done) or the earliest wait's deadline.

A generation waiting for the cloud or for its reader never holds the others back. MLX arrays are made and
evaluated on the loop's thread; what leaves it (events, stats, a job's result) is plain Python or evaluated. The
thread never exits: an ``atexit`` hook waits until it is parked, so MLX's thread-local teardown never runs while
the interpreter finalizes.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

from .batch import BatchScheduler, LaneDecoder, LaneStep
from .decoder import Step
from .loading import LocalModel

T = TypeVar("T")
Coroutine = Generator[Any, None, Any]


class Wait:
    """What a generation waits for: ``ready()`` true, or the time ``until`` (perf_counter) reached. A ``future``
    wakes the loop when it completes."""

    __slots__ = ("future", "ready", "until")

    def __init__(self, ready: Callable[[], bool], until: float | None = None, future: cf.Future | None = None):
        self.ready, self.until, self.future = ready, until, future

    def over(self, now: float) -> bool:
        return self.ready() or (self.until is not None and now >= self.until)


def ready(step) -> Generator[Wait, None, Step]:
    """Suspend the generation until a round has run ``step`` (a ``LaneStep``); raises the round's error."""
    if isinstance(step, LaneStep):
        if not step.settled():
            yield Wait(step.settled)
        step.resolved()
    return step


def settled(dec) -> Generator[Wait, None, None]:
    """Suspend the generation until ``dec``'s submitted step, if any, has run (before a per-lane operation)."""
    pending = getattr(dec, "pending", None)
    if pending is not None:
        yield from ready(pending)


class Failed:
    """The error a generation ended with, as its sink receives it."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


DONE = object()  # the last item a sink receives after a generation that ended well


class Request:
    """A generation in the loop: its coroutine, its sink, its wait. ``cancel`` is the reader leaving."""

    def __init__(self, loop: ModelLoop, start: Callable[[], Coroutine], sink: Callable[[Any], None],
                 on_end: Callable[[], None] | None = None):
        self.loop, self.start, self.sink, self.on_end = loop, start, sink, on_end
        self.coro: Coroutine | None = None
        self.wait: Wait | None = None
        self.put = 0  # events handed to the sink (the loop counts)
        self.taken = 0  # events the reader took (the reader counts)
        self.paused = False  # the loop waits for the reader
        self.cancelled = False
        self.finished = threading.Event()

    def took(self) -> None:
        """The reader took an item: a paused generation may go on."""
        self.taken += 1
        if self.paused:
            self.loop.wake()

    def cancel(self, wait: bool = True) -> None:
        """The reader left: the loop drops the generation at its next turn (``wait``: until it has)."""
        if self.finished.is_set():
            return
        self.cancelled = True
        self.loop.wake()
        if wait and threading.get_ident() != self.loop.ident:
            self.finished.wait()

    def received(self, item: Any) -> bool:
        """The reader took ``item`` from the sink: whether it is an event (False: the end; the error raised)."""
        self.took()
        if isinstance(item, Failed):
            raise item.exc
        return item is not DONE

    def items(self, q: queue.SimpleQueue) -> Iterator[Any]:
        """What a sink that puts into ``q`` received, until the generation ended (its error raised)."""
        while self.received(item := q.get()):
            yield item


class ModelLoop(BatchScheduler):
    """The loop of one local model (see the module docstring); ``model_loop`` gives the model's one."""

    def __init__(self, *, ahead: int = 8, gather_s: float = 0.002, idle_s: float = 0.5):
        super().__init__()
        self.ahead, self.gather_s, self.idle_s = ahead, gather_s, idle_s
        self.requests: list[Request] = []
        self.steps = 0  # turns of the loop that ran something
        self.ident: int | None = None
        self._inbox: collections.deque[Request] = collections.deque()
        self._wake = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._parked = threading.Event()

    def submit_generation(self, start: Callable[[], Coroutine], sink: Callable[[Any], None], *,
                          on_end: Callable[[], None] | None = None) -> Request:
        """Run ``start()`` (called on the loop thread: a generator) as a generation; what it yields besides
        ``Wait``s goes to ``sink``, then ``DONE`` or a ``Failed``; ``on_end`` is called (on the loop) after."""
        req = Request(self, start, sink, on_end)
        with self._guard:
            if self._closing:
                raise RuntimeError("the interpreter is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="collab-loop", daemon=True)
                self._thread.start()
                atexit.register(self._park)
            self._inbox.append(req)
        self.wake()
        return req

    def wake(self) -> None:
        self._wake.set()

    # -- the thread -----------------------------------------------------------------------------------------------
    def _main(self) -> None:
        self.ident = threading.get_ident()
        while not self._closing:
            try:
                self.step()
            except BaseException as exc:  # noqa: BLE001 - a fault of the loop itself: its generations fail
                for r in list(self.requests):
                    self._drop(r, exc)
                self.pending, self.prefills = [], []
        self._parked.set()
        threading.Event().wait()  # parked for good: the interpreter is finalizing

    def _park(self) -> None:
        """At exit: the loop stops after its current turn and parks (its thread never exits: see the module)."""
        with self._guard:
            self._closing = True
        self.wake()
        self._parked.wait(30.0)

    def step(self) -> None:
        """One turn: admit, drop, advance, then run the round or sleep."""
        self._wake.clear()
        if self._inbox:
            if not self.requests and self.gather_s:
                time.sleep(self.gather_s)  # requests sent together: let the others arrive
            while self._inbox:
                req = self._inbox.popleft()
                self.requests.append(req)
        for r in [r for r in self.requests if r.cancelled]:
            self._drop(r)
        now = time.perf_counter()
        ran = False
        for r in list(self.requests):
            if self._runnable(r, now):
                self._advance(r)
                ran = True
        if self.pending or self.prefills:
            self.run_round()
            ran = True
        if ran:
            self.steps += 1
            return
        deadlines = [r.wait.until for r in self.requests if r.wait is not None and r.wait.until is not None]
        timeout = min([self.idle_s] + [d - time.perf_counter() for d in deadlines])
        if timeout > 0:
            self._wake.wait(timeout)

    def _runnable(self, r: Request, now: float) -> bool:
        if r.put - r.taken >= self.ahead:
            r.paused = True  # set before the second look: a reader taking meanwhile sees it and wakes the loop
            if r.put - r.taken >= self.ahead:
                return False
        r.paused = False
        return r.wait is None or r.wait.over(now)

    def _advance(self, r: Request) -> None:
        """Run ``r`` to its next wait or its next event."""
        r.wait = None
        try:
            if r.coro is None:
                r.coro = r.start()
            item = next(r.coro)
        except StopIteration:
            self._end(r, DONE)
            return
        except BaseException as exc:  # noqa: BLE001 - the generation's error goes to its reader
            self._end(r, Failed(exc))
            return
        if isinstance(item, Wait):
            r.wait = item
            if item.future is not None:
                item.future.add_done_callback(lambda _f: self.wake())
            return
        r.put += 1
        try:
            r.sink(item)
        except Exception:  # noqa: BLE001 - the reader is gone (its event loop closed): the generation stops
            r.cancelled = True

    def _drop(self, r: Request, exc: BaseException | None = None) -> None:
        """End ``r`` early: its coroutine closed (its ``finally`` blocks leave the batch)."""
        if r.coro is not None:
            try:
                r.coro.close()
            except Exception as err:  # noqa: BLE001 - reported to the reader, if it still reads
                exc = exc or err
        self._end(r, Failed(exc) if exc is not None else DONE)

    def _end(self, r: Request, last: Any) -> None:
        if r in self.requests:
            self.requests.remove(r)
        r.wait = None
        if not self.requests:  # the batch's rows read back on this thread: a lane left in it may be read off it
            try:
                self.batch.release_all()
            except Exception:  # noqa: BLE001 - what the rows held is lost; the lanes start afresh
                self.batch.lost()
        try:
            r.sink(last)
        except Exception:  # noqa: BLE001 - the reader is gone
            pass
        try:
            if r.on_end is not None:
                r.on_end()
        finally:
            r.finished.set()


_LOOPS: dict[int, ModelLoop] = {}
_LOOPS_GUARD = threading.Lock()


def model_loop(lm: LocalModel) -> ModelLoop:
    """The loop of ``lm`` (one per loaded model, started on first use)."""
    with _LOOPS_GUARD:
        return _LOOPS.setdefault(id(lm), ModelLoop())


def run_on_loop(loop: ModelLoop, start: Callable[[], Coroutine]) -> Any:
    """Run one coroutine as a generation and return its value (blocks the calling thread)."""
    out: list[Any] = []
    q: queue.SimpleQueue = queue.SimpleQueue()
    req = loop.submit_generation(lambda: _returning(start(), out), q.put)
    for _ in req.items(q):
        pass
    return out[0] if out else None


def _returning(coro: Coroutine, out: list) -> Coroutine:
    out.append((yield from coro))


def run_lanes(lm: LocalModel, jobs: Sequence[Callable[[LaneDecoder], Coroutine]], *, max_batch: int = 8,
              want_hidden: bool = False) -> list:
    """Run ``jobs`` up to ``max_batch`` at a time on the model's loop, their single-token steps batched; their
    results in order. Each job is a function of a decoder returning a coroutine (e.g. ``lane_greedy_answer``), its
    return value the job's result. For offline work (calibration, traces). ``max_batch`` 1: one lane for all,
    its KV cache reused across jobs (shared prefixes)."""
    loop = model_loop(lm)
    results: list[Any] = [None] * len(jobs)
    todo = collections.deque(enumerate(jobs))

    def worker(fresh: bool) -> Coroutine:
        lane = None
        try:
            while todo:
                i, job = todo.popleft()
                if lane is None or fresh:
                    if lane is not None:
                        loop.leave(lane)
                    lane = LaneDecoder(lm, loop, want_hidden=want_hidden)
                    loop.join(lane)
                results[i] = yield from job(lane)
        finally:
            if lane is not None:
                loop.leave(lane)

    n = max(1, min(max_batch, len(jobs)))
    sinks = [queue.SimpleQueue() for _ in range(n)]
    reqs = [loop.submit_generation(lambda: worker(n > 1), q.put) for q in sinks]
    for req, q in zip(reqs, sinks):
        for _ in req.items(q):
            pass
    return results


def lane_greedy_answer(dec: LaneDecoder, prompt_ids: Sequence[int], answer: Sequence[int] = (), *,
                       max_tokens: int, stop: str | None = None) -> Coroutine:
    """The local model's greedy answer after ``prompt_ids`` (+ an ``answer`` already begun), as a coroutine: returns
    the list of (token, Step) for each new token (each Step evaluated), until EOS, ``stop`` in the text, or
    ``max_tokens`` answer tokens. On a lane it waits for the loop's rounds; on a plain ``StepDecoder`` it never
    waits, and ``drive`` runs it. For offline work (calibration, traces); serving goes through the engine."""
    lm = dec.lm
    answer = list(answer)
    out: list[tuple[int, Step]] = []
    step = dec.prefill(list(prompt_ids) + answer)
    while len(answer) < max_tokens:
        step = yield from ready(step)
        if isinstance(step, LaneStep):
            step = step.resolved()
        tid = step.token_id
        if tid in lm.eos_token_ids:
            break
        step.wait()  # every field evaluated here, on the loop thread
        step.confidence  # noqa: B018 - and read
        out.append((tid, step))
        answer.append(tid)
        if stop and stop in lm.tokenizer.decode(answer):
            break
        step = dec.step(tid)
    yield from settled(dec)  # the lane's cache holds every step it was given (the next job may reuse it)
    return out


def drive(coro: Coroutine) -> Any:
    """Run a coroutine that never waits (one on a plain ``StepDecoder``) to its return value, on this thread."""
    try:
        wait = coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError(f"drive() got a coroutine that waits ({wait!r}): run it on the loop (run_lanes)")
