"""The cloud leg: a short continuation span from any LiteLLM model string.

The cloud model is asked to continue the *partial answer* for a few tokens. How that is asked depends on
what the provider can do (``Strategy``):

* ``completion`` -- a raw text completion (``/completions``) of the prompt rendered with the local model's
  chat template plus the partial answer: ``text-completion-openai/...``, ``hosted_vllm/...``,
  ``together_ai/...``, ``fireworks_ai/...``, any OpenAI-compatible server (e.g. ``mlx_lm.server``);
* ``prefill`` -- chat with the partial answer as a final assistant message (Anthropic models whose LiteLLM
  model info says ``supports_assistant_prefill``; Anthropic strips its trailing whitespace);
* ``prefix`` -- the same with ``"prefix": True`` on that message (DeepSeek, Mistral);
* ``continue`` -- vLLM's chat ``continue_final_message`` (``hosted_vllm/...`` chat servers);
* ``instruct`` -- chat-only models (OpenAI chat, Gemini, Claude 4.6+): an instruction to write only the
  next few words of the partial answer; an echoed prefix is stripped.

Retries are tenacity's (exponential backoff with jitter, retryable errors only); LiteLLM's and the
OpenAI SDK's own retries are switched off so they do not multiply. With a LiteLLM Router or proxy as the cloud,
LiteLLM retries, falls back and cools deployments down, and we make one attempt per span (``deployments``).

What is sent is shaped for the providers' prompt caches: the stable prefix (the conversation) always comes
first and is the same bytes on every call of an answer and on later turns (OpenAI's automatic prefix cache,
vLLM/SGLang prefix caching); for Anthropic it carries a ``cache_control`` marker. Cached input tokens come back
in ``CloudSpan.cached_input_tokens`` and the cost is LiteLLM's, with cache pricing. Every text sent goes
through the redactor first (``redact``), and placeholders in a span are restored.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CloudConfigError, CloudError
from ..prompts import Prompt, messages_for, split_prefill
from ..settings import STRATEGIES, EngineSettings
from ..text import cut_to_word_boundary, fix_spacing
from . import protocols
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
from .protocols import CHAT_PROTOCOL, PROTOCOLS
from .redact import make_redactor, redact_messages

_COMPLETION_PROVIDERS = {"text-completion-openai", "hosted_vllm", "together_ai", "fireworks_ai",
                         "text-completion-codestral", "openai_like"}
_PREFIX_PROVIDERS = {"deepseek", "mistral", "codestral"}
_LOOPBACK = re.compile(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")
_CACHE_MARKED_PROVIDERS = {"anthropic"}  # providers whose prompt cache needs explicit cache_control markers
_EPHEMERAL = {"type": "ephemeral"}



_litellm = litellm_module


_DEFAULT = {f.name: f.default for f in dataclasses.fields(EngineSettings)}


@dataclass
class CloudConfig:
    """Where and how the cloud model is called (defaults: ``EngineSettings``').

    ``deployments``: a ``litellm.Router`` or the path of a router config file; ``model`` then names its model group
    (None: the first). ``redact``: ``"default"``, a function ``str -> str`` or a redactor (``cloud.redact``).
    """

    model: str | None
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    strategy: str = _DEFAULT["strategy"]
    span_tokens: int = _DEFAULT["span_tokens"]  # cloud tokens per call (cut back to a word boundary)
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
        if self.strategy != "auto" and self.strategy not in STRATEGIES:
            raise CloudConfigError(f"unknown strategy {self.strategy!r}; one of {', '.join(STRATEGIES)}")
        if self.span_tokens < 1:
            raise CloudConfigError("span_tokens must be >= 1")


@dataclass
class SpanRequest:
    """What the cloud needs to continue: the conversation and the answer so far."""

    messages: list[dict]  # the conversation (system/user/assistant turns), without the partial answer
    prompt_text: str  # the prompt rendered with the local chat template, prefill included (text completion)
    partial: str  # the answer so far (text already emitted)
    word_start: bool | None = None  # does the local model think a new word starts here? (spacing hint)
    prefix: str = ""  # the answer's start given with the prompt (an assistant prefill), before ``partial``

    @property
    def answer(self) -> str:
        """The whole answer so far, as a chat model must see it: the prefill, then what was written."""
        return self.prefix + self.partial

    @classmethod
    def for_prompt(cls, prompt: Prompt, prompt_text: str, *, system: str | None = None) -> SpanRequest:
        """The request for ``prompt``'s answer, not begun yet (``prompt_text``: the prompt as the local model
        renders it); each call fills in ``partial`` and ``word_start``."""
        return cls(messages=messages_for(prompt, system), prompt_text=prompt_text, partial="",
                   prefix=split_prefill(prompt)[1])


@dataclass
class CloudSpan:
    text: str  # the continuation, to append to the partial answer
    finish_reason: str | None  # "stop" when the cloud model ended its answer inside the span
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    strategy: str = ""
    token_ids: list[int] | None = None  # the span as token ids, when the cloud shares the local tokenizer
    cached_input_tokens: int = 0  # input tokens the provider read from its prompt cache
    cache_write_tokens: int = 0  # input tokens written to the provider's prompt cache (Anthropic)
    deployment: str | None = None  # which deployment answered (a Router's or a proxy's say)
    rerouted: int = 0  # retries and fallbacks LiteLLM made before this span came back

    @property
    def ends_answer(self) -> bool:
        # A chat-only model asked for "a few words" stops after them by design: that is not the end of the
        # answer -- unless it wrote nothing after the words it echoed.
        return self.finish_reason == "stop" and (self.strategy not in PROTOCOLS or not self.text.strip())


def span_key(*parts) -> str:
    """A stable digest of everything that shapes a cloud span (the span cache's key)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def choose_strategy(model: str, api_base: str | None = None) -> str:
    litellm = _litellm()
    try:
        _, provider, _, _ = litellm.get_llm_provider(model, api_base=api_base)
    except Exception as exc:
        raise CloudConfigError(
            f"unknown cloud model {model!r}: LiteLLM cannot tell its provider "
            "(use a provider prefix, e.g. 'openai/gpt-4o-mini', 'anthropic/claude-sonnet-4-5', "
            "'hosted_vllm/NAME' or 'text-completion-openai/NAME' with --api-base)"
        ) from exc
    if provider in _COMPLETION_PROVIDERS:
        return "completion"
    if provider == "anthropic":
        info = _model_info(model)
        return "prefill" if info.get("supports_assistant_prefill") else CHAT_PROTOCOL
    if provider in _PREFIX_PROVIDERS:
        return "prefix"
    return CHAT_PROTOCOL


_PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY", "text-completion-openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY", "deepseek": "DEEPSEEK_API_KEY", "mistral": "MISTRAL_API_KEY",
    "codestral": "CODESTRAL_API_KEY", "gemini": "GEMINI_API_KEY", "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY", "groq": "GROQ_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY",
    "openrouter": "OPENROUTER_API_KEY", "cohere": "COHERE_API_KEY", "xai": "XAI_API_KEY",
}


