"""The package installs cleanly: ``python -m build`` makes an sdist and a wheel from the tracked tree, ``twine check``
passes on both, the wheel holds the three packages and their data and nothing else, and the wheel installed into
a fresh virtualenv (no editable install, no source tree on the path) runs ``collab run --local-only`` with the
bundled model.

Offline and quick: the build runs without isolation (setuptools from this environment) and the fresh virtualenv
reuses this environment's dependencies through a path file that names its site-packages directory (path lines in
a ``.pth`` file are added to ``sys.path`` as they are; the ``.pth`` files *inside* that directory -- the editable
install's finder among them -- are not run), then gets the wheel with ``pip install --no-deps``.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("collab_core", "langchain_collab", "llamaindex_collab")
NEVER_SHIPPED = ("tests", "benchmarks", "evidence", "cassettes", "docs", "examples", "shared")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """An sdist and a wheel built from a copy of the files git tracks (and untracked ones it does not ignore)."""
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from the unpacked sdist (what `python -m build` does by default)
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deprecat" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr  # the licence-table warning is gone
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_passes_on_both(dist):
    r = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dist["sdist"]), str(dist["wheel"])],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASSED") == 2, r.stdout


def test_the_wheel_holds_the_packages_their_data_and_nothing_else(dist):
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    tops = {n.split("/")[0] for n in names}
    info = next(t for t in tops if t.endswith(".dist-info"))
    assert tops == set(PACKAGES) | {info}
    assert not [n for n in names if set(n.split("/")[:-1]) & set(NEVER_SHIPPED)]
    # every module of the tree is in it, and the package data the runtime reads
    modules = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
    for data in ("collab_core/py.typed", "collab_core/server/static/index.html", "collab_core/server/static/page.js",
                 "collab_core/devtools/demo_questions.jsonl",
                 "collab_core/routers/smollm2-135m-instruct/router.json",
                 "collab_core/routers/qwen2.5-coder-0.5b-instruct/weights.safetensors"):
        assert data in names, data
    meta = email.message_from_bytes(zipfile.ZipFile(dist["wheel"]).read(f"{info}/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0" and meta["Name"] == "collab-decoding"
    assert f"{info}/licenses/LICENSE" in names
    assert "Apache License" in zipfile.ZipFile(dist["wheel"]).read(f"{info}/licenses/LICENSE").decode()
    assert "collab = collab_core.cli:main" in zipfile.ZipFile(dist["wheel"]).read(f"{info}/entry_points.txt").decode()
    assert meta.get_payload().lstrip().startswith("# collab-decoding")  # the README is the long description


def test_the_sdist_is_the_source_and_builds_the_wheel(dist):
    names = [n.split("/", 1)[1] for n in tarfile.open(dist["sdist"]).getnames() if "/" in n]
    assert {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO"} <= set(names)
    assert not [n for n in names if n.split("/")[0] in NEVER_SHIPPED]
    wheel_files = {n for n in zipfile.ZipFile(dist["wheel"]).namelist() if n.split("/")[0] in PACKAGES}
    assert wheel_files <= set(names), sorted(wheel_files - set(names))


@pytest.mark.smollm
def test_the_wheel_installed_in_a_fresh_venv_runs_collab_local_only(dist, tmp_path, smollm):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    fresh_site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies: this environment's site-packages as a plain path (its own .pth files are not run)
    (fresh_site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--no-compile", "-q", str(dist["wheel"])], capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stdout + r.stderr

    cwd = tmp_path / "elsewhere"  # not the source tree: nothing importable from the working directory
    cwd.mkdir()
    env = _clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = subprocess.run(
        [str(py), "-c", "import collab_core, langchain_collab, llamaindex_collab, sys, json; "
                        "print(json.dumps([m.__file__ for m in (collab_core, langchain_collab, llamaindex_collab)]"
                        " + [p for p in sys.path if p]))"],
        cwd=cwd, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    seen = json.loads(where.stdout)
    files, path = seen[:3], seen[3:]
    for f in files:
        assert Path(f).is_relative_to(fresh_site), f
    assert not any(Path(p).resolve() == ROOT for p in path)

    run = subprocess.run([str(venv / "bin" / "collab"), "run", "What is the capital of France?", "--local-only",
                          "--local-model", "smollm2-135m", "--max-tokens", "8", "--json"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["text"].strip()
    assert 0 < out["stats"]["total_tokens"] <= 8 and out["stats"]["cloud_tokens"] == 0
    assert {t["source"] for t in out["tokens"]} == {"local"}
    # the same answer as the source tree's engine gives: the installed package is the same code
    from collab_core import Engine

    assert Engine(smollm).generate("What is the capital of France?", max_tokens=8).text == out["text"]
