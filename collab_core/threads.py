"""Parked worker threads for blocking MLX work called from async code (embeddings, the fake cloud's local replies,
the engine's async admission: loading the model).

The engine's decoding needs none: it runs on the local model's loop (``local/loop.py``), a thread that never exits
and parks at interpreter exit. That shape made the old exit workaround (an ``atexit`` wait for every finished
thread that had run MLX work to end at the OS level, ``mark_mlx_thread``) unnecessary: no thread that runs MLX work
ends while the interpreter lives.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable


class ParkedThreads:
    """Runs blocking MLX work on daemon threads that never exit and sit parked (blocked, GIL released) when idle.

    Why not ``asyncio.to_thread``: MLX keeps per-thread state (its ``mx.compile`` cache) whose destructor
    takes the GIL when a thread exits. A thread that exits -- or merely wakes up and wants the GIL back,
    as a worker does right after handing its result to the event loop -- while the interpreter is
    finalizing aborts the process ("terminate called without an active exception"); after
    ``asyncio.run(...)`` at the end of a script that is a coin toss. These threads never exit, and an
    ``atexit`` hook waits until every one of them is parked before finalization starts.
    """

    def __init__(self, name: str, *, exit_timeout_s: float = 30.0):
        self._name = name
        self._exit_timeout_s = exit_timeout_s
        self._cond = threading.Condition()
        self._idle: list[queue.SimpleQueue] = []
        self._busy = 0
        self._closing = False
        atexit.register(self._park_all)

    def submit(self, fn: Callable[[], object]) -> cf.Future:
        """Run ``fn()`` on an idle thread (a new one if none is idle); its result or exception in the Future."""
        fut: cf.Future = cf.Future()
        with self._cond:
            if self._closing:
                raise RuntimeError("the interpreter is shutting down")
            self._busy += 1
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._run, args=(inbox,), name=self._name, daemon=True).start()
        inbox.put((fn, fut))
        return fut

    def _run(self, inbox: queue.SimpleQueue) -> None:
        while True:
            fn, fut = inbox.get()  # parked here between jobs
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
            del fn, fut  # drop the job's references (MLX arrays) now, not at the next wake-up
            with self._cond:
                self._busy -= 1
                self._idle.append(inbox)
                self._cond.notify_all()
            # From here to inbox.get() this thread holds the GIL, so _park_all cannot return before it parks.

    def _park_all(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.wait_for(lambda: self._busy == 0, timeout=self._exit_timeout_s)
