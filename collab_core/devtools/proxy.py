"""A real LiteLLM proxy process (``litellm --config ...``) on loopback, for tests and benchmarks.

    with LiteLLMProxy({"model_list": [...], "router_settings": {...}}) as proxy:
        engine = Engine(cloud="litellm_proxy/span", api_base=proxy.api_base, api_key=proxy.master_key, ...)

The config is the proxy's own format; a random master key is added (the proxy refuses to start without one),
and the process is started with ``collab_core.children.spawn_python`` (it stops with us), kept offline
(LiteLLM's local cost map and beta headers). ``start()`` returns once ``/health/readiness`` answers.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..children import Child, spawn_python
from ..errors import ProcessError

OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
               "HF_HUB_OFFLINE": "1", "LITELLM_TELEMETRY": "False", "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiteLLMProxy:
    def __init__(self, config: dict[str, Any], *, port: int | None = None, ready_timeout_s: float = 180.0,
                 workdir: str | os.PathLike | None = None):
        self.config = json.loads(json.dumps(config))  # a copy
        self.port = port or free_port()
        self.ready_timeout_s = ready_timeout_s
        self.master_key = "sk-collab-" + secrets.token_hex(24)
        self.config.setdefault("general_settings", {})["master_key"] = self.master_key
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="collab-proxy-")
        self.dir = Path(workdir or self._tmp.name)
        self.config_path = self.dir / "proxy_config.yaml"
        self.log_path = self.dir / "proxy.log"
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def start(self) -> LiteLLMProxy:
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, **OFFLINE_ENV}
        self.child = spawn_python(["-m", "litellm.proxy.proxy_cli", "--config", str(self.config_path), "--host",
                                   "127.0.0.1", "--port", str(self.port)], name="litellm proxy", log=self.log_path,
                                  env=env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise ProcessError(f"the LiteLLM proxy exited while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health/readiness", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop("it did not become ready")
        raise ProcessError(f"the LiteLLM proxy was not ready after {self.ready_timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, reason: str = "done with it") -> None:
        if self.child is not None:
            self.child.stop(reason)
            self.child = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LiteLLMProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
