"""Settings, declared once.

* ``EngineSettings`` -- what an engine is built from, one tree of four groups, each a dataclass declared here:

  - ``LocalSettings`` (``local``): the local model;
  - ``CloudSettings`` (``cloud``): the cloud's model, endpoint, key, strategy, span, timeout, retries, its
    LiteLLM deployments, the spending cap and redaction;
  - ``RoutingSettings`` (``routing``): the routing policy (``router``) and its ``threshold`` / ``budget``;
  - ``PipelineSettings`` (``engine``): how the engine decodes (``pipeline``, ``max_batch``, ``max_draft``,
    ``branches``, ``pace``).

  Every setting has one name, the same everywhere: ``Engine(...)`` takes it as a keyword argument, the CLI as
  ``--the-name`` (``collab run``, ``collab serve``), both adapters as a field; a test keeps them in step, with
  the same defaults. A new setting is added here first. ``router`` is always the routing policy; a LiteLLM
  ``Router`` (several deployments of the cloud) is ``deployments``.
* ``GenerationConfig`` -- per-request options (``max_tokens``, ``stop``, ``local_only``, ...), with
  ``GenerateOptions``, the same options as typed keyword arguments for ``Engine.stream`` and friends. The CLI's
  generation flags take their defaults from it.

A budget is per engine: a ``BudgetRouter`` holds the routed share over every request its engine serves
(one adapter instance owns one engine, so two instances never share a budget). A threshold or a budget outside
[0, 1] is a ``ConfigError`` wherever it is given (``check_unit``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # pragma: no cover - 3.10
    from typing_extensions import TypedDict

PIPELINES = ("sync", "async")
STRATEGIES = ("completion", "prefill", "prefix", "continue", "anchor", "restate", "echo", "instruct")


def _setting(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


def check_unit(name: str, value: Any) -> None:
    """``ConfigError`` unless ``value`` is None or a number in [0, 1] (a threshold, a budget, a share)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], not {value!r}")


@dataclass(frozen=True)
class LocalSettings:
    """The ``local`` group: the model that decodes."""

    local_model: str | None = _setting(
        None, "local model: qwen2.5-coder-0.5b, an HF repo id, an mlx-lm folder or a .gguf file "
              "(default: qwen2.5-coder-0.5b, with its learned router)")

    def __post_init__(self):
        pass


@dataclass(frozen=True)
class CloudSettings:
    """The ``cloud`` group: the model that writes the routed spans, and how it is called.

    ``api_key`` never appears in a repr, a cache key or a log (``EngineSettings.key()`` holds a digest of it).
    """

    cloud_model: str | None = _setting(
        None, "LiteLLM model string of the cloud, e.g. gpt-4o-mini, anthropic/claude-sonnet-4-5, "
              "hosted_vllm/NAME, text-completion-openai/NAME (none: local only)")
    api_base: str | None = _setting(None, "base URL of the cloud API (e.g. http://127.0.0.1:8080/v1)")
    api_key: str | None = field(default=None, repr=False, metadata={
        "help": "cloud API key (default: the provider's usual variable, e.g. OPENAI_API_KEY)", "secret": True})
    strategy: str = _setting("auto", "how the cloud continues an answer", choices=("auto", *STRATEGIES))
    span_tokens: int = _setting(4, "cloud tokens per routed span")
    spare_tokens: int = _setting(
        1, "token-exact clouds: ask each call for this many tokens beyond the span; the engine keeps them aside and "
           "uses them without a call if the router routes the positions right after the span (a pair for one "
           "call). A text cloud is asked for the span only")
    timeout: float = _setting(10.0, "seconds per cloud call")
    max_retries: int = _setting(2, "retries per cloud call (tenacity; not counting the first try)")
    cloud_vocab: str | None = _setting(
        None, "the cloud's vocabulary fingerprint (LocalModel.vocab_fingerprint), or 'local' when it uses the local "
              "model's tokenizer: spans then come back as token ids and are spliced token for token")
    deployments: Any = _setting(
        None, "a LiteLLM router config file (model_list, router_settings: as `litellm --config` reads it) or a "
              "litellm.Router: several deployments, fallbacks, cooldowns; --cloud-model names its model group "
              "(default: the first). LiteLLM then retries, and --max-retries does not apply")
    max_spend_usd: float | None = _setting(
        None, "stop routing once this engine has spent this many USD on the cloud, over all its requests (beside "
              "the token budget); the answer in progress finishes locally")
    redact: Any = _setting(
        None, "redact what is sent to the cloud: 'default' (emails, phone numbers, API-key-like strings; "
              "placeholders restored in the spans) or a function str -> str")

    def __post_init__(self):
        if self.strategy != "auto" and self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be auto or one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if not isinstance(self.span_tokens, int) or self.span_tokens < 1:
            raise ConfigError(f"span_tokens must be >= 1, not {self.span_tokens!r}")
        if not isinstance(self.spare_tokens, int) or self.spare_tokens < 0:
            raise ConfigError(f"spare_tokens must be >= 0, not {self.spare_tokens!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, not {self.max_retries!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0, not {self.timeout}")
        if self.max_spend_usd is not None and self.max_spend_usd < 0:
            raise ConfigError(f"max_spend_usd must be >= 0, not {self.max_spend_usd}")