def api_key_env_var(model: str) -> str | None:
    """The environment variable a provider's key usually lives in (None if unknown or not needed)."""
    litellm = _litellm()
    try:
        provider = litellm.get_llm_provider(model)[1]
    except Exception:
        return None
    return _PROVIDER_KEY_ENV.get(provider)


def _model_info(model: str) -> dict:
    litellm = _litellm()
    bare = model.split("/", 1)[1] if "/" in model else model
    return litellm.model_cost.get(model) or litellm.model_cost.get(bare) or {}


def is_retryable(exc: BaseException) -> bool:
    litellm = _litellm()
    import openai

    non_retryable = (litellm.AuthenticationError, litellm.BadRequestError, litellm.NotFoundError,
                     litellm.PermissionDeniedError, litellm.UnprocessableEntityError)
    if isinstance(exc, non_retryable):
        return False
    retryable = (litellm.RateLimitError, litellm.InternalServerError, litellm.ServiceUnavailableError,
                 litellm.BadGatewayError, litellm.APIConnectionError, litellm.Timeout,
                 openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                 openai.RateLimitError)
    return isinstance(exc, retryable)


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
        self.strategy = self._auto_strategy() if config.strategy == "auto" else config.strategy
        self.token_exact = False  # set by bind(): spans come back as the local model's token ids
        # LiteLLM retries (and falls back) itself behind a Router or a proxy: one attempt per span on our side
        self.litellm_retries = self.deployments is not None or _provider(config.model or "") == "litellm_proxy"
        self.cache_markers = config.prompt_cache and self.strategy != "completion" and all(
            _provider(m, b) in _CACHE_MARKED_PROVIDERS for m, b in self._deployments())

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
                or _provider(cfg.model or "") != "text-completion-openai"):
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
        self.token_exact = self.strategy == "completion" and vocab is not None and vocab in ("local", local_vocab)
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
        if cfg.api_key or (cfg.api_base and _LOOPBACK.match(cfg.api_base)):
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
        if cfg.api_base and _LOOPBACK.match(cfg.api_base):
            return os.environ.get("OPENAI_API_KEY") or "sk-loopback-no-key"  # the SDK insists on one
        return None

    # -- request shaping -------------------------------------------------------------------------------
    def cache_key(self, req: SpanRequest) -> str:
        """The span cache's key for ``req``: everything that shapes the cloud's answer, nothing else."""
        cc = self.config
        completion = self.strategy == "completion"
        return span_key(self.model, cc.api_base, self.strategy, cc.span_tokens, cc.temperature, self.token_exact,
                        req.prompt_text if completion else req.messages, req.partial if completion else req.answer,
                        req.word_start if self.strategy in ("instruct", "prefill") else None)

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
        kw: dict[str, Any] = {"model": self.model, "max_tokens": cfg.span_tokens, "temperature": cfg.temperature,
                              "timeout": cfg.timeout_s}
        if self.deployments is None:  # a Router's deployments carry their endpoints, keys and retry settings
            kw.update(num_retries=0, max_retries=0)
            if cfg.api_base:
                kw["api_base"] = cfg.api_base
            key = self._api_key()
            if key:
                kw["api_key"] = key
        kw.update(cfg.extra)
        kind, kw = self._shape(req, kw)
        if self.cache_markers and "messages" in kw:
            kw["messages"] = mark_stable_prefix(kw["messages"], req.messages)
        return kind, kw

    def _shape(self, req: SpanRequest, kw: dict) -> tuple[str, dict]:
        cfg = self.config
        s = self.strategy
        if s == "completion":
            kw["prompt"] = req.prompt_text + req.partial
            if self.token_exact:  # token ids back: mlx_lm.server's logprobs, vLLM's token_id:N tokens
                kw["extra_body"] = {**kw.get("extra_body", {}), "logprobs": True, "return_tokens_as_token_ids": True}
            return "text_completion", kw
        if s in PROTOCOLS:
            chat = protocols.request(s, req.messages, req.answer, cfg.span_tokens)
            kw["messages"], kw["max_tokens"] = chat.messages, chat.max_tokens
            return "completion", kw
        msgs = [dict(m) for m in req.messages]
        answer = req.answer
        if answer:
            if s == "prefill":
                msgs.append({"role": "assistant", "content": answer.rstrip()})
            elif s == "prefix":
                msgs.append({"role": "assistant", "content": answer, "prefix": True})
            elif s == "continue":
                msgs.append({"role": "assistant", "content": answer})
                kw["extra_body"] = {**kw.get("extra_body", {}), "continue_final_message": True,
                                    "add_generation_prompt": False}
        kw["messages"] = msgs
        return "completion", kw

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
        text = choice.text if self.strategy == "completion" else choice.message.content
        if text is None or not isinstance(text, str):
            raise CloudError("the cloud response has no text")
        finish = choice.finish_reason
        s = self.strategy
        if s in PROTOCOLS:  # a chat-only model: line its reply up with the answer so far
            aligned = protocols.align(s, text, req.answer)
            if aligned is None:
                raise CloudError(f"the {s} reply does not line up with the answer so far: {text[:80]!r}",
                                 kind="UnalignedSpan")
            if finish == "length" or s == "instruct":
                aligned = cut_to_word_boundary(aligned)
            text = protocols.cut_words(aligned, -(-self.config.span_tokens // 2))  # about two tokens a word
            if s == "instruct" or not req.answer:  # an aligned reply keeps the model's own spacing
                text = fix_spacing(text, req.answer, req.word_start)
            return text, finish, None
        if s == "completion" and self.token_exact:
            ids = token_ids_of(choice)
            if ids is not None:
                return text, finish, ids  # exact tokens: no spacing repair, no word-boundary cut
        if s == "prefill":
            text = fix_spacing(text, req.answer, req.word_start)
        elif text[:1].isalnum():
            # Some servers drop the span's leading space (mlx_lm.server's detokenizer trims it at the start
            # of every generation); only ever add one back, never remove what a server sent.
            text = fix_spacing(text, req.partial if s == "completion" else req.answer, req.word_start)
        if finish == "length":
            text = cut_to_word_boundary(text)
        return text, finish, None

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
        if kind != "text_completion":
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


def cache_usage(usage: Any) -> tuple[int, int]:
    """(input tokens read from the provider's prompt cache, input tokens written to it) from LiteLLM's usage:
    ``prompt_tokens_details.cached_tokens`` (OpenAI, and Anthropic's reads as LiteLLM maps them) or
    ``cache_read_input_tokens``; ``cache_creation_input_tokens`` (Anthropic)."""
    if usage is None:
        return 0, 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if not cached:
        cached = getattr(usage, "cache_read_input_tokens", None)
    written = getattr(usage, "cache_creation_input_tokens", None)
    return int(cached or 0), int(written or 0)


def mark_stable_prefix(messages: list[dict], conversation: list[dict]) -> list[dict]:
    """``messages`` with an Anthropic ``cache_control`` marker at the end of the conversation (the stable prefix:
    the same on every call of an answer). A last message that was extended (the restate protocol's request) is
    split into two text blocks, the conversation's own text marked."""
    if not conversation:
        return messages
    n = len(conversation)
    last = conversation[-1]
    last_text = last.get("content")
    if not isinstance(last_text, str):
        return messages
    for k in range(len(messages) - n + 1):
        m = messages[k + n - 1]
        text = m.get("content")
        if (messages[k:k + n - 1] == conversation[:-1] and m.get("role") == last.get("role")
                and isinstance(text, str) and text.startswith(last_text) and last_text):
            blocks = [{"type": "text", "text": last_text, "cache_control": dict(_EPHEMERAL)}]
            if text[len(last_text):]:
                blocks.append({"type": "text", "text": text[len(last_text):]})
            out = list(messages)
            out[k + n - 1] = {**m, "content": blocks}
            return out
    return messages


def _provider(model: str, api_base: str | None = None) -> str | None:
    try:
        return _litellm().get_llm_provider(model, api_base=api_base)[1]
    except Exception:
        return None


def token_ids_of(choice: Any) -> list[int] | None:
    """The generated token ids a completion choice carries in its logprobs: ``content[i]["id"]``
    (``mlx_lm.server``) or ``tokens`` spelled ``token_id:N`` (vLLM's ``return_tokens_as_token_ids``)."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    get = (lambda k: lp.get(k)) if isinstance(lp, dict) else (lambda k: getattr(lp, k, None))
    content = get("content")
    if content and all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in content):
        return [c["id"] for c in content]
    tokens = get("tokens")
    if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    return None


def _short(exc: BaseException, limit: int = 300) -> str:
    msg = str(exc).replace("\n", " ")
    return msg if len(msg) <= limit else msg[:limit] + "..."
