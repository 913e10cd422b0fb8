"""A fast BLAS for MLX on a Linux CPU.

The ``mlx[cpu]`` wheel links a reference BLAS: SmolLM2-135M prefill runs ~30x slower than with
OpenBLAS. Loading OpenBLAS with ``RTLD_GLOBAL`` *before* ``mlx.core`` is imported makes the dynamic
linker resolve MLX's BLAS calls to it -- no ``LD_PRELOAD`` and no re-exec needed. ``import collab_core``
does this automatically when an OpenBLAS is found:

* the system's (Debian/Ubuntu ``libopenblas0-pthread``), or
* one fetched into the cache by ``collab blas fetch`` (``apt-get download`` + ``dpkg -x``, no root).

``COLLAB_BLAS=off`` disables it; ``COLLAB_BLAS=/path/to/libopenblas.so.0`` picks a library.
Results are numerically the same to float32 rounding (tested).
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .weights import cache_dir

_STATE: dict[str, str | None] = {"loaded": None, "why": None}
_DEBS = ("libopenblas0-pthread", "libgfortran5")


def _triplet() -> str:
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(platform.machine(), "")


def fetched_root() -> Path:
    return cache_dir() / "openblas"


def candidates() -> list[Path]:
    """OpenBLAS libraries to try, best first."""
    trip = _triplet()
    out = []
    for root in (Path("/"), fetched_root()):
        lib = root / "usr" / "lib" / trip / "openblas-pthread" / "libopenblas.so.0"
        out.append(lib)
    return out


def _gfortran_beside(lib: Path) -> Path | None:
    for p in (lib.parent.parent / "libgfortran.so.5", lib.parent / "libgfortran.so.5"):
        if p.exists():
            return p
    return None


def status() -> dict[str, str | None]:
    return dict(_STATE)


def enable(quiet: bool = True) -> str | None:
    """Load OpenBLAS globally if possible; returns the library path or None (reason in ``status()``)."""
    if _STATE["loaded"]:
        return _STATE["loaded"]
    setting = os.environ.get("COLLAB_BLAS", "auto").strip()
    if setting.lower() in ("off", "0", "false", "no", "reference"):
        _STATE["why"] = "disabled by COLLAB_BLAS"
        return None
    if sys.platform != "linux":
        _STATE["why"] = "not Linux (MLX uses Accelerate/Metal)"
        return None
    if "mlx.core" in sys.modules:
        _STATE["why"] = "mlx.core was imported before collab_core; import collab_core first"
        return None
    libs = [Path(setting)] if setting.lower() != "auto" else candidates()
    for lib in libs:
        if not lib.exists():
            continue
        try:
            gf = _gfortran_beside(lib)
            if gf is not None:
                ctypes.CDLL(str(gf), mode=ctypes.RTLD_GLOBAL)
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            _STATE["why"] = f"could not load {lib}: {exc}"
            continue
        _STATE["loaded"], _STATE["why"] = str(lib), None
        return str(lib)
    _STATE["why"] = _STATE["why"] or "no OpenBLAS found (run `collab blas fetch`)"
    return None


def fetch(progress: bool = True) -> Path:
    """Download Debian's OpenBLAS (pthread) and libgfortran into the cache; returns the library path."""
    if sys.platform != "linux" or not _triplet():
        raise RuntimeError("OpenBLAS fetching is for Linux x86_64/aarch64 only")
    root = fetched_root()
    lib = root / "usr" / "lib" / _triplet() / "openblas-pthread" / "libopenblas.so.0"
    if lib.exists():
        return lib
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise RuntimeError("apt-get/dpkg not found: install OpenBLAS with your package manager instead")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["apt-get", "download", *_DEBS]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get download failed: {proc.stderr.strip()[-500:]}")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root.parent))
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    if progress:
        print(f"collab: OpenBLAS ready at {lib}", file=sys.stderr)
    return lib