@dataclass(frozen=True)
class RoutingSettings:
    """The ``routing`` group: which tokens go to the cloud."""

    router: Any = _setting(None, "routing policy: never | threshold:T | budget:B | learned | learned:PATH, or a "
                                 "Router (learned with --budget B holds B on the learned score)")
    threshold: float | None = _setting(None, "route when the score reaches THRESHOLD, in [0, 1] (default 0.5)")
    budget: float | None = _setting(None, "hold the routed share of tokens at or under BUDGET, in [0, 1] "
                                          "(per engine; 0: never route)")

    def __post_init__(self):
        check_unit("threshold", self.threshold)
        check_unit("budget", self.budget)


@dataclass(frozen=True)
class PipelineSettings:
    """The ``engine`` group: how the engine decodes around the cloud's calls."""

    pipeline: str = _setting("async", "async: draft locally while a cloud call is in flight; sync: wait",
                             choices=PIPELINES)
    max_batch: int = _setting(8, "concurrent generations decoded together, one forward pass per step for all of "
                                 "them; a request beyond it waits (1: one at a time)")
    max_draft: int = _setting(32, "async pipeline: local tokens drafted at most while a cloud call is in flight")
    branches: int = _setting(1, "async pipeline: at a routed position, draft from the local model's BRANCHES best "
                                "candidates at once (one batched forward pass) and keep the one the cloud picks")
    pace: bool = _setting(True, "async pipeline: hold back a draft pass that the span's reply, about to land, would "
                                "likely make useless (only against a cloud whose latency is steady)")

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"pipeline must be one of {PIPELINES}, not {self.pipeline!r}")
        for name in ("max_batch", "branches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, not {v!r}")
        if isinstance(self.max_draft, bool) or not isinstance(self.max_draft, int) or self.max_draft < 0:
            raise ConfigError(f"max_draft must be an integer >= 0, not {self.max_draft!r}")
        if not isinstance(self.pace, bool):
            raise ConfigError(f"pace must be True or False, not {self.pace!r}")


#: The groups of ``EngineSettings``, by name, in the order the CLI shows them.
GROUPS: dict[str, type] = {"local": LocalSettings, "cloud": CloudSettings, "routing": RoutingSettings,
                           "engine": PipelineSettings}


