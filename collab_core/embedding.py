"""A small, local, offline text embedding from the local MLX model's hidden states.

``embed_texts(lm, texts)`` runs the decoder once per text (no KV cache, no generation) and returns the
mean over positions of its final-norm hidden states, L2-normalised -- one vector of the model's hidden
size (576 for the bundled SmolLM2-135M) per text.

What it is good for: retrieval over a handful of documents in demos and tests, with nothing to download
and no torch. What it is not: a trained sentence-embedding model. Decoder hidden states are not tuned
for similarity, so for real retrieval plug in any proper embedding model your framework supports (for
LlamaIndex, any ``BaseEmbedding`` in place of ``llamaindex_collab.CollabEmbedding``).

Framework-free; the LlamaIndex class ``llamaindex_collab.CollabEmbedding`` is a thin wrapper.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .loading import LocalModel

#: Texts longer than this many tokens are truncated (the head is kept).
DEFAULT_MAX_TOKENS = 512

_LOCK = threading.Lock()  # one forward pass at a time (MLX graphs are built per thread)


def _ids(lm: LocalModel, text: str, max_tokens: int) -> list[int]:
    tok = lm.tokenizer
    ids = list(tok.encode(text))[:max_tokens] if text else []
    if not ids:  # an empty text still needs one position to pool over
        eos = sorted(lm.eos_token_ids) or [0]
        ids = [tok.bos_token_id if tok.bos_token_id is not None else eos[0]]
    return ids


def embedding_dim(lm: LocalModel) -> int:
    """Length of the vectors ``embed_texts`` returns (the model's hidden size)."""
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if lm.config.get(key):
            return int(lm.config[key])
    return len(embed_texts(lm, [" "])[0])


def embed_texts(lm: LocalModel, texts: Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> list[list[float]]:
    """Mean-pooled, L2-normalised final hidden states of ``lm`` for each text (one forward pass each).

    ``lm.model.model(ids[None])`` is mlx-lm's inner transformer: it returns the hidden states after the
    final norm, shape (1, T, hidden). Texts longer than ``max_tokens`` tokens are truncated.
    """
    import mlx.core as mx

    if isinstance(texts, str):
        raise TypeError("embed_texts takes a list of texts, not one string")
    inner = getattr(lm.model, "model", None)
    if inner is None:
        raise TypeError(f"{type(lm.model).__name__} has no inner `.model` returning hidden states")
    out: list[list[float]] = []
    with _LOCK:
        for text in texts:
            ids = mx.array(_ids(lm, text, max_tokens), dtype=mx.uint32)
            hidden = inner(ids[None]).astype(mx.float32)[0]  # (T, H)
            vec = mx.mean(hidden, axis=0)
            vec = vec / mx.maximum(mx.linalg.norm(vec), 1e-12)
            out.append(vec.tolist())
    return out


def embed_text(lm: LocalModel, text: str, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> list[float]:
    """``embed_texts`` for one text."""
    return embed_texts(lm, [text], max_tokens=max_tokens)[0]


__all__ = ["DEFAULT_MAX_TOKENS", "embed_text", "embed_texts", "embedding_dim"]
