"""Re-record the cassettes.

    python cassettes/record.py              # loopback cassettes (always) + every provider whose key is set

* ``loopback_*``: a real ``mlx_lm.server`` (serving the bundled SmolLM2) is started on 127.0.0.1:8765 for
  each loopback test in turn, which runs against it with ``COLLAB_RECORD_MODE=all``.
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
TESTS = "tests/cloud/test_client.py"
PROVIDERS = {"ANTHROPIC_API_KEY": "anthropic", "DEEPSEEK_API_KEY": "deepseek", "OPENAI_API_KEY": "openai",
             "GEMINI_API_KEY": "gemini"}


def start_server():
    """``mlx_lm.server`` serving the bundled SmolLM2 on 127.0.0.1:PORT, tied to this process."""
    sys.path.insert(0, str(ROOT))
    import collab_core  # noqa: F401  (OpenBLAS for the server process too)
    from collab_core.children import spawn_python
    from collab_core.local.loading import load_local_model

    folder = load_local_model("smollm2-135m").path
    (Path.home() / ".cache" / "huggingface" / "hub").mkdir(parents=True, exist_ok=True)  # /v1/models needs it
    server = spawn_python(["-m", "collab_core.devtools.standin_server", "--model", str(folder), "--port", str(PORT)],
                          name="recording server", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.stop("did not come up")
    sys.exit("mlx_lm.server did not come up")


def pytest(*selector: str) -> int:
    env = {**os.environ, "COLLAB_RECORD_MODE": "all"}
    env.pop("CI", None)
    return subprocess.call([sys.executable, "-m", "pytest", "-q", *selector], cwd=ROOT, env=env)


def loopback_tests() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "--co", TESTS, "-k", "loopback"], cwd=ROOT,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "::" in line]


def main() -> None:
    rc = 0
    # One fresh server per test: mlx_lm.server's generation thread dies on an exact repeat of a prompt it has
    # cached (see collab_core/devtools/standin.py), and tests repeat prompts.
    for test in loopback_tests():
        server = start_server()
        try:
            rc |= pytest(test)
        finally:
            server.stop("recorded")
    for var, name in PROVIDERS.items():
        if os.environ.get(var):
            rc |= pytest(TESTS, "-k", name)
        else:
            print(f"skipping {name}: {var} is not set (its documented cassette stays in use)")
    sys.exit(rc)


if __name__ == "__main__":
    main()
