"""The OpenAI wire format, as pure functions: a request body in, an ``ApiRequest`` out; events in, JSON out.

Nothing here knows about HTTP or the ASGI stack (``app.py`` does), so every rule is tested without a server.

Requests are checked strictly, because a field that is silently ignored is a field the caller believes was
honoured: an unknown field is a 400 that names it, and so is a known OpenAI field with a value we cannot honour
(``n`` > 1, tools, logprobs, penalties). Fields that change nothing about the answer (``user``, ``metadata``,
``store``) are accepted. Our own options travel in one extension object, ``"collab"`` (the openai SDK sends
it with ``extra_body={"collab": {...}}``)::

    {"budget": 0.1, "local_only": false, "max_cloud_calls": 4, "deadline_s": 5.0}

Responses are OpenAI's shapes plus a ``"collab"`` field that standard clients ignore: per token, its source
(``local``/``cloud``), the local model's confidence and the routing score; on the last chunk, the stats.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine.events import FinalEvent, TokenEvent
from ..errors import RequestError
from ..stats import GenerationStats

CHAT = "chat"
COMPLETION = "completion"

_COMMON = frozenset({"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options",
                     "n", "user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "collab"})
_FIELDS = {
    CHAT: _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                     "parallel_tool_calls", "response_format", "metadata", "store", "service_tier"},
    COMPLETION: _COMMON | {"prompt", "echo", "best_of", "suffix"},
}
#: Known fields and the only values we can honour for them (anything else is a 400 that says so).
_ONLY = {
    "n": (None, 1), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "echo": (None, False), "best_of": (None, 1), "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_MESSAGE_FIELDS = frozenset({"role", "content", "name"})
_COLLAB_FIELDS = frozenset({"budget", "local_only", "max_cloud_calls", "deadline_s"})
MAX_STOP = 4


@dataclass(frozen=True)
class ApiRequest:
    """One generation request, checked: what to give ``Engine.astream`` and how to answer."""

    kind: str  # CHAT or COMPLETION
    prompt: Any  # a message list (chat), or a string / token ids (completion)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: usage in a chunk of its own, as OpenAI does
    options: dict[str, Any] = field(default_factory=dict)  # GenerateOptions
    budget: float | None = None  # routed share for this request (0: local only); None: the server's router


def parse_request(body: Any, *, kind: str) -> ApiRequest:
    """Check a decoded JSON body against the endpoint's fields; raises ``RequestError`` naming the field."""
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS[kind])
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(unknown)}", param=unknown[0], code="unknown_field")
    for name, allowed in _ONLY.items():
        if name in body and not any(body[name] == a and type(body[name]) is type(a) or body[name] is a
                                    for a in allowed):
            raise RequestError(f"{name}={json.dumps(body[name])} is not supported by this server",
                               param=name, code="unsupported_value")
    _typed(body, "model", str)
    prompt, opts = (_chat_prompt(body), {}) if kind == CHAT else _completion_prompt(body)
    opts.update(_generation_options(body, kind))
    extension = _collab_options(body.get("collab"))
    budget = extension.pop("budget", None)
    opts.update(extension)
    stream = bool(_typed(body, "stream", bool))
    stream_options = _typed(body, "stream_options", dict) or {}
    if set(stream_options) - {"include_usage"}:
        raise RequestError("stream_options takes include_usage only", param="stream_options",
                           code="unknown_field")
    include_usage = bool(_typed(stream_options, "include_usage", bool, where="stream_options."))
    return ApiRequest(kind=kind, prompt=prompt, stream=stream, include_usage=include_usage, options=opts,
                      budget=budget)


def _typed(body: Mapping, name: str, kind: type | tuple[type, ...], *, where: str = "") -> Any:
    """``body[name]`` when it is of ``kind`` (or absent/null: None); a bool is never taken for a number."""
    value = body.get(name)
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__.replace("str", "string").replace("dict", "object") for k in kinds)
        raise RequestError(f"{where}{name} must be {names}, not {json.dumps(value)[:60]}", param=where + name,
                           code="invalid_type")
    return value


def _number(body: Mapping, name: str, *, lo: float, hi: float = math.inf, integer: bool = False,
            where: str = "") -> float | int | None:
    value = _typed(body, name, int if integer else (int, float), where=where)
    if value is not None and not lo <= value <= hi:
        bound = f"between {lo:g} and {hi:g}" if hi != math.inf else f"at least {lo:g}"
        raise RequestError(f"{where}{name} must be {bound}, not {value}", param=where + name, code="out_of_range")
    return value


def _chat_prompt(body: Mapping) -> list[dict[str, Any]]:
    messages = _typed(body, "messages", list)
    if not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise RequestError(f"{where} must be an object", param=where)
        extra = sorted(set(m) - _MESSAGE_FIELDS)
        if extra:
            raise RequestError(f"{where} has unknown field(s): {', '.join(extra)}", param=where,
                               code="unknown_field")
        if m.get("role") not in _ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(sorted(_ROLES))}", param=where + ".role")
        if not isinstance(m.get("content"), (str, list, type(None))):
            raise RequestError(f"{where}.content must be a string or a list of parts", param=where + ".content")
        out.append({"role": m["role"], "content": m.get("content")})
    return out


