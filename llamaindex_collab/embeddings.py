"""LlamaIndex embedding: ``CollabEmbedding``, a small local offline embedding from the local MLX model.

It wraps ``collab_core.local.embedding.embed_texts``: mean-pooled, L2-normalised final hidden states of the
local model (by default the bundled SmolLM2-135M-Instruct, so 576 dimensions). Nothing is downloaded and
torch is not needed, which makes it handy for demos, tests and offline examples -- but it is a decoder's
hidden states, not a trained sentence-embedding model. For real retrieval use any LlamaIndex embedding
(``Settings.embed_model = HuggingFaceEmbedding(...)``, ``OpenAIEmbedding()``, ...) together with
``CollabLLM``; the two are independent.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from collab_core.local.embedding import DEFAULT_MAX_TOKENS, aembed_texts, embed_texts
from collab_core.local.loading import LocalModel, load_local_model


class CollabEmbedding(BaseEmbedding):
    """Mean-pooled hidden states of the local MLX model as text embeddings (small, local, offline).

    Example:
        .. code-block:: python

            from llama_index.core import Settings, VectorStoreIndex
            from llamaindex_collab import CollabEmbedding, CollabLLM

            Settings.embed_model = CollabEmbedding()      # the bundled SmolLM2, no download
            Settings.llm = CollabLLM()
            index = VectorStoreIndex.from_documents(docs)

    The model loads on first use (shared with ``CollabLLM`` when both name the same ``local_model``).
    Queries and documents are embedded the same way. Texts longer than ``max_length`` tokens are
    truncated. The async methods run the forward passes in a worker thread.
    """

    local_model: str | None = Field(
        default="smollm2-135m",
        description="Local model: a named model, HF repo id, mlx-lm folder or .gguf file (default: the bundled "
                    "SmolLM2-135M-Instruct).")
    max_length: int = Field(default=DEFAULT_MAX_TOKENS, gt=0, description="Tokens per text (longer: truncated).")

    _lm: LocalModel | None = PrivateAttr(default=None)

    def __init__(self, local_model: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", f"collab-hidden-mean:{local_model or 'default'}")
        super().__init__(local_model=local_model, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "CollabEmbedding"

    def _model(self) -> LocalModel:
        if self._lm is None:
            self._lm = load_local_model(self.local_model)
        return self._lm

    # -- sync --------------------------------------------------------------------------------------------
    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return embed_texts(self._model(), texts, max_tokens=self.max_length)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embeddings([query])[0]

    # -- async: the forward passes run on a worker thread (collab_core.local.embedding.aembed_texts) -------------
    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        # before the first sync call the model is loaded there too, not on the event loop
        model = self._lm if self._lm is not None else self.local_model
        return await aembed_texts(model, texts, max_tokens=self.max_length)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aget_text_embeddings([query]))[0]


__all__ = ["CollabEmbedding"]
