"""What the framework adapters share: one engine per configuration, and the metadata they report.

The LangChain and LlamaIndex classes hold their parameters and call ``engine_for(...)``; everything
they report about a generation comes from ``usage(stats)`` and ``collab_metadata(stats)``. No routing,
scoring or cloud logic lives in the adapters.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .cloud import CloudConfig
from .engine import Engine, GenerationConfig
from .stats import GenerationStats


@dataclass(frozen=True)
class EngineParams:
    """The constructor parameters both adapters expose (LangChain's and LlamaIndex's names)."""

    local_model: str | None = None
    cloud_model: str | None = None
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    threshold: float | None = None
    budget: float | None = None
    router: Any = None  # a Router object or a spec string
    pipeline: str = "async"
    timeout: float = 10.0
    max_retries: int = 2
    span_tokens: int = 4
    strategy: str = "auto"

    @classmethod
    def from_settings(cls, obj: Any, **overrides: Any) -> EngineParams:
        """Read the fields of the same names off an adapter instance (a ``SecretStr`` key is unwrapped)."""
        import dataclasses

        vals = {}
        for f in dataclasses.fields(cls):
            v = overrides[f.name] if overrides.get(f.name) is not None else getattr(obj, f.name, f.default)
            if f.name == "api_key" and hasattr(v, "get_secret_value"):
                v = v.get_secret_value()
            vals[f.name] = f.default if v is None and f.default is not None else v
        return cls(**vals)

    def key(self) -> tuple:
        router = self.router if isinstance(self.router, (str, type(None))) else id(self.router)
        return (self.local_model, self.cloud_model, self.api_base, self.api_key, self.threshold, self.budget,
                router, self.pipeline, self.timeout, self.max_retries, self.span_tokens, self.strategy)


_ENGINES: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def engine_for(params: EngineParams) -> Engine:
    """One engine per distinct configuration, shared by every adapter instance that uses it.

    Building it validates the cloud settings (unknown model string, missing key: ``CloudConfigError``)
    but does not load the local model; that happens on first use and is shared across engines too.
    """
    key = params.key()
    with _LOCK:
        eng = _ENGINES.get(key)
        if eng is None:
            cloud = None
            if params.cloud_model:
                cloud = CloudConfig(model=params.cloud_model, api_base=params.api_base, api_key=params.api_key,
                                    timeout_s=params.timeout, max_retries=params.max_retries,
                                    span_tokens=params.span_tokens, strategy=params.strategy)
            eng = Engine(params.local_model, cloud=cloud, router=params.router, threshold=params.threshold,
                         budget=params.budget, pipeline=params.pipeline)
            _ENGINES[key] = eng
        return eng


# Role names used by LangChain (message.type) and LlamaIndex (MessageRole) -> the roles chat templates know.
_ROLE_ALIASES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "chatbot": "assistant",
                 "model": "assistant", "system": "system", "developer": "system", "tool": "tool", "function": "tool"}


def chat_role(role: str) -> str:
    """A framework's role name as a chat-template role (unknown roles are treated as the user's)."""
    return _ROLE_ALIASES.get(str(role).lower(), "user")


def generation_options(max_tokens: int | None, temperature: float | None, stop: list[str] | None,
                       **extra: Any) -> dict:
    """Per-call overrides for ``Engine.stream`` from the usual framework parameters."""
    opts: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if stop:
        opts["stop"] = tuple(stop)
    opts.update({k: v for k, v in extra.items() if k in GenerationConfig.__dataclass_fields__})
    return {k: v for k, v in opts.items() if v is not None}


def usage(stats: GenerationStats) -> dict[str, int]:
    """Token usage of the *local* model (prompt and generated tokens)."""
    return {"input_tokens": int(stats.prompt_tokens), "output_tokens": int(stats.total_tokens),
            "total_tokens": int(stats.prompt_tokens + stats.total_tokens)}


def collab_metadata(stats: GenerationStats) -> dict[str, Any]:
    """The routing stats reported by both adapters (``response_metadata["collab"]`` / ``raw["collab"]``)."""
    d = stats.as_dict()
    keys = ("total_tokens", "cloud_tokens", "local_tokens", "routed_share", "cloud_calls", "cloud_failures",
            "cloud_cache_hits", "cloud_input_tokens", "cloud_output_tokens", "cost_usd", "rollbacks",
            "time_total_s", "time_prefill_s", "time_local_s", "time_cloud_wait_s", "time_cloud_hidden_s",
            "time_to_first_token_s", "span_wall_s", "cloud_errors", "cloud_disabled_reason")
    return {k: d[k] for k in keys}
