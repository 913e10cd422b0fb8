"""GGUF -> mlx-lm conversion, on tiny GGUFs written at test time."""

import json

import mlx.core as mx
import numpy as np
import pytest
from tiny import write_gguf

from collab_core.errors import ModelLoadError, UnsupportedModelError
from collab_core.local import gguf as conv
from collab_core.local.loading import load_local_model, prepare_gguf


def _logits(lm, text="The capital of France is Paris."):
    ids = mx.array(lm.tokenizer.encode(text))[None]
    return np.array(lm.model(ids))


def test_f32_gguf_round_trips_exactly_with_qk_unpermuted(tiny_dir, tiny_lm, tmp_path):
    path = write_gguf(tiny_dir, tmp_path / "tiny.gguf")
    out = conv.convert(path, tmp_path / "conv", form="dense")
    lm = load_local_model(str(out))
    np.testing.assert_allclose(_logits(lm), _logits(tiny_lm), atol=1e-5)


def test_wrong_unpermute_would_be_caught(tiny_dir, tiny_lm, tmp_path):
    """Guard for the test above: applying the permutation instead of its inverse changes the logits."""
    from tiny import llama_cpp_permute

    w = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)  # 2 heads of dim 16, as in the tiny model
    assert np.array_equal(conv.unpermute_qk(llama_cpp_permute(w, 2), 2), w)
    assert not np.array_equal(llama_cpp_permute(llama_cpp_permute(w, 2), 2), w)


@pytest.mark.parametrize("form", ["dense", "quantized"])
def test_quantized_tensors_match_gguf_dequantization(tiny_dir, tmp_path, form):
    """Q8_0/Q4_0/Q4_1 via mx.load (quantized form) and via the gguf package (dense) give the same weights."""
    import gguf

    qtypes = {"attn_q.weight": "Q8_0", "attn_v.weight": "Q4_0", "ffn_up.weight": "Q4_1"}
    path = write_gguf(tiny_dir, tmp_path / "q.gguf", qtypes)
    out = conv.convert(path, tmp_path / f"conv-{form}", form=form)
    cfg = json.loads((out / "config.json").read_text())
    assert ("quantization" in cfg) == (form == "quantized")
    lm = load_local_model(str(out))  # on a CPU this dequantizes to dense float32
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    expected = gguf.quants.dequantize(t.data, t.tensor_type)
    got = np.array(lm.model.model.layers[0].mlp.up_proj.weight.astype(mx.float32))
    np.testing.assert_allclose(got, expected, atol=2e-3)
    q = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    expected_q = conv.unpermute_qk(gguf.quants.dequantize(q.data, q.tensor_type), 4)
    got_q = np.array(lm.model.model.layers[1].self_attn.q_proj.weight.astype(mx.float32))
    np.testing.assert_allclose(got_q, expected_q, atol=2e-3)


def test_q5_0_file_falls_back_to_gguf_dequantization(tiny_dir, tmp_path):
    """mx.load refuses files holding Q5_0; the converter must still produce the right weights."""
    import gguf

    path = write_gguf(tiny_dir, tmp_path / "q5.gguf", {"ffn_down.weight": "Q5_0", "attn_k.weight": "Q8_0"})
    out = conv.convert(path, tmp_path / "conv", form="quantized")
    lm = load_local_model(str(out))
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    got = np.array(lm.model.model.layers[0].mlp.down_proj.weight.astype(mx.float32))
    np.testing.assert_allclose(got, gguf.quants.dequantize(t.data, t.tensor_type), atol=2e-3)


def test_rebuilt_tokenizer_encodes_like_the_original(tiny_dir, tiny_lm, tmp_path):
    path = write_gguf(tiny_dir, tmp_path / "tiny.gguf")
    lm = load_local_model(str(conv.convert(path, tmp_path / "conv")))
    for text in ["Hello world", "  two  spaces\n\nand lines", "Café déjà 東京 12345 3.14",
                 "<|im_start|>user\nhi<|im_end|>", "emails a@b.com; tabs\tok"]:
        assert lm.tokenizer.encode(text) == tiny_lm.tokenizer.encode(text), text
    assert lm.tokenizer.chat_template == tiny_lm.tokenizer.chat_template
    assert lm.eos_token_ids == tiny_lm.eos_token_ids


def test_prepare_gguf_converts_once(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf(tiny_dir, tmp_path / "tiny.gguf")
    first = prepare_gguf(path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert prepare_gguf(path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(ModelLoadError):
        load_local_model(str(tmp_path / "missing.gguf"))
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    with pytest.raises(UnsupportedModelError):
        conv.convert(bogus, tmp_path / "out")
    with pytest.raises(ModelLoadError):
        load_local_model("./no/such/folder")
    with pytest.raises(UnsupportedModelError):
        conv.model_config({"general.architecture": "mamba"}, has_output=False)
