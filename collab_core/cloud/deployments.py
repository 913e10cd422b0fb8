"""When one cloud endpoint is not enough: a LiteLLM Router (in this process) or a LiteLLM proxy (a process).

**A Router** (``litellm.Router``, or a router config file in the format ``litellm --config`` reads:
``model_list``, ``router_settings``, ``litellm_settings``) spreads spans over several deployments of one model
group, falls back to other groups, cools a failing deployment down. ``CloudConfig(deployments=...)`` (or
``Engine(deployments=router)``, ``--deployments router.yaml``) makes it the cloud; ``CloudConfig.model`` names the
model group (default: the first one in its model list). Calls go through the Router's async API on one event
loop thread per client (its sync ``text_completion`` neither retries nor falls back).

**A proxy** (``litellm --config proxy.yaml``) is an OpenAI-compatible endpoint: ``litellm_proxy/<model group>``
with ``api_base`` the proxy's URL and ``api_key`` a key it accepts.

**Who retries.** LiteLLM then owns retries, fallbacks and cooldowns; ours must not multiply them:

* a plain model string: tenacity retries each call (``max_retries``), LiteLLM's and the OpenAI SDK's own
  retries are off;
* a Router or a proxy: **one attempt per span** on our side (``max_retries`` does not apply); the Router (or
  the proxy's router) makes its ``num_retries`` retries and its fallbacks. A span is a failure for us only once
  LiteLLM has given up, and it counts once towards our breaker (three in a row switch the cloud off for the
  rest of the request). The deployment failures LiteLLM absorbed show in ``GenerationStats.cloud_rerouted``
  (its ``x-litellm-attempted-retries`` + ``-fallbacks``), and which deployment served each span in
  ``cloud_deployments``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import CloudConfigError
from .lite import litellm_module

#: ``litellm_settings`` keys a router config may hold that are the Router's own arguments.
_ROUTER_KEYS_IN_LITELLM_SETTINGS = ("num_retries", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks",
                                    "default_fallbacks", "allowed_fails", "cooldown_time", "timeout", "retry_policy",
                                    "allowed_fails_policy", "routing_strategy")


def is_router(obj: Any) -> bool:
    """Whether ``obj`` is a ``litellm.Router`` (checked without importing LiteLLM when it is not loaded)."""
    return type(obj).__name__ == "Router" and type(obj).__module__.startswith("litellm")


def _env_refs(value: Any) -> Any:
    """``os.environ/NAME`` values (the proxy config's convention) read from the environment."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        name = value.split("/", 1)[1]
        if name not in os.environ:
            raise CloudConfigError(f"the router config refers to ${name}, which is not set")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _env_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_env_refs(v) for v in value]
    return value


def load_router(path: str | os.PathLike) -> Any:
    """A ``litellm.Router`` from a config file (YAML or JSON) as ``litellm --config`` reads it: ``model_list``,
    and the router's settings from ``router_settings`` (and the router keys of ``litellm_settings``)."""
    import yaml

    p = Path(path)
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CloudConfigError(f"cannot read the router config {p}: {exc}") from exc
    models = cfg.get("model_list") if isinstance(cfg, dict) else None
    if not models:
        raise CloudConfigError(f"the router config {p} has no model_list")
    settings = dict(cfg.get("router_settings") or {})
    for k, v in (cfg.get("litellm_settings") or {}).items():
        if k in _ROUTER_KEYS_IN_LITELLM_SETTINGS:
            settings.setdefault(k, v)
    litellm = litellm_module()
    try:
        return litellm.Router(model_list=_env_refs(models), **_env_refs(settings))
    except TypeError as exc:
        raise CloudConfigError(f"the router config {p} has a setting the Router does not take: {exc}") from exc


def groups(router: Any) -> list[str]:
    """The router's model groups, in model-list order."""
    seen: list[str] = []
    for d in router.model_list:
        if d["model_name"] not in seen:
            seen.append(d["model_name"])
    return seen


def model_group(router: Any, name: str | None) -> str:
    """``name`` if the router serves it, else the first group when ``name`` is None."""
    names = groups(router)
    if name is None:
        return names[0]
    if name not in names:
        raise CloudConfigError(f"the router has no model group {name!r} (it has {', '.join(names)})")
    return name


def deployment_models(router: Any, group: str) -> list[tuple[str, str | None]]:
    """(LiteLLM model string, api_base) of every deployment that may answer for ``group``: its own, then its
    fallback groups'."""
    names = [group]
    for fb in getattr(router, "fallbacks", None) or []:
        if isinstance(fb, dict) and group in fb:
            names += [n for n in fb[group] if isinstance(n, str)]
    return [(d["litellm_params"]["model"], d["litellm_params"].get("api_base"))
            for n in names for d in router.model_list if d["model_name"] == n]


class RouterCaller:
    """Calls a Router's async API from worker threads: one event loop, on its own daemon thread."""

    def __init__(self, router: Any):
        self.router = router
        # LiteLLM 1.106's aiohttp transport opens (and never closes) a session per call made this way; httpx's
        # own async transport reuses its connections
        litellm_module().disable_aiohttp_transport = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="collab-router-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def __call__(self, kind: str, kw: dict) -> Any:
        fn = self.router.atext_completion if kind == "text_completion" else self.router.acompletion
        future = asyncio.run_coroutine_threadsafe(fn(**kw), self._running_loop())
        return future.result()

    def close(self) -> None:
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None


def served_by(resp: Any) -> tuple[str | None, int]:
    """(the deployment that answered, how many retries and fallbacks LiteLLM made first), from what a Router
    (``_hidden_params``) or a proxy (its ``x-litellm-*`` response headers) says; (None, 0) when neither says."""
    hidden = getattr(resp, "_hidden_params", None) or {}
    headers = hidden.get("additional_headers") or {}

    def header(name: str) -> Any:
        return headers.get(name, headers.get(f"llm_provider-{name}"))

    deployment = header("x-litellm-model-api-base")
    if deployment is None and header("x-litellm-model-group") is not None:  # a Router in this process
        deployment = hidden.get("api_base") or hidden.get("model_id")
    rerouted = 0
    for name in ("x-litellm-attempted-retries", "x-litellm-attempted-fallbacks"):
        try:
            rerouted += int(header(name) or 0)
        except (TypeError, ValueError):
            pass
    return deployment, rerouted


def proxy_cost(resp: Any) -> float | None:
    """The cost a LiteLLM proxy reports for a call (``x-litellm-response-cost``), if it does."""
    headers = (getattr(resp, "_hidden_params", None) or {}).get("additional_headers") or {}
    for name in ("x-litellm-response-cost", "llm_provider-x-litellm-response-cost"):
        if name in headers:
            try:
                return float(headers[name])
            except (TypeError, ValueError):
                return None
    return None
