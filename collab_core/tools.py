"""Tool calling and structured output, framework-free: the tool format, the prompt, parsing, the grammar.

Both adapters go through here; neither formats nor parses a tool call itself.

**Tools** are OpenAI-style function specs (``{"type": "function", "function": {"name", "description",
"parameters"}}``; a bare ``{"name", "parameters"}`` is accepted). **Tool calls** come back as ``ToolCall``
(id, name, arguments as a dict); ``tool_calls.py`` parses them, and holds the one parser of a call's arguments
(``call_arguments``), for the calls in a request's messages and those a model writes alike.

**The local model's own format, where it has one** (``tool_format``): when mlx-lm recognises the model's tool
format (``TokenizerWrapper.has_tool_calling``) and it is the JSON-in-tags format of Qwen2.5 / Hermes
(mlx-lm's ``json_tools`` parser: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``), the
tools go to the chat template's own tools section (``apply_chat_template(tools=...)``), assistant tool calls
and ``tool`` messages go through the template as the model was trained on them, and calls are parsed with
mlx-lm's parser.

**The generic fallback** (every other model, e.g. SmolLM2, whose template has no tools section): the same
``<tool_call>`` JSON format, taught in words -- the tool list and the format are appended to the system
message; an assistant's earlier calls are written into its content in that format; a tool's result becomes a
user message ``<tool_response>\\n...\\n</tool_response>``. The cloud always sees the conversation this way
(its chat strategies send plain text messages), so what it writes continues the same format.

**Structured output** (a JSON schema, or any JSON object for JSON mode): the schema is given in the system
message, and the answer is the JSON value alone.

Either way the grammar (``constraint``) enforces the format while decoding (``local/grammar.py``): a forced
call (``tool_choice`` ``"required"``/``"any"``/a tool's name) or structured output always completes, parses
and validates; with ``"auto"`` the model may write text, any call it begins is enforced, and after a call only
another call or the end may follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .local.grammar import Constraint, json_constraint, marker_token, tool_constraint
from .tool_calls import END, GENERIC, START, InvalidToolCall, ToolCall, ToolFormat, call_arguments, call_name
from .tool_calls import parse_tool_calls as parse_tool_calls

TOOL_CHOICES = ("auto", "none", "required", "any")

GENERIC_TOOLS_PROMPT = (
    "You can call these tools:\n{tools}\n\n"
    "To call a tool, reply with only:\n" + START + '\n{{"name": "<tool name>", "arguments": {{<arguments>}}}}\n'
    + END + "\nTool results come back in <tool_response></tool_response> tags. "
    "When no tool is needed, answer in plain text."
)
SCHEMA_PROMPT = "Reply with only a JSON value that follows this JSON schema, and nothing else:\n{schema}"
JSON_PROMPT = "Reply with only a JSON object, and nothing else."


def tool_format(lm) -> ToolFormat:
    """The model's own JSON-in-tags tool format if mlx-lm knows it and the template has a tools section, else
    the generic fallback."""
    tok = lm.tokenizer
    template = getattr(tok, "chat_template", None) or ""
    parser = getattr(tok, "tool_parser", None) if getattr(tok, "has_tool_calling", False) else None
    if parser is not None and getattr(parser, "__module__", "").endswith(".json_tools") and "tools" in template:
        return ToolFormat("native", tok.tool_call_start, tok.tool_call_end, parser)
    return GENERIC


# -- specs ------------------------------------------------------------------------------------------------------
def normalize_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Tools as OpenAI-style function specs; a spec without a name raises ``ConfigError``."""
    out = []
    for t in tools or ():
        fn = dict(t.get("function", t)) if isinstance(t, Mapping) else None
        if not fn or not fn.get("name"):
            raise ConfigError(f"a tool is a function spec with a name, not {t!r}")
        fn.setdefault("parameters", {"type": "object", "properties": {}})
        out.append({"type": "function", "function": fn})
    return out


def tool_choice_names(tools: list[dict[str, Any]], choice: str | None) -> tuple[list[dict[str, Any]], bool]:
    """(the tools a call may name, whether a call is forced) for ``tool_choice``."""
    if choice in (None, "auto"):
        return tools, False
    if choice == "none":
        return [], False
    if choice in ("required", "any"):
        return tools, True
    chosen = [t for t in tools if t["function"]["name"] == choice]
    if not chosen:
        raise ConfigError(f"tool_choice {choice!r} names no tool (tools: "
                          f"{', '.join(t['function']['name'] for t in tools)})")
    return chosen, True


