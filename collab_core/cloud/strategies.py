"""The continuation strategies, by name: how the cloud is asked to continue an answer, and how its reply is read.

Which one a provider takes depends on what it can do (``providers.choose_strategy`` picks one for
``strategy="auto"``):

* ``completion`` -- a raw text completion (``/completions``) of the prompt rendered with the local model's
  chat template plus the partial answer: ``text-completion-openai/...``, ``hosted_vllm/...``,
  ``together_ai/...``, ``fireworks_ai/...``, any OpenAI-compatible server (e.g. ``mlx_lm.server``); the only
  one whose spans can come back as token ids (a cloud sharing the local vocabulary);
* ``prefill`` -- chat with the partial answer as a final assistant message (Anthropic models whose LiteLLM
  model info says ``supports_assistant_prefill``; Anthropic strips its trailing whitespace);
* ``prefix`` -- the same with ``"prefix": True`` on that message (DeepSeek, Mistral);
* ``continue`` -- vLLM's chat ``continue_final_message`` (``hosted_vllm/...`` chat servers);
* ``restate``, ``anchor``, ``echo``, ``instruct`` -- chat-only models (OpenAI chat, Gemini, Claude 4.6+), asked
  in words (``protocols``); ``restate`` is the one ``auto`` picks for them.

Each is a ``Strategy`` (``strategy``) registered here by its name; the names are the public config values.
``register`` adds one of your own. A chat reply that starts the answer over or restates the prompt instead of
continuing the answer is a failed call (``strategy.not_a_continuation``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import CloudConfigError
from ..text import cut_to_word_boundary, fix_spacing
from .protocols import PROTOCOLS
from .strategy import TEXT_CALL, SpanRequest, Strategy, check_continuation


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
        """Whether the span ends the answer: its strategy's say (a stop inside it, for an unknown one)."""
        return _REGISTRY.get(self.strategy, _PLAIN).ends_answer(self)

    def split(self, n: int, decode: Callable[[list[int]], str]) -> tuple[CloudSpan, CloudSpan | None]:
        """(its first ``n`` tokens, the rest as a span of its own or None). Only a span of token ids splits; the
        first part keeps what the call cost, and ends the answer only if the cloud stopped inside it."""
        ids = self.token_ids
        if ids is None or len(ids) <= n:
            return self, None
        head = replace(self, text=decode(ids[:n]), token_ids=ids[:n], finish_reason="length")
        rest = CloudSpan(decode(ids[n:]), self.finish_reason, strategy=self.strategy, token_ids=ids[n:],
                         deployment=self.deployment)
        return head, rest


def _respace(text: str, answer: str, req: SpanRequest, always: bool) -> str:
    # Some servers drop the span's leading space (mlx_lm.server's detokenizer trims it at the start of every
    # generation); only ever add one back, never remove what a server sent -- unless ``always``.
    return fix_spacing(text, answer, req.word_start) if always or text[:1].isalnum() else text


class Completion(Strategy):
    """A text completion of the prompt as the local model renders it, plus the answer so far."""

    name = "completion"
    call = TEXT_CALL
    token_exact = True

    def shape(self, req: SpanRequest, kw: dict, *, span_tokens: int, token_exact: bool) -> dict:
        kw["prompt"] = req.prompt_text + req.partial
        if token_exact:  # token ids back: mlx_lm.server's logprobs, vLLM's token_id:N tokens
            kw["extra_body"] = {**kw.get("extra_body", {}), "logprobs": True, "return_tokens_as_token_ids": True}
        return kw

    def reply_text(self, choice: Any) -> Any:
        return choice.text

    def token_ids(self, choice: Any) -> list[int] | None:
        return token_ids_of(choice)  # exact tokens: no spacing repair, no word-boundary cut

    def read(self, text: str, finish: str | None, req: SpanRequest, *, span_tokens: int) -> str:
        text = _respace(text, req.partial, req, always=False)
        return cut_to_word_boundary(text) if finish == "length" else text

    def cache_parts(self, req: SpanRequest) -> tuple:
        return req.prompt_text, req.partial, None


class AssistantTurn(Strategy):
    """Chat, the answer so far as the final assistant message for the model to continue in place (``prefill``,
    ``prefix``, ``continue``): the reply is the continuation itself."""

    def __init__(self, name: str, *, message: dict | None = None, extra_body: dict | None = None,
                 rstrip: bool = False):
        self.name = name
        self.message = message or {}  # more fields of the assistant message (``"prefix": True``)
        self.extra_body = extra_body or {}  # the server's own switches (vLLM's ``continue_final_message``)
        self.rstrip = rstrip  # the provider strips the message's trailing whitespace: so do we, and respace
        self.keys_word_start = rstrip

    def shape(self, req: SpanRequest, kw: dict, *, span_tokens: int, token_exact: bool) -> dict:
        msgs = [dict(m) for m in req.messages]
        if req.answer:
            content = req.answer.rstrip() if self.rstrip else req.answer
            msgs.append({"role": "assistant", "content": content, **self.message})
            if self.extra_body:
                kw["extra_body"] = {**kw.get("extra_body", {}), **self.extra_body}
        kw["messages"] = msgs
        return kw

    def read(self, text: str, finish: str | None, req: SpanRequest, *, span_tokens: int) -> str:
        text = _respace(text, req.answer, req, always=self.rstrip)
        check_continuation(text, req, self.name)
        return cut_to_word_boundary(text) if finish == "length" else text


_PLAIN = Strategy()  # what an unknown name's span ends by
_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Make ``strategy`` usable as ``CloudConfig(strategy=strategy.name)``; ``replace`` one of that name."""
    name = strategy.name
    if not name or name == "auto":
        raise CloudConfigError(f"a strategy needs a name other than {name!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not strategy:
        raise CloudConfigError(f"a strategy named {name!r} is registered already (pass replace=True)")
    _REGISTRY[name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; ``CloudConfigError`` for an unknown name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CloudConfigError(f"unknown strategy {name!r}; one of auto, {', '.join(_REGISTRY)}") from None


def strategy_names() -> tuple[str, ...]:
    """The registered strategies' names."""
    return tuple(_REGISTRY)


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


for _builtin in (Completion(), AssistantTurn("prefill", rstrip=True), AssistantTurn("prefix", message={"prefix": True}),
                 AssistantTurn("continue", extra_body={"continue_final_message": True, "add_generation_prompt": False}),
                 *PROTOCOLS.values()):
    register(_builtin)
