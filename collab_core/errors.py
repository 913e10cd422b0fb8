"""Every failure the library raises on purpose, in one tree.

::

    CollabError
    ├── ConfigError (also ValueError) -- a bad argument or setting, raised before any work starts
    │   ├── CloudConfigError -- the cloud cannot be used as configured (unknown model string, missing key)
    │   ├── EmptyPromptError -- the prompt (or message list) has no content
    │   ├── ContextOverflowError -- the prompt does not fit the local model's context window
    │   ├── UnsupportedInputError -- input the local model cannot take (an image, audio)
    │   └── RequestError -- an HTTP request to ``collab serve`` that is malformed or asks for what it cannot do
    ├── ModelLoadError -- a local model spec could not be resolved, fetched, verified or converted
    │   └── UnsupportedModelError -- a readable file with an architecture or tensor type we cannot convert
    ├── RouterLoadError -- a router file is missing, malformed, or trained for another local model
    ├── TraceError -- router traces are missing, mixed, or cannot give the label asked for
    ├── CloudError -- one cloud call failed after retries (the engine catches it and uses the local token)
    ├── GrammarError -- constrained decoding failed (bad grammar or tokenizer, a forced structure cut short)
    └── ProcessError -- a helper process we started (the stand-in cloud) failed to start or died

A ``ConfigError`` is also a ``ValueError``, so ``except ValueError`` keeps working for bad arguments.
"""

from __future__ import annotations


class CollabError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(CollabError, ValueError):
    """A bad argument or setting (unknown option, out-of-range value), raised before any work starts."""


class CloudConfigError(ConfigError):
    """The cloud model cannot be used as configured: unknown model string, missing API key, bad option.

    Raised up front, before any local decoding starts.
    """


class EmptyPromptError(ConfigError):
    """The prompt (or the message list) has no content to generate from."""


class ContextOverflowError(ConfigError):
    """The prompt plus ``max_tokens`` does not fit the local model's context window."""


class UnsupportedInputError(ConfigError):
    """Input the local model cannot take: an image, audio, or another non-text content block."""


class ModelLoadError(CollabError):
    """A local model spec could not be resolved, fetched, verified or converted."""


class UnsupportedModelError(ModelLoadError):
    """The model file is readable but uses an architecture or tensor type we cannot convert."""


class RouterLoadError(CollabError):
    """The router file is missing, malformed, or was trained for another local model."""


class TraceError(CollabError):
    """No traces, traces from several local models, or a label the traces cannot give."""


class CloudError(CollabError):
    """One cloud call failed (after retries). The engine catches it, uses the local token and counts it."""

    def __init__(self, message: str, *, attempts: int = 1, retryable: bool = False, kind: str = "CloudError"):
        super().__init__(message)
        self.attempts = attempts
        self.retryable = retryable
        self.kind = kind


class ProcessError(CollabError):
    """A process this library started (the stand-in cloud server) failed to start, or died."""


class RequestError(ConfigError):
    """An HTTP request to ``collab serve`` that is malformed (bad JSON, an unknown field, a wrong type) or asks
    for what the server does not do (``n`` > 1, tools). ``status`` is the HTTP status it is answered with (400,
    413 for an oversized body, 415 for a wrong content type), ``param`` names the field at fault."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


class GrammarError(CollabError):
    """Constrained decoding failed: a grammar that does not compile, a tokenizer it cannot use, or a forced
    structure (tool call, structured output) left incomplete when the token limit was reached."""
