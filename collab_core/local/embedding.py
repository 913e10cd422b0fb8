"""A small, local, offline text embedding from the local MLX model's hidden states.

``embed_texts(lm, texts)`` runs the decoder once per text (no KV cache, no generation) and returns the
mean over the text's positions of its final-norm hidden states, L2-normalised -- one vector of the
model's hidden size (576 for the bundled SmolLM2-135M) per text.

The text is preceded by a fixed one-token prefix (a newline) that is not pooled: a decoder's first
position soaks up attention ("attention sink") and carries outsized activations unrelated to content,
and leaving it out of the mean separates texts noticeably better.

What it is good for: retrieval over a handful of documents in demos and tests, with nothing to download
and no torch. What it is not: a trained sentence-embedding model. Decoder hidden states are not tuned
for similarity, so for real retrieval plug in any proper embedding model your framework supports (for
LlamaIndex, any ``BaseEmbedding`` in place of ``llamaindex_collab.CollabEmbedding``).

``aembed_texts`` is the async form: the forward passes run on a worker thread (``collab_core.threads.ParkedThreads``:
see there why not ``asyncio.to_thread``), so the event loop is never blocked.

Framework-free; the LlamaIndex class ``llamaindex_collab.CollabEmbedding`` is a thin wrapper.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from ..errors import ConfigError, UnsupportedModelError
from ..threads import ParkedThreads
from .loading import LocalModel, load_local_model

#: Texts longer than this many tokens are truncated (the head is kept).
DEFAULT_MAX_TOKENS = 512

#: Fed before every text and left out of the mean (it takes the first-position attention sink).
SINK_PREFIX = "\n"

_LOCK = threading.Lock()  # one forward pass at a time


def _ids(lm: LocalModel, text: str, max_tokens: int) -> tuple[list[int], int]:
    """(prefix + text ids, index of the first position to pool)."""
    tok = lm.tokenizer
    prefix = list(tok.encode(SINK_PREFIX))  # with the model's special tokens (a BOS where it uses one)
    body = list(tok.encode(text, add_special_tokens=False))[:max_tokens] if text else []
    if not body:  # an empty text: pool over the prefix itself
        return prefix, 0
    return prefix + body, len(prefix)


def embedding_dim(lm: LocalModel) -> int:
    """Length of the vectors ``embed_texts`` returns (the model's hidden size)."""
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if lm.config.get(key):
            return int(lm.config[key])
    return len(embed_texts(lm, [" "])[0])


def embed_texts(lm: LocalModel, texts: Sequence[str], *, max_tokens: int = DEFAULT_MAX_TOKENS) -> list[list[float]]:
    """Mean-pooled, L2-normalised final hidden states of ``lm`` for each text (one forward pass each).

    ``lm.model.model(ids[None])`` is mlx-lm's inner transformer: it returns the hidden states after the
    final norm, shape (1, T, hidden). Texts longer than ``max_tokens`` tokens are truncated (the head is
    kept). The sink prefix (see the module docstring) is not pooled.
    """
    import mlx.core as mx

    if isinstance(texts, str):
        raise ConfigError("embed_texts takes a list of texts, not one string")
    inner = getattr(lm.model, "model", None)
    if inner is None:
        raise UnsupportedModelError(f"{type(lm.model).__name__} has no inner `.model` returning hidden states")
    out: list[list[float]] = []
    with _LOCK:
        for text in texts:
            ids, start = _ids(lm, text, max_tokens)
            hidden = inner(mx.array(ids, dtype=mx.uint32)[None]).astype(mx.float32)[0]  # (T, H)
            vec = mx.mean(hidden[start:], axis=0)
            vec = vec / mx.maximum(mx.linalg.norm(vec), 1e-12)
            out.append(vec.tolist())
    return out


_THREADS = ParkedThreads("collab-embed")


async def aembed_texts(lm: LocalModel | str | None, texts: Sequence[str], *,
                       max_tokens: int = DEFAULT_MAX_TOKENS) -> list[list[float]]:
    """``embed_texts`` without blocking the event loop (runs on the embedding worker thread).

    ``lm`` may also be a local model spec (``None``: the default), loaded on the worker thread too.
    """
    if isinstance(texts, str):
        raise ConfigError("aembed_texts takes a list of texts, not one string")
    texts = list(texts)

    def job() -> list[list[float]]:
        model = lm if isinstance(lm, LocalModel) else load_local_model(lm)
        return embed_texts(model, texts, max_tokens=max_tokens)

    return await asyncio.wrap_future(_THREADS.submit(job))


__all__ = ["DEFAULT_MAX_TOKENS", "SINK_PREFIX", "ParkedThreads", "aembed_texts", "embed_texts",
           "embedding_dim"]
