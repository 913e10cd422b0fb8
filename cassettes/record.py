"""Re-record the cassettes.

    python cassettes/record.py              # loopback cassettes (always) + every provider whose key is set

* ``loopback_*``: a real ``mlx_lm.server`` (serving the bundled SmolLM2) is started on 127.0.0.1:8765 and
  the loopback strategy tests run against it with ``COLLAB_RECORD_MODE=all``.
* provider cassettes (``anthropic_prefill``, ``anthropic46_chat_anchor``, ``deepseek_prefix``,
  ``openai_chat_anchor``, ``gemini_chat_anchor``): recorded against the real API when ``ANTHROPIC_API_KEY`` /
  ``DEEPSEEK_API_KEY`` / ``OPENAI_API_KEY`` / ``GEMINI_API_KEY`` is set, into ``<name>.yaml``, which the tests then prefer to
  the ``<name>.documented.yaml`` written from the provider's documented format. Keys are filtered out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 8765
PROVIDERS = {"ANTHROPIC_API_KEY": "anthropic", "DEEPSEEK_API_KEY": "deepseek", "OPENAI_API_KEY": "openai",
             "GEMINI_API_KEY": "gemini"}


def start_server() -> subprocess.Popen:
    sys.path.insert(0, str(ROOT))
    import collab_core  # noqa: F401  (OpenBLAS for the server process too)
    from collab_core.local.loading import load_local_model

    folder = load_local_model(None).path
    (Path.home() / ".cache" / "huggingface" / "hub").mkdir(parents=True, exist_ok=True)  # /v1/models needs it
    code = ("import sys, collab_core; from mlx_lm.server import main; "
            f"sys.argv = ['mlx_lm.server', '--model', {str(folder)!r}, '--port', '{PORT}']; main()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlx_lm.server did not come up")


def pytest(selector: str) -> int:
    env = {**os.environ, "COLLAB_RECORD_MODE": "all"}
    env.pop("CI", None)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/cloud/test_client.py", "-k", selector],
                           cwd=ROOT, env=env)


def main() -> None:
    server = start_server()
    try:
        rc = pytest("loopback")
    finally:
        server.terminate()
    for var, name in PROVIDERS.items():
        if os.environ.get(var):
            rc |= pytest(name)
        else:
            print(f"skipping {name}: {var} is not set (its documented cassette stays in use)")
    sys.exit(rc)


if __name__ == "__main__":
    main()
