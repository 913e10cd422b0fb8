"""OpenBLAS for MLX on a Linux CPU: loaded before mlx.core, same results as the reference BLAS."""

import json
import os
import subprocess
import sys

import pytest

from collab_core.local import blas

SCRIPT = r"""
import json, sys
import collab_core
from collab_core.local import blas
from collab_core.local.loading import load_local_model
import mlx.core as mx
lm = load_local_model(sys.argv[1])
ids = mx.array(lm.tokenizer.encode("The capital of France is Paris."))[None]
print(json.dumps({"blas": blas.status(), "logits": lm.model(ids)[0, -1].tolist()}))
"""


def _run(tiny_dir, setting):
    env = {**os.environ, "COLLAB_BLAS": setting}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dir)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_reference_blas_when_disabled(tiny_dir):
    res = _run(tiny_dir, "off")
    assert res["blas"]["loaded"] is None and "COLLAB_BLAS" in res["blas"]["why"]


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS switch is Linux-only")
def test_openblas_gives_the_same_logits(tiny_dir):
    lib = next((p for p in blas.candidates() if p.exists()), None)
    if lib is None:
        try:
            lib = blas.fetch(progress=False)  # Debian's OpenBLAS into the cache (apt-get download, no root)
        except (RuntimeError, OSError) as exc:
            pytest.skip(f"no OpenBLAS here and none could be fetched ({exc}); nothing to compare")
    fast, ref = _run(tiny_dir, str(lib)), _run(tiny_dir, "off")
    assert fast["blas"]["loaded"] == str(lib)
    diff = max(abs(a - b) for a, b in zip(fast["logits"], ref["logits"]))
    assert diff < 1e-3, diff


@pytest.mark.skipif(sys.platform != "linux", reason="the BLAS switch is Linux-only")
def test_enable_refuses_after_mlx_was_imported(monkeypatch):
    monkeypatch.setitem(blas._STATE, "loaded", None)
    monkeypatch.setenv("COLLAB_BLAS", "auto")
    import mlx.core  # noqa: F401  (already imported by the test session)

    assert blas.enable() is None
    assert "imported before" in blas.status()["why"]