def constraint(lm, tools: Sequence[Mapping[str, Any]] | None, tool_choice: str | None,
               json_schema: Mapping[str, Any] | None) -> Constraint | None:
    """The grammar for a request: structured output, a forced call, calls allowed in text, or none."""
    if json_schema is not None:
        return json_constraint(json_schema)
    callable_tools, forced = tool_choice_names(normalize_tools(tools), tool_choice)
    if not callable_tools:
        return None
    fmt = tool_format(lm)
    return tool_constraint(callable_tools, start=fmt.start, end=fmt.end, forced=forced,
                           start_id=marker_token(lm, fmt.start), end_id=marker_token(lm, fmt.end))


# -- messages ---------------------------------------------------------------------------------------------------
def _call_json(call: Mapping[str, Any]) -> str:
    return json.dumps({"name": call_name(call), "arguments": call_arguments(call)}, ensure_ascii=False)


def _openai_call(call: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": call.get("id"), "type": "function",
            "function": {"name": call_name(call), "arguments": call_arguments(call)}}


def format_call(call: Mapping[str, Any], fmt: ToolFormat = GENERIC) -> str:
    return f"{fmt.start}\n{_call_json(call)}\n{fmt.end}"


def system_text(tools: list[dict[str, Any]], json_schema: Mapping[str, Any] | None, *, native: bool) -> str:
    """What the system message gains: the generic tool instructions and/or the schema to follow."""
    parts = []
    if tools and not native:
        parts.append(GENERIC_TOOLS_PROMPT.format(
            tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)))
    if json_schema is not None:
        schema = dict(json_schema)
        parts.append(JSON_PROMPT if schema in ({}, {"type": "object"}) else
                     SCHEMA_PROMPT.format(schema=json.dumps(schema, ensure_ascii=False)))
    return "\n\n".join(parts)


def tool_messages(messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]] | None,
                  json_schema: Mapping[str, Any] | None = None, fmt: ToolFormat = GENERIC) -> list[dict[str, Any]]:
    """Chat messages (text contents) with the tools, earlier calls and tool results written for ``fmt``.

    Native: assistant calls as OpenAI ``tool_calls`` and ``tool`` messages stay for the template (which also
    receives ``tools=``). Generic: everything in text (see the module docstring); the result has only
    ``role``/``content`` keys."""
    tools = normalize_tools(tools)
    native = fmt.kind == "native"
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        calls = m.get("tool_calls") or ()
        if role == "assistant" and calls:
            if native:
                out.append({"role": "assistant", "content": content, "tool_calls": [_openai_call(c) for c in calls]})
            else:
                text = "\n".join([content] * bool(content.strip()) + [format_call(c, fmt) for c in calls])
                out.append({"role": "assistant", "content": text})
        elif role == "tool":
            if native:
                out.append({"role": "tool", "content": content, **({"name": m["name"]} if m.get("name") else {})})
            else:
                out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    extra = system_text(tools, json_schema, native=native)
    if extra:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": (out[0]["content"] + "\n\n" + extra).strip()}
        else:
            out.insert(0, {"role": "system", "content": extra})
    return out


def has_tool_content(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


# -- parsing (the calls themselves: tool_calls.py) ----------------------------------------------------------
def parse_json(text: str) -> Any:
    """A structured answer's JSON value (``json.JSONDecodeError``, a ``ValueError``, when it is not one)."""
    return json.loads(text.strip())


class VisibleText:
    """For streams: passes text through until a tool call begins, then holds the rest back (the call is
    reported parsed, at the end). A possible start of the start tag is held back until it is decided."""

    def __init__(self, fmt: ToolFormat = GENERIC):
        self.start = fmt.start
        self.held = ""
        self.in_call = False

    def feed(self, piece: str) -> str:
        if self.in_call:
            return ""
        buf = self.held + piece
        i = buf.find(self.start)
        if i >= 0:
            self.in_call, self.held = True, ""
            return buf[:i]
        keep = 0
        for k in range(min(len(self.start) - 1, len(buf)), 0, -1):
            if self.start.startswith(buf[-k:]):
                keep = k
                break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        out, self.held = ("" if self.in_call else self.held), ""
        return out


_NOTHING = object()


@dataclass
class Structured:
    """What a tool-calling or structured request produced, besides its text: the text outside tool calls, the
    calls (and those that did not parse), and for structured output the JSON value."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    value: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"content": self.content, "tool_calls": [c.as_dict() for c in self.tool_calls],
                "invalid_tool_calls": [vars(c) for c in self.invalid_tool_calls], "value": self.value}


def structured_result(lm, text: str, tools: Sequence[Mapping[str, Any]] | None, tool_choice: str | None,
                      json_schema: Mapping[str, Any] | None) -> Structured | None:
    """Parse a finished answer of a request with tools or a schema (None for a plain request)."""
    if json_schema is not None:
        try:
            value = parse_json(text)
        except ValueError:
            value = None
        return Structured(text, value=value)
    if not tools or tool_choice == "none":
        return None
    content, calls, invalid = parse_tool_calls(text, tool_format(lm), normalize_tools(tools))
    return Structured(content, calls, invalid)
