"""Worker threads for blocking MLX work called from async code.

Shared by the engine's async API and the embedding helpers.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import queue
import threading
import time
from collections.abc import Callable

_MLX_THREADS: dict[int, int] = {}  # ident -> native id of the threads other than main that ran MLX work
_MLX_THREADS_GUARD = threading.Lock()


def mark_mlx_thread() -> None:
    """Record that this thread runs MLX work, so that the interpreter's exit waits for it to be gone.

    Why: MLX frees a thread's ``mx.compile`` cache in a C++ thread-local destructor that takes the GIL. It runs
    after the thread is finished for Python (``join`` has returned), when the OS thread ends. If the interpreter
    is finalizing by then, taking the GIL ends the thread inside that destructor and the process aborts
    ("terminate called without an active exception", exit code 134): measured 2 exits in 8 for a script that
    ran ``Engine.generate`` on a ``ThreadPoolExecutor`` (as LangChain's ``batch`` does) and then returned."""
    t = threading.current_thread()
    if t is threading.main_thread():
        return
    with _MLX_THREADS_GUARD:
        if not _MLX_THREADS:
            atexit.register(wait_for_mlx_threads)
        _MLX_THREADS[t.ident] = t.native_id


def wait_for_mlx_threads(timeout_s: float = 5.0) -> None:
    """Wait (at most ``timeout_s``) until every finished thread that ran MLX work has ended at the OS level, its
    thread-local destructors run (see ``mark_mlx_thread``). An ``atexit`` hook: the GIL is free while it sleeps.
    Where a thread's end cannot be seen (no ``/proc/self/task``), a short fixed wait."""
    with _MLX_THREADS_GUARD:
        alive = {t.ident for t in threading.enumerate()}
        ended = {ident: nid for ident, nid in _MLX_THREADS.items() if ident not in alive}
        for ident in ended:
            del _MLX_THREADS[ident]
    if not ended:
        return
    if not os.path.isdir("/proc/self/task"):
        time.sleep(min(0.05, timeout_s))
        return
    deadline = time.monotonic() + timeout_s
    for nid in ended.values():
        while os.path.exists(f"/proc/self/task/{nid}") and time.monotonic() < deadline:
            time.sleep(0.002)


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
