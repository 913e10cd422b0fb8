"""What the framework adapters share: the engines an adapter instance owns, and what they report.

The LangChain and LlamaIndex classes expose ``EngineSettings``' fields; each instance owns its engines
(``OwnedEngines``: one for its settings, plus a few for per-call ``model=`` overrides, least recently used
first out). Nothing is shared between instances but the loaded local model, so a budget is never shared by
accident. Everything they report about a generation comes from ``usage(stats)`` and
``collab_metadata(stats)``. No routing, scoring or cloud logic lives in the adapters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .engine import Engine
from .settings import EngineSettings
from .stats import GenerationStats


class OwnedEngines:
    """The engines of one adapter instance, keyed by their settings (never by a secret), at most ``size``."""

    def __init__(self, size: int = 4):
        self.size = size
        self._engines: OrderedDict[tuple, Engine] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: EngineSettings) -> Engine:
        """The engine for ``settings``, built on first use. Building validates the cloud settings (unknown
        model string, missing key: ``CloudConfigError``) but does not load the local model."""
        key = settings.key()
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = Engine.from_settings(settings)
                self._engines[key] = engine
                while len(self._engines) > self.size:
                    _, old = self._engines.popitem(last=False)
                    old.close()
            self._engines.move_to_end(key)
            return engine

    def __len__(self) -> int:
        return len(self._engines)


def usage(stats: GenerationStats) -> dict[str, int]:
    """Token usage of the *local* model (prompt and generated tokens)."""
    return {"input_tokens": int(stats.prompt_tokens), "output_tokens": int(stats.total_tokens),
            "total_tokens": int(stats.prompt_tokens + stats.total_tokens)}


_METADATA_KEYS = ("total_tokens", "cloud_tokens", "local_tokens", "routed_share", "cloud_calls", "cloud_failures",
                  "cloud_cache_hits", "cloud_input_tokens", "cloud_output_tokens", "cloud_cached_input_tokens",
                  "cloud_cache_write_tokens", "cost_usd", "cloud_rerouted", "cloud_deployments", "rollbacks",
                  "time_total_s", "time_prefill_s", "time_local_s", "time_cloud_wait_s", "time_cloud_hidden_s",
                  "time_to_first_token_s", "span_wall_s", "cloud_errors", "cloud_disabled_reason")


def collab_metadata(stats: GenerationStats) -> dict[str, Any]:
    """The routing stats reported by both adapters (``response_metadata["collab"]`` / ``raw["collab"]``)."""
    d = stats.as_dict()
    return {k: d[k] for k in _METADATA_KEYS}


def cloud_spans(events) -> list[str]:
    """The text the cloud wrote, one string per run of consecutive cloud tokens (both adapters report it as
    ``collab["cloud_spans"]``: in a tool call, the values the cloud filled in)."""
    spans: list[str] = []
    prev = None
    for ev in events:
        source = getattr(ev, "source", None)
        if source is None:
            continue
        if source == "cloud":
            if prev == "cloud":
                spans[-1] += ev.text
            else:
                spans.append(ev.text)
        prev = source
    return spans
