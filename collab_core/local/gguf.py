"""Converting a GGUF file into an mlx-lm model folder (config, safetensors, tokenizer), once.

What this handles:

* architectures ``llama`` (SmolLM, Llama, Mistral-style) and ``qwen2``;
* tensor types Q4_0, Q4_1 and Q8_0, which ``mx.load`` decodes into MLX quantized arrays, and every
  other type (K-quants, F16, BF16, ...) dequantized with the ``gguf`` package -- ``mx.load`` mis-decodes
  Q4_K blocks and refuses files holding Q5_0, so it is never trusted for those;
* llama.cpp's Q/K row permutation on llama GGUFs, undone (qwen2 files are stored unpermuted);
* the tokenizer, rebuilt from the GGUF vocabulary and merges with the pre-tokenizer the file names.

Two output forms: ``dense`` (every weight float32 -- the fast path for MLX on a CPU, where quantized
matmuls with float16 scales are ~40x slower) and ``quantized`` (Q4_0/Q4_1/Q8_0 kept quantized, the rest
float16 -- for Metal/CUDA).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, UnsupportedModelError

#: Bump when the conversion output changes, so cached folders are rebuilt.
CONVERTER_VERSION = 1

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_MX_QUANT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # types mx.load decodes correctly, group size 32

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, idx, part = base.split(".", 2)
        if part not in _LAYER_NAMES:
            raise UnsupportedModelError(f"unknown GGUF tensor {gguf_name!r}")
        return f"model.layers.{idx}.{_LAYER_NAMES[part]}.{suffix}"
    if base not in _TOP_NAMES:
        raise UnsupportedModelError(f"unknown GGUF tensor {gguf_name!r}")
    return f"{_TOP_NAMES[base]}.{suffix}"


def unpermute_qk(w: np.ndarray | Any, n_head: int) -> Any:
    """Undo llama.cpp's ``permute`` of Q/K rows (works on numpy and MLX arrays, weights or biases).

    llama.cpp's converter reorders each head's rows from HF's "rotate half" layout into interleaved
    pairs: ``w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2)``. This is the inverse.
    """
    rows = w.shape[0]
    rest = tuple(w.shape[1:])
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def read_metadata(reader) -> dict[str, Any]:
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            meta[name] = field.contents()
        except Exception:  # pragma: no cover - exotic field types we never use
            continue
    return meta


def model_config(meta: dict[str, Any], has_output: bool) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    n_head = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    vocab = int(get("vocab_size") or len(meta["tokenizer.ggml.tokens"]))
    config = {
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(get("attention.head_count_kv", n_head)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "vocab_size": vocab,
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": not has_output,
    }
    head_dim = get("attention.key_length")
    if head_dim is not None and int(head_dim) != hidden // n_head:
        config["head_dim"] = int(head_dim)
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        factor = float(get("rope.scaling.factor", 1.0))
        if scaling == "linear":
            config["rope_scaling"] = {"type": "linear", "factor": factor}
        elif scaling == "yarn":
            config["rope_scaling"] = {
                "type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": int(get("rope.scaling.original_context_length", 0)),
            }
        else:
            raise UnsupportedModelError(f"rope scaling {scaling!r} is not supported")
    return config


def _tensor_arrays(path: Path, reader, config: dict, form: str) -> tuple[dict, dict]:
    """All weights as MLX arrays under HF names, and the ``quantization`` block for the config."""
    import gguf
    import mlx.core as mx

    arch = config["model_type"]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    keep_quantized = form == "quantized" and any(v in _MX_QUANT_BITS for v in types.values())
    mx_weights = None
    if keep_quantized:
        try:
            mx_weights = mx.load(str(path))
        except Exception:  # e.g. a file holding Q5_0: fall back to dequantizing everything
            mx_weights = None
    float_dtype = mx.float32 if form == "dense" else mx.float16

    out: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        qtype = types[t.name]
        if mx_weights is not None and qtype in _MX_QUANT_BITS:
            base = t.name.rsplit(".", 1)[0]
            parts = {
                "weight": mx_weights[t.name],
                "scales": mx_weights[f"{base}.scales"],
                "biases": mx_weights[f"{base}.biases"],
            }
            hf_base = name.rsplit(".", 1)[0]
            quant[hf_base] = {"group_size": 32, "bits": _MX_QUANT_BITS[qtype]}
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type)
            parts = {name.rsplit(".", 1)[1]: mx.array(np.ascontiguousarray(data, dtype=np.float32))}
        for suffix, arr in parts.items():
            if arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
                heads = config["num_attention_heads"]
                if t.name.split(".")[-2] == "attn_k":
                    heads = config["num_key_value_heads"]
                arr = unpermute_qk(arr, heads)
            if arr.dtype in (mx.float32, mx.float16, mx.bfloat16):
                arr = arr.astype(float_dtype)
            out[f"{name.rsplit('.', 1)[0]}.{suffix}"] = arr
    if quant:
        # Every quantized module listed explicitly; anything else (norms, dequantized K-quants) stays dense.
        quant = {"group_size": 32, "bits": 4, **quant}
    return out, quant


# Pre-tokenizer split patterns, by ``tokenizer.ggml.pre``.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tokenizer(meta: dict[str, Any]):
    """A ``tokenizers.Tokenizer`` equivalent to the original, from the GGUF vocab, merges and pre-type."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UnsupportedModelError(
            f"tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported (byte-level BPE only)"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    byte_level_plain = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    if pre in ("smollm", "starcoder", "refact"):
        # SmolLM/StarCoder: every digit is its own token, then GPT-2's byte-level split.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level_regex]
        )
    elif pre in ("qwen2", "deepseek-r1-qwen"):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level_plain]
        )
    elif pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level_plain]
        )
    elif pre in ("default", "gpt2", "gpt-2"):
        tok.pre_tokenizer = byte_level_regex
    else:
        raise UnsupportedModelError(f"GGUF pre-tokenizer {pre!r} is not supported")
    tok.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type", []))
    special = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4]
    tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key):
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(idx)] if idx is not None else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta['general.architecture']}.context_length", 4096)),
    }
    if meta.get("tokenizer.chat_template"):
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return {k: v for k, v in cfg.items() if v is not None}


def convert(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, form: str = "dense",
            source: dict | None = None) -> Path:
    """Convert ``gguf_path`` into an mlx-lm folder at ``out_dir`` (atomically). Returns ``out_dir``."""
    import gguf
    import mlx.core as mx

    if form not in ("dense", "quantized"):
        raise ConfigError(f"form must be 'dense' or 'quantized', not {form!r}")
    path = Path(gguf_path)
    out = Path(out_dir)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise UnsupportedModelError(f"{path} is not a readable GGUF file: {exc}") from exc
    meta = read_metadata(reader)
    names = {t.name for t in reader.tensors}
    config = model_config(meta, has_output="output.weight" in names)
    tokenizer = build_tokenizer(meta)
    weights, quant = _tensor_arrays(path, reader, config, form)
    if quant:
        config["quantization"] = quant
        config["quantization_config"] = quant

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(meta), indent=2))
        (tmp / "collab_source.json").write_text(json.dumps({
            "gguf": str(path), "form": form, "converter_version": CONVERTER_VERSION,
            "name": meta.get("general.name"), "license": meta.get("general.license"), **(source or {}),
        }, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
