"""LlamaIndex integration: ``CollabLLM`` (token-level routing, local MLX + cloud) and ``CollabEmbedding``
(a small local offline embedding from the same local model, for demos and tests)."""

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from llamaindex_collab.base import CollabLLM
from llamaindex_collab.embeddings import CollabEmbedding

__all__ = ["CollabEmbedding", "CollabLLM"]