@dataclass(frozen=True)
class EngineSettings(PipelineSettings, RoutingSettings, CloudSettings, LocalSettings):
    """Every engine setting, one tree: the fields of ``GROUPS``' dataclasses, flat, by the names the engine,
    the adapters and the CLI use (``group(name)`` reads one group back as its own dataclass)."""

    def __post_init__(self):
        for cls in GROUPS.values():
            cls.__post_init__(self)

    @classmethod
    def names(cls, group: str | None = None) -> list[str]:
        """The settings' names, in declaration order (of one group, or all)."""
        classes = [GROUPS[group]] if group else GROUPS.values()
        return [f.name for c in classes for f in dataclasses.fields(c)]

    def group(self, name: str) -> Any:
        """One group of these settings, as its own dataclass (``settings.group("cloud").span_tokens``)."""
        cls = GROUPS[name]
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def as_kwargs(self) -> dict[str, Any]:
        """Every setting by name: ``Engine(**settings.as_kwargs())`` is ``Engine.from_settings(settings)``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_object(cls, obj: Any, **overrides: Any) -> EngineSettings:
        """Read the fields of the same names off an adapter instance (a ``SecretStr`` key is unwrapped);
        ``None`` in ``obj`` or ``overrides`` means the default."""
        vals = {}
        for f in dataclasses.fields(cls):
            v = overrides.get(f.name)
            if v is None:
                v = getattr(obj, f.name, None)
            if hasattr(v, "get_secret_value"):
                v = v.get_secret_value()
            if v is not None:
                vals[f.name] = v
        return cls(**vals)

    def key(self) -> tuple:
        """Identifies the engine these settings build: a digest stands in for the key, an object (a router, a
        litellm.Router, a redaction function) is identified by its id."""
        digest = hashlib.sha256(self.api_key.encode()).hexdigest()[:16] if self.api_key else None

        def ident(v: Any) -> Any:
            return v if isinstance(v, (str, int, float, bool, type(None))) else f"object:{id(v)}"

        return tuple((f.name, digest if f.name == "api_key" else ident(getattr(self, f.name)))
                     for f in dataclasses.fields(self))


@dataclass
class GenerationConfig:
    """Per-request generation options (an engine has defaults; each call may override them)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    chat: bool | None = None  # None: use the chat template when the model has one
    system: str | None = None
    local_only: bool = False  # never call the cloud for this request
    max_cloud_calls: int | None = None  # cap per request
    deadline_s: float | None = None  # per request: no cloud waiting past this many seconds from the start
    max_cloud_cost_usd: float | None = None  # per request: no routing once the cloud cost this much (USD)
    # tool calling and structured output (collab_core.tools): OpenAI-style function specs, the choice among them
    # ("auto", "none", "required"/"any", or a tool's name), and a JSON schema the answer must follow ({} or
    # {"type": "object"}: any JSON object). Enforced by a grammar while decoding.
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | None = None
    json_schema: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.max_tokens is None or int(self.max_tokens) < 0:
            raise ConfigError(f"max_tokens must be >= 0, not {self.max_tokens!r}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, not {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if self.max_cloud_calls is not None and self.max_cloud_calls < 0:
            raise ConfigError(f"max_cloud_calls must be >= 0, not {self.max_cloud_calls!r}")
        if self.max_cloud_cost_usd is not None and self.max_cloud_cost_usd < 0:
            raise ConfigError(f"max_cloud_cost_usd must be >= 0, not {self.max_cloud_cost_usd!r}")
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if self.json_schema is not None and self.tools and self.tool_choice != "none":
            raise ConfigError("a request has either tools or a json_schema, not both")

    def replace(self, **overrides: Any) -> GenerationConfig:
        """A copy with ``overrides`` (``None`` keeps the current value); unknown names raise ``ConfigError``."""
        unknown = set(overrides) - set(self.__dict__)
        if unknown:
            raise ConfigError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        vals = {**self.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        return GenerationConfig(**vals)


class GenerateOptions(TypedDict, total=False):
    """``GenerationConfig``'s fields as keyword arguments of ``Engine.stream/generate/astream/agenerate``."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: Sequence[str]
    chat: bool
    system: str
    local_only: bool
    max_cloud_calls: int
    deadline_s: float
    max_cloud_cost_usd: float
    tools: Sequence[Mapping[str, Any]]
    tool_choice: str
    json_schema: Mapping[str, Any]


def generation_options(max_tokens: int | None, temperature: float | None, stop: Sequence[str] | None,
                       **extra: Any) -> dict[str, Any]:
    """Per-call options for ``Engine.stream`` from a framework's usual parameters (others are dropped)."""
    opts: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if stop:
        opts["stop"] = tuple(stop)
    opts.update({k: v for k, v in extra.items() if k in GenerationConfig.__dataclass_fields__})
    return {k: v for k, v in opts.items() if v is not None}
