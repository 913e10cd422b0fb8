"""``collab serve`` as a command, and the page's address printed by ``collab demo --serve``."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from rich.console import Console

from collab_core import Engine
from collab_core.cli import build_parser
from collab_core.devtools.demo import serve_page
from collab_core.settings import EngineSettings

ROOT = Path(__file__).resolve().parents[2]


def test_serve_takes_every_engine_flag_and_its_own():
    args = build_parser().parse_args(["serve", "--budget", "0.1", "--port", "0", "--host", "::1"])
    assert all(hasattr(args, f.name) for f in dataclasses.fields(EngineSettings))
    assert (args.budget, args.port, args.host, args.max_tokens) == (0.1, 0, "::1", 256)
    demo = build_parser().parse_args(["demo", "--serve", "--port", "9001"])
    assert demo.serve and demo.port == 9001 and not build_parser().parse_args(["demo"]).serve


def test_collab_serve_prints_the_page_and_stops_on_sigterm(tiny_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "collab_core.cli", "serve", "--local-model", str(tiny_dir),
                             "--port", "0", "--max-tokens", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("page: http://127.0.0.1:"), banner + proc.stderr.read()
        url = banner.split()[1].rstrip("/")
        assert "<title>collab-decoding</title>" in httpx.get(url + "/", timeout=30).text
        got = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]},
                         timeout=60).json()
        assert got["usage"]["completion_tokens"] == 5  # the server's --max-tokens
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 143


def test_demo_serve_prints_the_address_of_the_page_it_serves(tiny_lm):
    buf, stop = io.StringIO(), threading.Event()
    thread = threading.Thread(target=serve_page, args=(Console(file=buf, width=200), Engine(tiny_lm)),
                              kwargs={"port": 0, "until": stop})
    thread.start()
    try:
        for _ in range(2000):
            if "page: " in buf.getvalue() or not thread.is_alive():
                break
            stop.wait(0.01)
        line = buf.getvalue().splitlines()[0]
        assert line.startswith("page: http://127.0.0.1:") and line.endswith("/v1)")
        page = httpx.get(line.split()[1], timeout=30)
        assert page.status_code == 200 and 'id="routed"' in page.text and 'id="local"' in page.text
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
