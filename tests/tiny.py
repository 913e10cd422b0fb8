"""Tiny randomly initialised models, written to a folder at test time (no downloads).

* ``make_tiny_tokenizer`` trains a byte-level BPE (ChatML special tokens, a chat template);
* ``make_tiny_model`` writes an mlx-lm folder (llama architecture, random weights);
* ``write_gguf`` writes the same weights as a llama.cpp-style GGUF (Q/K rows permuted the way
  llama.cpp's converter does, chosen tensors quantized), to test the GGUF conversion against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "What is the capital of France? The answer is Paris.",
    "Numbers like 12345 and 3.14159 appear in text; so do emails like a@b.com.",
    "  Leading spaces, trailing spaces  , tabs\tand\nnew lines.\n\n",
    "Café, naïve, déjà vu -- unicode matters. 東京 is Tokyo.",
] * 20


def make_tiny_tokenizer(vocab_size: int = 384, added: tuple[str, ...] = ()):
    """``added``: more single tokens, as Qwen2.5's ``<tool_call>`` is (an added token that is not special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + list(added),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if added:
        from tokenizers import Tokenizer as T

        spec = json.loads(tok.to_str())
        for t in spec["added_tokens"]:
            t["special"] = t["content"] in SPECIALS
        tok = T.from_str(json.dumps(spec))
    return tok


TINY_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def make_tiny_model(folder: Path, seed: int = 0, added: tuple[str, ...] = (), **overrides) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(added=added)
    config = {**TINY_CONFIG, "vocab_size": tok.get_vocab_size(), **overrides}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Larger random weights than the default init, so the distributions are not near-uniform.
    params = {k: (v * 4 if v.ndim == 2 else v) for k, v in tree_flatten(model.parameters())}
    mx.save_safetensors(str(folder / "model.safetensors"), params)
    (folder / "config.json").write_text(json.dumps(config))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "add_bos_token": False, "chat_template": CHATML,
        "clean_up_tokenization_spaces": False,
    }))
    return folder


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows of llama models."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(folder: Path, path: Path, qtypes: dict[str, str] | None = None) -> Path:
    """Write the tiny mlx-lm model in ``folder`` as a llama GGUF. ``qtypes``: tensor-name suffix -> type."""
    import gguf
    import mlx.core as mx

    config = json.loads((folder / "config.json").read_text())
    weights = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(folder / "model.safetensors")).items()}
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_vocab_size(config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, arr in weights.items():
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, idx, rest = name.split(".", 3)
            mod, suffix = rest.rsplit(".", 1)
            gname = f"blk.{idx}.{names[mod]}.{suffix}"
        if ".attn_q." in gname:
            arr = llama_cpp_permute(arr, config["num_attention_heads"])
        elif ".attn_k." in gname:
            arr = llama_cpp_permute(arr, config["num_key_value_heads"])
        qtype = None
        for suffix, t in (qtypes or {}).items():
            if gname.endswith(suffix) and arr.ndim == 2:
                qtype = gguf.GGMLQuantizationType[t]
        if qtype is not None:
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
