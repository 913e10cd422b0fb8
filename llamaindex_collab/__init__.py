"""LlamaIndex adapter (arrives with the LlamaIndex issue)."""
