"""LangChain integration: ``CollabLLM``, a chat model doing token-level routing (local MLX + cloud)."""

from langchain_collab.chat_models import CollabLLM

__all__ = ["CollabLLM"]
