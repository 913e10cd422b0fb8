"""No orphans (issue 19): every process we start goes away with its parent.

Each test starts a parent in a subprocess -- ``collab standin`` on the tiny model, or a script using
``StandinCloud`` or ``spawn_python`` -- stops or kills that parent, and checks that no process of its tree is
alive 10 s later (a zombie nobody reaped counts as gone), that the port is free and what the log says.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals are POSIX")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """For the parents we start: this checkout, offline, logs in a temporary cache (keeping our OpenBLAS)."""
    from collab_core.local import blas

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
           "COLLAB_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    if blas.status()["loaded"]:
        env["COLLAB_BLAS"] = blas.status()["loaded"]
    return env


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process we can see."""
    out = {}
    if LINUX:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:  # exited meanwhile
                    continue
                state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the name, in (), may hold spaces
                out[int(entry)] = (int(ppid), state)
        return out
    ps = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "stat="], capture_output=True,
                        text=True)
    for line in ps.stdout.splitlines():
        pid, ppid, state = line.split()[:3]
        out[int(pid)] = (int(ppid), state[0])
    return out


def _tree(root: int) -> set[int]:
    """``root`` and its descendants."""
    procs, tree, grew = _processes(), {root}, True
    while grew:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {pid for pid in pids if pid in procs and procs[pid][1] != "Z"}


def _wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _port_free(port: int) -> bool:
    """Nobody listens on it: a server (with SO_REUSEADDR, as mlx_lm.server's) could bind it now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def leftovers():
    """Pids a test registers: whatever of them is still alive at the end is killed (a failed test leaves
    no orphans behind either)."""
    pids: set[int] = set()
    yield pids
    for pid in _alive(pids):
        os.kill(pid, signal.SIGKILL)


def _start_standin_cli(tiny_dir: Path, env: dict, leftovers: set[int]):
    """``collab standin`` on the tiny model, once ready: (process, port, log, its process tree)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "collab_core.cli", "standin", "--port", str(port),
                             "--model-folder", str(tiny_dir)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = None
    give_up = threading.Timer(120, proc.kill)  # the tiny model is up in seconds; never wait forever
    give_up.start()
    try:
        for line in proc.stdout:  # ends if the command dies
            if line.startswith("stand-in cloud log: "):
                log = Path(line.split(": ", 1)[1].strip())
            if line.startswith("stand-in cloud ready"):
                break
        else:
            pytest.fail(f"collab standin did not come up: {proc.stderr.read()}")
    finally:
        give_up.cancel()
    tree = _tree(proc.pid)
    leftovers |= tree
    assert len(tree) >= 2, "the stand-in server should run as a child of collab standin"
    return proc, port, log, tree


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_signal_to_collab_standin_stops_its_server_cleanly(tiny_dir, env, leftovers, sig):
    proc, port, log, tree = _start_standin_cli(tiny_dir, env, leftovers)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    assert _wait_until(lambda: not _alive(tree)), f"still alive: {_alive(tree)}"
    assert _port_free(port)
    last = log.read_text().rstrip().splitlines()[-1]
    assert last.startswith(f"collab: stand-in stopped (parent received {sig.name})"), last


def test_sigkill_of_collab_standin_takes_its_server_down(tiny_dir, env, leftovers):
    proc, port, log, tree = _start_standin_cli(tiny_dir, env, leftovers)
    proc.kill()
    proc.wait(timeout=30)
    assert _wait_until(lambda: not _alive(tree)), f"still alive: {_alive(tree)}"
    assert _wait_until(lambda: _port_free(port))
    # Linux: the kernel's parent-death signal; elsewhere: the watchdog in the child
    why = f"parent process {proc.pid} died" if LINUX else f"parent process {proc.pid} is gone"
    assert _wait_until(lambda: why in log.read_text()), log.read_text()[-500:]


STANDIN_SCRIPT = """
import sys
from collab_core.devtools.standin import StandinCloud

cloud = StandinCloud(folder=sys.argv[1], progress=False)
if sys.argv[2] == "with":
    with cloud:
        print(cloud.proc.pid, cloud.port, cloud.log_path, flush=True)
else:  # started and never stopped: atexit stops it
    cloud.start()
    print(cloud.proc.pid, cloud.port, cloud.log_path, flush=True)
"""


@pytest.mark.parametrize(("how", "why"), [("with", "the with-block ended"), ("atexit", "parent exiting")],
                         ids=["with", "atexit"])
def test_standin_cloud_stops_when_its_parent_exits_normally(tiny_dir, env, leftovers, how, why):
    done = subprocess.run([sys.executable, "-c", STANDIN_SCRIPT, str(tiny_dir), how], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid, port, log = done.stdout.split()
    leftovers.add(int(pid))
    assert _wait_until(lambda: not _alive({int(pid)}))
    assert _port_free(int(port))
    assert f"collab: stand-in stopped ({why})" in Path(log).read_text().splitlines()[-1]


THREAD_SCRIPT = """
import subprocess, threading, time
from collab_core.children import spawn_python

# started from a thread that then ends: no PR_SET_PDEATHSIG (it would fire now), so only the watchdog is left
started = []
spawn = lambda: started.append(spawn_python(["-m", "collab_core.devtools.fakecloud"], name="fake cloud",
                                            stdout=subprocess.PIPE, text=True))
thread = threading.Thread(target=spawn)
thread.start()
thread.join()
child = started[0]
print(child.pid, child.proc.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def test_watchdog_stops_a_child_whose_parent_was_killed(env, leftovers):
    parent = subprocess.Popen([sys.executable, "-c", THREAD_SCRIPT], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, url = parent.stdout.readline().split()
    child = int(pid)
    leftovers.update({parent.pid, child})
    assert _alive({child}) and url.startswith("http://127.0.0.1:")
    parent.kill()
    parent.wait(timeout=30)
    assert _wait_until(lambda: not _alive({child})), "the fake cloud outlived its parent"
    assert f"parent process {parent.pid} is gone" in parent.stderr.read()
