"""Typed errors. Every failure the library raises on purpose is a ``CollabError``."""

from __future__ import annotations


class CollabError(Exception):
    """Base class of every error this library raises on purpose."""


class ModelLoadError(CollabError):
    """A local model spec could not be resolved, fetched, verified or converted."""


class UnsupportedModelError(ModelLoadError):
    """The model file is readable but uses an architecture or tensor type we cannot convert."""


class EmptyPromptError(CollabError, ValueError):
    """The prompt (or the message list) has no content to generate from."""


class ContextOverflowError(CollabError, ValueError):
    """The prompt plus ``max_tokens`` does not fit the local model's context window."""


class CloudConfigError(CollabError):
    """The cloud model cannot be used as configured: unknown model string, missing API key, bad option.

    Raised up front, before any local decoding starts.
    """


class CloudError(CollabError):
    """One cloud call failed (after retries). The engine catches it, uses the local token and counts it."""

    def __init__(self, message: str, *, attempts: int = 1, retryable: bool = False, kind: str = "CloudError"):
        super().__init__(message)
        self.attempts = attempts
        self.retryable = retryable
        self.kind = kind
