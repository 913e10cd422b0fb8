"""One tool call: its types, the one parser of its arguments, and parsing calls out of an answer's text.

``call_arguments`` is the only place a call's arguments are read, whichever form the call comes in (an
OpenAI-style ``{"function": {"name", "arguments"}}`` entry of a request's messages, a LangChain-style
``{"name", "args"}``, or a call object the model wrote, ``{"name", "arguments" | "parameters"}``):

* a mapping is the arguments;
* a string is parsed as JSON and must hold an object (``""`` is no arguments, as some APIs send it);
* missing or ``None`` is no arguments (``{}``).

Anything else -- a string that is not JSON, JSON that is not an object, a list -- raises ``ConfigError`` (a
``ValueError``) naming the call: in a request's messages that is a bad request, never silently sent on as a
raw string or as ``{}``; in a model's answer the call is reported as an ``InvalidToolCall``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

START, END = "<tool_call>", "</tool_call>"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    def openai(self) -> dict[str, Any]:
        """As an OpenAI-style assistant ``tool_calls`` entry (what chat templates read)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class InvalidToolCall:
    text: str  # the call's text as written
    error: str
    name: str | None = None  # the call's own name where it can be read, else None
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])


@dataclass(frozen=True)
class ToolFormat:
    """How a model writes tool calls: ``native`` (its chat template has a tools section and mlx-lm parses its
    calls) or ``generic`` (taught in the system message)."""

    kind: str
    start: str = START
    end: str = END
    parser: Any = None  # mlx-lm's parse_tool_call(text, tools) for a native format


GENERIC = ToolFormat("generic")

_ARGUMENT_KEYS = ("arguments", "args", "parameters")


def call_arguments(call: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``call`` (any of the forms in the module docstring) as a dict; ``ConfigError`` when they
    are not a JSON object."""
    fn = call.get("function", call)
    if not isinstance(fn, Mapping):
        raise ConfigError(f"a tool call is a mapping, not {type(fn).__name__}")
    raw = next((fn[k] for k in _ARGUMENT_KEYS if k in fn), None)
    if raw is None:
        return {}
    args = raw
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            args = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the arguments of tool call {fn.get('name')!r} are not JSON: {exc}") from exc
    if not isinstance(args, Mapping):
        raise ConfigError(f"the arguments of tool call {fn.get('name')!r} are not a JSON object: {raw!r}")
    return dict(args)


def call_name(call: Mapping[str, Any]) -> Any:
    fn = call.get("function", call)
    return fn.get("name") if isinstance(fn, Mapping) else None


# -- parsing an answer's text -----------------------------------------------------------------------------------
_NAME_AT_START = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _own_name(body: str, obj: Any) -> str | None:
    """The name a malformed call gives itself: its parsed object's, else a ``{"name": "..."`` it opens with."""
    if isinstance(obj, Mapping):
        name = obj.get("name")
        return name if isinstance(name, str) else None
    m = _NAME_AT_START.match(body)
    if m is None:
        return None
    try:
        return json.loads(f'"{m.group(1)}"')
    except json.JSONDecodeError:
        return None


def tool_call(obj: Any) -> ToolCall:
    """A parsed call object as a ``ToolCall``; ``ValueError``, ``AttributeError`` or ``TypeError`` when it is
    not one."""
    name, args = obj.get("name"), call_arguments(obj)
    if not isinstance(name, str):
        raise ValueError("a call is {\"name\": str, \"arguments\": object}")
    return ToolCall(name, args)


def parse_tool_calls(text: str, fmt: ToolFormat = GENERIC, tools: Sequence[Mapping[str, Any]] | None = None
                     ) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """(the text outside the calls, the calls, the calls that do not parse). An unclosed call at the end is
    parsed up to the end of the text. With ``tools``, an answer that is only a bare call object naming one of
    them (``{"name": ..., "arguments": ...}``, possibly in a code fence: how a cloud model asked in the
    generic format often answers) is that call. A call that does not parse is reported under its own name
    where it can be read, else under none."""
    if tools and fmt.start not in text:
        bare = _bare_call(text, tools)
        if bare is not None:
            return "", [bare], []
    content, calls, invalid = [], [], []
    pos = 0
    while True:
        i = text.find(fmt.start, pos)
        if i < 0:
            content.append(text[pos:])
            break
        content.append(text[pos:i])
        j = text.find(fmt.end, i + len(fmt.start))
        body = text[i + len(fmt.start): j if j >= 0 else len(text)]
        pos = len(text) if j < 0 else j + len(fmt.end)
        obj: Any = None  # this call's object only: never the one before it
        try:
            obj = fmt.parser(body, tools) if fmt.parser is not None else json.loads(body.strip())
            calls.append(tool_call(obj))
        except (ValueError, AttributeError, TypeError) as exc:
            invalid.append(InvalidToolCall(body.strip(), str(exc), name=_own_name(body, obj)))
        if j < 0:
            break
    return "".join(content).strip(), calls, invalid


def _bare_call(text: str, tools: Sequence[Mapping[str, Any]]) -> ToolCall | None:
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").strip()
        body = body[4:] if body.startswith("json") else body
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    names = {t.get("function", t).get("name") for t in tools}
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    try:
        return tool_call(obj)
    except ValueError:
        return None