def _completion_prompt(body: Mapping) -> tuple[Any, dict[str, Any]]:
    """A completion's prompt goes to the model as it is: no chat template (``chat=False``)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and
                                   all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)):
        return prompt, {"chat": False}
    raise RequestError("prompt must be a string, a list of one string, or a list of token ids (batches of "
                       "several prompts are not supported)", param="prompt")


def _generation_options(body: Mapping, kind: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    limit = _number(body, "max_tokens", lo=1, integer=True)
    if kind == CHAT:
        limit = _number(body, "max_completion_tokens", lo=1, integer=True) or limit
    opts["max_tokens"] = limit
    opts["temperature"] = _number(body, "temperature", lo=0, hi=2)
    opts["top_p"] = _number(body, "top_p", lo=0, hi=1)
    if opts["top_p"] == 0:
        raise RequestError("top_p must be greater than 0", param="top_p", code="out_of_range")
    opts["seed"] = _number(body, "seed", lo=-(2 ** 63), integer=True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP and
                                 all(isinstance(s, str) and s for s in stop)):
        raise RequestError(f"stop must be a string or a list of at most {MAX_STOP} non-empty strings", param="stop")
    opts["stop"] = tuple(stop) if stop else None
    return {k: v for k, v in opts.items() if v is not None}


def _collab_options(ext: Any) -> dict[str, Any]:
    if ext is None:
        return {}
    if not isinstance(ext, Mapping):
        raise RequestError("collab must be an object", param="collab", code="invalid_type")
    unknown = sorted(set(ext) - _COLLAB_FIELDS)
    if unknown:
        raise RequestError(f"unknown field(s) in collab: {', '.join(unknown)}", param="collab." + unknown[0],
                           code="unknown_field")
    out = {"budget": _number(ext, "budget", lo=0, hi=1, where="collab."),
           "local_only": _typed(ext, "local_only", bool, where="collab."),
           "max_cloud_calls": _number(ext, "max_cloud_calls", lo=0, integer=True, where="collab."),
           "deadline_s": _number(ext, "deadline_s", lo=0, where="collab.")}
    return {k: v for k, v in out.items() if v is not None}


# -- responses ---------------------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == CHAT else "cmpl-") + uuid.uuid4().hex[:24]


def usage(stats: GenerationStats) -> dict[str, int]:
    """OpenAI's usage: the local model's prompt tokens and every generated token (local or cloud)."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.total_tokens,
            "total_tokens": stats.prompt_tokens + stats.total_tokens}


def token_provenance(ev: TokenEvent) -> dict[str, Any]:
    """One token's extension record (the same fields as ``collab run --json``)."""
    return ev.as_dict()


@dataclass(frozen=True)
class Reply:
    """Builds the JSON of one answer: its chunks while streaming, or the whole response."""

    kind: str
    model: str
    id: str = ""
    created: int = 0

    @classmethod
    def start(cls, kind: str, model: str) -> Reply:
        return cls(kind=kind, model=model, id=new_id(kind), created=int(time.time()))

    def _envelope(self, obj: str, choices: list[dict]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, text: str | None, finish: str | None, *, first: bool = False) -> dict[str, Any]:
        if self.kind == COMPLETION:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text or first:
            delta["content"] = text or ""
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    @property
    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.kind == CHAT else "text_completion"

    def token_chunk(self, ev: TokenEvent, *, first: bool = False) -> dict[str, Any]:
        """One chunk per token, its provenance in ``collab.tokens`` (a list: one entry here)."""
        out = self._envelope(self._chunk_object, [self._choice(ev.text, None, first=first)])
        out["collab"] = {"tokens": [token_provenance(ev)]}
        return out

    def final_chunk(self, ev: FinalEvent, *, with_usage: bool, first: bool = False) -> dict[str, Any]:
        """The last chunk: held-back text, the finish reason, the stats (and usage unless it gets its own)."""
        out = self._envelope(self._chunk_object, [self._choice(ev.text, ev.finish_reason, first=first)])
        out["collab"] = {"tokens": [], "stats": ev.stats.as_dict()}
        if with_usage:
            out["usage"] = usage(ev.stats)
        return out

    def usage_chunk(self, stats: GenerationStats) -> dict[str, Any]:
        """What OpenAI sends after the last chunk when ``stream_options.include_usage`` is set."""
        return {**self._envelope(self._chunk_object, []), "usage": usage(stats)}

    def response(self, events: list[TokenEvent], final: FinalEvent) -> dict[str, Any]:
        """The whole answer (``stream: false``)."""
        text = "".join(e.text for e in events) + final.text
        if self.kind == CHAT:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": final.finish_reason}
            out = self._envelope("chat.completion", [choice])
        else:
            out = self._envelope("text_completion", [{"index": 0, "text": text, "logprobs": None,
                                                      "finish_reason": final.finish_reason}])
        out["usage"] = usage(final.stats)
        out["collab"] = {"tokens": [token_provenance(e) for e in events], "stats": final.stats.as_dict()}
        return out


def sse(obj: Mapping[str, Any]) -> bytes:
    """One server-sent event carrying ``obj``."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def error_body(message: str, *, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape (the openai SDK and LiteLLM read ``error.message``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
