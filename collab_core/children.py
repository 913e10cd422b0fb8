"""Child processes that cannot outlive this one.

Every process the library starts (the stand-in cloud's ``mlx_lm.server``, a benchmark's fake cloud) is a
Python process started here, with the arguments you would give ``python``::

    child = spawn_python(["-m", "mlx_lm", "server", "--port", "8080"], name="stand-in", log=path)
    ...
    child.stop("done with it")    # TERM to its process group, a grace period, then KILL

Four ties, each covering what the ones before it cannot:

1. **Its own process group** (``start_new_session=True``). ``stop()`` signals the whole group, so whatever
   the child started goes too; a Ctrl-C in the terminal reaches only us, and we stop the child.
2. **Cleanup in this process.** ``atexit`` stops every live child at a normal exit. Signals are the entry
   point's business, not the library's: ``handle_signals()`` (used by the ``collab`` command and the
   benchmarks) turns SIGTERM and SIGINT into an ``Interrupted`` exception, so ``with`` blocks unwind and stop
   their children, and the command exits with 128 + the signal number (143, 130).
3. **``PR_SET_PDEATHSIG`` on Linux.** The kernel signals the child when we die, even by SIGKILL. The
   signal is SIGHUP, so that the child can tell our death from a stop and say so before it stops its group.
   It fires when the *thread* that started the child exits, so it is set only for children started from
   the main thread (whose end is the process's end); children started from other threads rely on 4. The
   child sets it itself as it starts, rather than a ``preexec_fn`` (not safe in a process with threads).
4. **A watchdog in the child** (portable): a daemon thread polls ``os.getppid()`` and, once the parent is
   gone, sends SIGTERM to the child's process group (SIGKILL 5 s later).

When the parent is gone, the child's output says so before it stops. The child runs ``python -m
collab_core.children --parent PID -- ARGS...``, which imports ``collab_core`` before anything else (so it
gets OpenBLAS, as our own process does).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from .errors import ConfigError, ProcessError

WATCHDOG_POLL_S = 0.5
_live: set[Child] = set()
_lock = threading.Lock()
_received: str | None = None  # "parent received SIGTERM", once handle_signals() saw a signal
_atexit_registered = False


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived while ``handle_signals()`` was active.

    A ``KeyboardInterrupt``, so code that already cleans up on Ctrl-C does the same on SIGTERM.
    """

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
        super().__init__(f"parent received {signal.Signals(signum).name}")


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """For an entry point (never a library import): SIGTERM and SIGINT raise ``Interrupted`` in the main
    thread, once; later ones are ignored while the first unwinds. The previous handlers come back on exit.
    A no-op outside the main thread, where Python cannot install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def on_signal(signum, frame):
        nonlocal raised
        global _received
        if raised:
            return
        raised = True
        _received = f"parent received {signal.Signals(signum).name}"
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_main(main: Callable[[], object]) -> None:
    """A script's entry point: ``main()`` under ``handle_signals()``. On SIGTERM or SIGINT its ``with``
    blocks and ``finally`` clauses stop what it started, then the process exits with 128 + the signal."""
    with handle_signals():
        try:
            main()
        except Interrupted as exc:
            sys.exit(exc.exit_code)


class Child:
    """A child process started by ``spawn_python``; ``proc`` is its ``subprocess.Popen``."""

    def __init__(self, proc: subprocess.Popen, name: str, log: IO[bytes] | None):
        self.proc = proc
        self.name = name
        self.pid = proc.pid  # also its process group id
        self._log = log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, reason: str | None = None, timeout_s: float = 10.0) -> int:
        """Stop the child's process group: SIGTERM, up to ``timeout_s`` to exit, then SIGKILL. Closes the log
        after a last line saying that it stopped and why. Returns the exit code; a second stop is harmless."""
        reason = reason or _received or "its parent stopped it"
        if self.proc.returncode is None:  # not reaped yet, so the group id is still ours to signal
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
            self._note(f"{self.name} stopped ({reason}); exit code {self.proc.returncode}")
        elif self._log is not None:
            self._note(f"{self.name} had exited by itself (exit code {self.proc.returncode}); {reason}")
        with _lock:
            _live.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def _note(self, line: str) -> None:
        if self._log is not None:
            self._log.write(f"collab: {line}\n".encode())
            self._log.flush()

    def __repr__(self) -> str:
        return f"<Child {self.name} pid={self.pid} {'running' if self.alive() else 'exited'}>"


def spawn_python(args: Sequence[str], *, name: str, log: str | Path | None = None,
                 env: dict[str, str] | None = None, **popen_kw) -> Child:
    """Start ``python ARGS`` (``["-m", module, ...]`` or ``["-c", code, ...]``) tied to this process.

    ``log``: a file that gets the child's stdout and stderr (appended), a first line saying what started and
    a last one saying why it stopped. Without it, ``popen_kw`` (``stdout=subprocess.PIPE``, ``text=True``,
    ...) go to ``subprocess.Popen``.
    """
    if not args or args[0] not in ("-m", "-c") or len(args) < 2:
        raise ConfigError(f"args must start with '-m MODULE' or '-c CODE', not {list(args)[:2]}")
    tie = ["--parent", str(os.getpid())]
    if threading.current_thread() is not threading.main_thread():
        tie.append("--no-pdeathsig")
    cmd = [sys.executable, "-m", "collab_core.children", *tie, "--", *args]
    log_file = None
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log, "ab")  # noqa: SIM115 - closed by Child.stop()
        popen_kw.update(stdout=log_file, stderr=subprocess.STDOUT)
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, **popen_kw)
    except OSError as exc:
        if log_file is not None:
            log_file.close()
        raise ProcessError(f"could not start {name}: {exc}") from exc
    child = Child(proc, name, log_file)
    with _lock:
        _live.add(child)
        _register_atexit()
    child._note(f"{name} started at {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {proc.pid}: {' '.join(args)}")
    return child


def live_children() -> list[Child]:
    with _lock:
        return list(_live)


def stop_all(reason: str | None = None) -> None:
    """Stop every child still running (registered with ``atexit`` once the first child starts)."""
    for child in live_children():
        child.stop(reason or _received or "parent exiting")


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(stop_all)
        _atexit_registered = True


# -- the child's side ------------------------------------------------------------------------------------
def _tie_to_parent(parent: int, pdeathsig: bool) -> None:
    """In the child, before it runs anything else: die with ``parent`` (see the module docstring)."""

    def signal_own(sig: int) -> None:  # our process group (which we lead), or only us when started by hand
        if os.getpgrp() == os.getpid():
            os.killpg(0, sig)
        else:
            os.kill(os.getpid(), sig)

    said = threading.Event()

    def say(why: str) -> None:  # once: the parent-death signal and the watchdog may both notice
        if not said.is_set():
            said.set()
            print(f"collab: {why}; stopping", file=sys.stderr, flush=True)

    def on_parent_death(signum, frame):
        say(f"parent process {parent} died")
        signal_own(signal.SIGTERM)

    def watchdog():
        while os.getppid() == parent:
            time.sleep(WATCHDOG_POLL_S)
        say(f"parent process {parent} is gone")
        signal_own(signal.SIGTERM)
        time.sleep(5)
        signal_own(signal.SIGKILL)  # a child that handles SIGTERM and did not exit

    if pdeathsig and sys.platform.startswith("linux"):
        import ctypes

        # SIGHUP rather than SIGTERM, so that the log can tell the parent's death from a stop()
        signal.signal(signal.SIGHUP, on_parent_death)
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    # started after PDEATHSIG is set: its first check catches a parent that died before that
    threading.Thread(target=watchdog, name="collab-parent-watchdog", daemon=True).start()


def _child_main(argv: list[str]) -> None:
    """``python -m collab_core.children --parent PID [--no-pdeathsig] -- (-m MODULE | -c CODE) ARGS...``"""
    sep = argv.index("--")
    opts, (kind, target, *rest) = argv[:sep], argv[sep + 1:]
    _tie_to_parent(int(opts[opts.index("--parent") + 1]), "--no-pdeathsig" not in opts)
    if kind == "-m":
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    _child_main(sys.argv[1:])
