"""A script that decoded on worker threads exits cleanly (``collab_core/local/loop.py``: the model's loop thread, the
only one that runs MLX work, never exits and parks at exit; the readers' threads never touch MLX).

MLX frees a thread's compile cache in a C++ thread-local destructor that takes the GIL, after the thread is done
for Python. A script that ran ``Engine.generate`` on a ``ThreadPoolExecutor`` (as LangChain's ``batch`` does)
and returned at once aborted at exit ("terminate called without an active exception", exit code 134) in 5 of 10
runs on the tiny model before the fix. Six runs here: without the fix, all six pass about once in 64.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import concurrent.futures as cf, sys
from collab_core import Engine, load_local_model
eng = Engine(load_local_model(sys.argv[1]), max_batch=2)
with cf.ThreadPoolExecutor(2) as ex:
    futs = [ex.submit(eng.generate, "Hello there", max_tokens=4) for _ in range(2)]
    print(len([f.result().text for f in futs]))
"""


def test_a_script_that_decoded_on_worker_threads_exits_cleanly(tiny_dir, tmp_path):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "COLLAB_CACHE_DIR": str(tmp_path)}
    for _ in range(6):
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dir)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]
