"""The cloud client: one continuation span from any LiteLLM model string, Router or proxy.

``CloudConfig`` says where and how the cloud is called; ``CloudClient`` makes the call. How the request is
built and the reply read is the configured strategy's (a ``Strategy`` from the registry in ``strategies``:
``completion`` for text-completion endpoints, ``prefill``/``prefix``/``continue`` for chat models that continue
an assistant turn in place, and the chat-only protocols -- ``restate`` by default -- for the rest); what
``strategy="auto"`` picks per provider is ``providers.choose_strategy``.

Retries are tenacity's (exponential backoff with jitter, retryable errors only); LiteLLM's and the
OpenAI SDK's own retries are switched off so they do not multiply. With a LiteLLM Router or proxy as the cloud,
LiteLLM retries, falls back and cools deployments down, and we make one attempt per span (``deployments``).

What is sent is shaped for the providers' prompt caches (``prompt_cache``): the stable prefix (the conversation)
always comes first; for Anthropic it carries a ``cache_control`` marker. Cached input tokens come back in
``CloudSpan.cached_input_tokens`` and the cost is LiteLLM's, with cache pricing. Every text sent goes through
the redactor first (``redact``), and placeholders in a span are restored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CloudConfigError, CloudError
from ..settings import EngineSettings
from .deployments import (
    RouterCaller,
    deployment_models,
    is_router,
    load_router,
    model_group,
    proxy_cost,
    served_by,
)
from .lite import litellm_module
from .prompt_cache import cache_usage, mark_stable_prefix
from .protocols import CHAT_PROTOCOL
from .providers import (
    CACHE_MARKED_PROVIDERS,
    LOOPBACK,
    api_key_env_var,
    choose_strategy,
    is_retryable,
    provider_of,
)
from .redact import make_redactor, redact_messages
from .strategies import CloudSpan, get_strategy, strategy_names, token_ids_of
from .strategy import TEXT_CALL, SpanRequest, Strategy

# the names this module held before the strategies, providers and prompt-cache helpers had their own modules
__all__ = ["CHAT_PROTOCOL", "CloudClient", "CloudConfig", "CloudSpan", "SpanRequest", "Strategy", "api_key_env_var",
           "cache_usage", "choose_strategy", "is_retryable", "mark_stable_prefix", "span_key", "token_ids_of"]

_litellm = litellm_module
_DEFAULT = {f.name: f.default for f in dataclasses.fields(EngineSettings)}


@dataclass
class CloudConfig:
    """Where and how the cloud model is called (defaults: ``EngineSettings``').

    ``strategy``: ``"auto"`` or the name of a registered strategy (``strategies``). ``deployments``: a
    ``litellm.Router`` or the path of a router config file; ``model`` then names its model group (None: the
    first). ``redact``: ``"default"``, a function ``str -> str`` or a redactor (``cloud.redact``).
    """

    model: str | None
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    strategy: str = _DEFAULT["strategy"]
    span_tokens: int = _DEFAULT["span_tokens"]  # cloud tokens per call (cut back to a word boundary)
    spare_tokens: int = _DEFAULT["spare_tokens"]  # token-exact only: asked for beyond the span, kept aside
    timeout_s: float = _DEFAULT["timeout"]  # per call
    max_retries: int = _DEFAULT["max_retries"]  # tenacity retries per call (not counting the first try)
    temperature: float = 0.0
    extra: dict = field(default_factory=dict)  # passed through to litellm (e.g. extra_headers)
    vocab: str | None = None  # the cloud's vocabulary fingerprint, or "local": it is the local model's
    deployments: Any = field(default=None, repr=False)  # a litellm.Router or a router config file
    redact: Any = None  # None, "default", a function str -> str or a redactor
    prompt_cache: bool = True  # cache_control markers on the stable prefix (Anthropic)

    def __post_init__(self):
        if not self.model and self.deployments is None:
            raise CloudConfigError("a cloud needs a model string or deployments (a litellm.Router)")
        if self.strategy != "auto" and self.strategy not in strategy_names():
            raise CloudConfigError(f"unknown strategy {self.strategy!r}; one of auto, {', '.join(strategy_names())}")
        if self.span_tokens < 1:
            raise CloudConfigError("span_tokens must be >= 1")
        if self.spare_tokens < 0:
            raise CloudConfigError("spare_tokens must be >= 0")


def span_key(*parts) -> str:
    """A stable digest of everything that shapes a cloud span (the span cache's key)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class CloudClient:
    """Calls the cloud model for a continuation span (sync; callers run it in a worker thread)."""

    def __init__(self, config: CloudConfig):
        self.config = config
        self.deployments = None  # the litellm.Router, when the cloud is one
        self._router_call: RouterCaller | None = None
        if config.deployments is not None:
            d = config.deployments
            self.deployments = d if is_router(d) else load_router(d)
            self._router_call = RouterCaller(self.deployments)
        self.model = model_group(self.deployments, config.model) if self.deployments is not None else config.model
        self.redactor = make_redactor(config.redact)
        self.strategy = self._auto_strategy() if config.strategy == "auto" else config.strategy  # sets continuation
        self.token_exact = False  # set by bind(): spans come back as the local model's token ids
        # LiteLLM retries (and falls back) itself behind a Router or a proxy: one attempt per span on our side
        self.litellm_retries = self.deployments is not None or provider_of(config.model or "") == "litellm_proxy"
        self.cache_markers = config.prompt_cache and self.continuation.chat and all(
            provider_of(m, b) in CACHE_MARKED_PROVIDERS for m, b in self._deployments())

    @property
    def strategy(self) -> str:
        """The name of the strategy in use (``continuation``); setting a name sets the strategy."""
        return self.continuation.name

    @strategy.setter
    def strategy(self, name: str) -> None:
        self.continuation: Strategy = get_strategy(name)

    def _deployments(self) -> list[tuple[str, str | None]]:
        """(model string, api_base) of what may answer: the Router's deployments, or the one model."""
        if self.deployments is not None:
            return deployment_models(self.deployments, self.model)
        return [(self.config.model, self.config.api_base)]

    def _auto_strategy(self) -> str:
        """One strategy every deployment takes (several that differ: the chat protocol, which every chat
        endpoint takes; set ``strategy`` when that is not what you want)."""
        found = {choose_strategy(m, b) for m, b in self._deployments()}
        return found.pop() if len(found) == 1 else CHAT_PROTOCOL

    def close(self) -> None:
        if self._router_call is not None:
            self._router_call.close()
        client = self.__dict__.pop("_text_client", None)  # a later call makes a new one
        if client is not None:
            client.close()

    @functools.cached_property
    def _text_client(self):
        """One OpenAI SDK client for every text completion of this cloud (``text-completion-openai/...`` with an
        ``api_base``), handed to LiteLLM as ``client=``: otherwise LiteLLM builds a client per call, and with it an
        SSL context (the CA bundle read again: 17 of the 29 ms of Python a call cost, on the GIL the local model's
        drafting needs) and a new connection. None where LiteLLM's own handling is kept (other providers, a
        Router, a ``client`` in ``extra``, no key to give it)."""
        cfg = self.config
        if (self.deployments is not None or not cfg.api_base or "client" in cfg.extra
                or provider_of(cfg.model or "") != "text-completion-openai"):
            return None
        key = self._api_key() or os.environ.get("OPENAI_API_KEY")  # where LiteLLM would look for it
        if not key:
            return None
        import openai

        return openai.OpenAI(api_key=key, base_url=cfg.api_base, max_retries=0, timeout=cfg.timeout_s)

    def bind(self, local_vocab: str) -> bool:
        """Use the token-exact path when the cloud's vocabulary is the local model's (``config.vocab`` is the
        same fingerprint, or ``"local"``) and spans are text completions; returns whether it does."""
        vocab = self.config.vocab
        self.token_exact = self.continuation.token_exact and vocab is not None and vocab in ("local", local_vocab)
        return self.token_exact

    # -- validation, up front --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``CloudConfigError`` for an unknown model string or a missing key, before any work."""
        litellm = _litellm()
        cfg = self.config
        for model, base in self._deployments():
            choose_strategy(model, base)  # raises on an unknown provider
        if self.deployments is not None:  # the deployments carry their own keys
            return
        if cfg.api_key or (cfg.api_base and LOOPBACK.match(cfg.api_base)):
            return
        env = litellm.validate_environment(model=cfg.model, api_base=cfg.api_base)
        missing = env.get("missing_keys") or []
        if missing:
            raise CloudConfigError(
                f"cloud model {cfg.model!r} needs an API key: set {' or '.join(missing)} or pass api_key"
            )

    def _api_key(self) -> str | None:
        cfg = self.config
        if cfg.api_key:
            return cfg.api_key
        if cfg.api_base and LOOPBACK.match(cfg.api_base):
            return os.environ.get("OPENAI_API_KEY") or "sk-loopback-no-key"  # the SDK insists on one
        return None

    # -- request shaping -------------------------------------------------------------------------------
    @property
    def asked_tokens(self) -> int:
        """Tokens each call asks for: the span, and the spare tokens where spans come back as token ids (a text
        span cannot be cut at the cloud's token boundaries, so a text cloud is asked for the span only)."""
        cc = self.config
        return cc.span_tokens + (cc.spare_tokens if self.token_exact else 0)

    def cache_key(self, req: SpanRequest) -> str:
        """The span cache's key for ``req``: everything that shapes the cloud's answer, nothing else."""
        cc = self.config
        context, answer, hint = self.continuation.cache_parts(req)
        return span_key(self.model, cc.api_base, self.strategy, self.asked_tokens, cc.temperature, self.token_exact,
                        context, answer, hint)

    def redacted(self, req: SpanRequest) -> SpanRequest:
        """``req`` as the cloud may read it: every text through the redactor (``req`` itself without one)."""
        r = self.redactor
        if r is None:
            return req
        return dataclasses.replace(req, messages=redact_messages(r, req.messages), prompt_text=r.redact(req.prompt_text),
                                   partial=r.redact(req.partial), prefix=r.redact(req.prefix))

    def build(self, req: SpanRequest) -> tuple[str, dict]:
        """(call kind, keyword arguments for litellm) -- the stable prefix always comes first; every text has
        been through the redactor."""
        cfg = self.config
        req = self.redacted(req)
        kw: dict[str, Any] = {"model": self.model, "max_tokens": self.asked_tokens, "temperature": cfg.temperature,
                              "timeout": cfg.timeout_s}
        if self.deployments is None:  # a Router's deployments carry their endpoints, keys and retry settings
            kw.update(num_retries=0, max_retries=0)
            if cfg.api_base:
                kw["api_base"] = cfg.api_base
            key = self._api_key()
            if key:
                kw["api_key"] = key
        kw.update(cfg.extra)
        kw = self.continuation.shape(req, kw, span_tokens=cfg.span_tokens, token_exact=self.token_exact)
        if self.cache_markers and "messages" in kw:
            kw["messages"] = mark_stable_prefix(kw["messages"], req.messages)
        return self.continuation.call, kw

    def parse(self, resp: Any, req: SpanRequest) -> tuple[str, str | None, list[int] | None]:
        """(the span's text, the finish reason, its token ids when the token-exact path gave them); redaction
        placeholders in the text are restored (and token ids then dropped: the text is what counts)."""
        text, finish, ids = self._parse(resp, self.redacted(req))
        if self.redactor is not None:
            restored = self.redactor.restore(text)
            if restored != text:
                text, ids = restored, None
        return text, finish, ids

    def _parse(self, resp: Any, req: SpanRequest) -> tuple[str, str | None, list[int] | None]:
        choice = resp.choices[0]
        strategy = self.continuation
        text = strategy.reply_text(choice)
        if text is None or not isinstance(text, str):
            raise CloudError("the cloud response has no text")
        finish = choice.finish_reason
        ids = strategy.token_ids(choice) if self.token_exact else None
        if ids is not None:
            return text, finish, ids
        return strategy.read(text, finish, req, span_tokens=self.config.span_tokens), finish, None

    # -- the call --------------------------------------------------------------------------------------
    def prewarm(self, req: SpanRequest) -> bool:
        """Have the cloud read the prompt before anything is routed: one call for one output token, the answer
        not begun, no retries. A server that caches prompt prefixes (vLLM, SGLang, ``mlx_lm.server``) then
        answers the first span without a cold prefill. Returns whether the call went through; a failure is
        only a lost head start."""
        kind, kw = self.build(dataclasses.replace(req, partial=""))
        kw["max_tokens"] = 1
        try:
            self._caller(kind)(**kw)
        except Exception:  # noqa: BLE001 - a head start, never a failure of the answer
            return False
        return True

    def continue_span(self, req: SpanRequest, deadline: float | None = None) -> CloudSpan:
        """One span, with retries; raises ``CloudError`` (never a provider exception) on failure."""
        from tenacity import (
            RetryError,
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            stop_before_delay,
            wait_random_exponential,
        )

        kind, kw = self.build(req)
        call = self._caller(kind)
        stop = stop_after_attempt(1 if self.litellm_retries else self.config.max_retries + 1)
        if deadline is not None:
            stop = stop | stop_before_delay(max(0.0, deadline - time.perf_counter()))
        t0 = time.perf_counter()
        attempts = 0
        try:
            for attempt in Retrying(stop=stop, wait=wait_random_exponential(multiplier=0.25, max=4.0),
                                    retry=retry_if_exception(is_retryable), reraise=True):
                with attempt:
                    attempts += 1
                    if deadline is not None:
                        kw["timeout"] = max(0.05, min(self.config.timeout_s, deadline - time.perf_counter()))
                    resp = call(**kw)
        except RetryError as exc:  # pragma: no cover - reraise=True makes this unusual
            raise CloudError(f"cloud call gave up: {exc}", attempts=attempts) from exc
        except Exception as exc:
            raise CloudError(f"{type(exc).__name__}: {_short(exc)}", attempts=attempts,
                             retryable=is_retryable(exc), kind=type(exc).__name__) from exc
        try:
            text, finish, ids = self.parse(resp, req)
        except CloudError:
            raise
        except Exception as exc:
            raise CloudError(f"malformed cloud response: {_short(exc)}", attempts=attempts,
                             kind="MalformedResponse") from exc
        usage = getattr(resp, "usage", None)
        cached, written = cache_usage(usage)
        deployment, rerouted = served_by(resp)
        return CloudSpan(
            text=text, finish_reason=finish,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=self._cost(resp), latency_s=time.perf_counter() - t0, strategy=self.strategy, token_ids=ids,
            cached_input_tokens=cached, cache_write_tokens=written, deployment=deployment, rerouted=rerouted,
        )

    def _caller(self, kind: str):
        if self._router_call is not None:
            return lambda **kw: self._router_call(kind, kw)
        litellm = _litellm()
        if kind != TEXT_CALL:
            return litellm.completion
        if self._text_client is None:
            return litellm.text_completion
        return lambda **kw: litellm.text_completion(
            client=self._text_client.with_options(timeout=kw.get("timeout", self.config.timeout_s)), **kw)

    def _cost(self, resp: Any) -> float:
        """LiteLLM's cost of the call, cache pricing included: what it computed as it logged the call (custom
        prices of a deployment included), else what a proxy reports, else ``completion_cost``; 0 when no price
        is known (e.g. a loopback server)."""
        hidden = getattr(resp, "_hidden_params", None) or {}
        for known in (hidden.get("response_cost"), proxy_cost(resp)):
            if isinstance(known, (int, float)) and known > 0:
                return float(known)
        litellm = _litellm()
        try:
            return float(litellm.completion_cost(completion_response=resp, model=self.model) or 0.0)
        except Exception:
            return 0.0


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).replace("\n", " ")
    return msg if len(msg) <= limit else msg[:limit] + "..."
