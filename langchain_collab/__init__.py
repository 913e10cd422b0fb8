"""LangChain adapter (arrives with the LangChain issue)."""
