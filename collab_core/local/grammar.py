"""Constrained decoding: a grammar that masks the local model's next-token distribution, and checks cloud spans.

A ``Constraint`` is a grammar in llguidance's Lark dialect (JSON schemas are embedded with ``%json``); the
builders here make one from a JSON schema (structured output), from a list of tools (a forced call, or calls
allowed anywhere in free text) or for any JSON object (JSON mode). A ``GrammarState`` follows one answer:

* ``allowed()`` is the mask of tokens the grammar accepts next (EOS only once the grammar is complete),
  applied to the local logits before sampling (``StepDecoder.constrain``): a token the grammar forbids is
  never sampled, and a token the grammar forces has confidence 1, so the router never sends the structure to
  the cloud -- only the values, where the local model is unsure;
* ``consume(token)`` / ``rollback(n)`` follow the answer and the local draft as the run commits, drafts and
  takes tokens back;
* ``valid_prefix(span)`` measures a cloud span against the grammar (``engine.reconcile.check_grammar``): its longest valid prefix is kept and the rest is
  dropped, so the local model, constrained, writes the next token itself. The span's "end of answer" counts
  only when the grammar is complete there.

So with a forced tool call or structured output, a finished answer always parses and validates. And it
finishes within ``max_tokens``: ``allowed(budget)`` takes the tokens left, and as they run down to what the
structure needs to close, it allows only the next token of a short valid completion (``closing.py``); a cloud
span is kept only as far as still leaves that room (``valid_prefix(tokens, budget)``).

Why llguidance (not outlines-core, not xgrammar): ``benchmarks/grammar.py`` measures the per-token cost of
each on the same schema and tokenizer, as a ratio to unconstrained decoding. llguidance computes each mask
lazily from an Earley parser over a token trie (no precompiled automaton, so a new schema costs milliseconds,
not seconds; outlines-core must build a regex index over the whole vocabulary for every schema before the
first token), it rolls back tokens natively (which routing needs: drafts are taken back, spans spliced in),
validates a span's prefix in one call (``validate_tokens``), and supports free text with lazily triggered tool
calls. xgrammar was not measured: its Python package needs torch, triton and transformers, too heavy a
dependency for a library whose local side runs on MLX.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, GrammarError
from .closing import SLACK, char_tokens, closing_plan

#: Tokens between looks at the closing plan while the budget is far from it.
WATCH = 16


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties and says
    nothing of others (as OpenAI's strict mode does): a small model, once past the keys it was asked for,
    would otherwise go on inventing keys until the token limit."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v) if k not in ("const", "enum", "default", "examples") else v) for k, v in schema.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


@dataclass(frozen=True)
class Constraint:
    """A grammar (llguidance Lark) and what it is for: ``"json"`` (one JSON value, then the end),
    ``"tool"`` (exactly one tool call, then the end) or ``"tools"`` (free text, tool calls valid where they
    appear)."""

    lark: str
    kind: str = "json"
    markers: tuple[int, ...] = ()  # single-token markers the grammar matches as tokens (``<[id]>``)

    @property
    def forced(self) -> bool:
        """The whole answer is structured: it must be complete to be valid."""
        return self.kind in ("json", "tool")


#: JSON is written on one line, ``{"a": 1, "b": [2, 3]}`` (as ``json.dumps`` and Qwen's tool calls write it):
#: with free whitespace a small model can indent forever, and cloud spans agree more often with one layout.
JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def _schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {**closed(dict(schema)), "x-guidance": JSON_LAYOUT}


def _json_rule(schema: Mapping[str, Any]) -> str:
    return "%json " + json.dumps(_schema(schema), separators=(",", ":"))


def _lark(body: str) -> str:
    return "%llguidance {}\n" + body


def json_constraint(schema: Mapping[str, Any] | None = None) -> Constraint:
    """One JSON value valid under ``schema`` (``None`` or ``{"type": "object"}``: any JSON object)."""
    schema = dict(schema) if schema else {"type": "object"}
    if not isinstance(schema, dict):
        raise ConfigError("a JSON schema is a mapping")
    return Constraint(_lark(f"start: {_json_rule(schema)}\n"), "json")


def tool_call_schema(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call to one of ``tools`` (OpenAI-style function specs):
    ``{"name": <one of the names>, "arguments": <that tool's parameters>}``."""
    options = []
    for t in tools:
        fn = t.get("function", t)
        params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
        params.setdefault("type", "object")
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise ConfigError("no tools to call")
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_constraint(tools: Sequence[Mapping[str, Any]], *, start: str, end: str, forced: bool,
                    start_id: int | None = None, end_id: int | None = None) -> Constraint:
    """Tool calls written as ``start`` + the call's JSON + ``end`` (Qwen2.5 and the generic fallback:
    ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``).

    ``start_id``/``end_id``: the markers are single tokens of the local tokenizer (Qwen2.5's ``<tool_call>`` is
    token 151657), matched as that token (llguidance's ``<[id]>``): such a token is not text, so a grammar that
    spells the marker in bytes would accept only the bytes, never the token the model writes.

    ``forced``: the answer is exactly one call. Otherwise either plain text (which never contains ``start``),
    or text followed by one or more calls and nothing else -- a call begins wherever ``start`` is written (a
    lazily matched lexeme, or the marker token), is enforced from there on, and after a call only another call
    or the end may come (a small model would otherwise chat on after its call)."""
    schema = tool_call_schema(tools)
    q = json.dumps
    open_ = f"<[{start_id}]>" if start_id is not None else q(start)
    close = f"{q(chr(10))} <[{end_id}]>" if end_id is not None else q(chr(10) + end)
    body = f"{q(chr(10))} {_json_rule(schema)} {close}"
    markers = tuple(t for t in (start_id, end_id) if t is not None)
    if forced:
        return Constraint(_lark(f"start: {open_} {body}\n"), "tool", markers)
    if start_id is not None:  # text cannot spell the marker token: any text, then calls
        return Constraint(_lark(
            f"start: TEXT? calls?\n"
            f"calls: call (SEP? call)* SEP?\n"
            f"call: {open_} body\n"
            f"body: {body}\n"
            f"TEXT: /(.|\\n)+/\n"
            f"SEP: /[ \\n]+/\n"), "tools", markers)
    s = re.escape(start).replace("/", "\\/")
    return Constraint(_lark(
        f"start: PLAIN | pre_call body (SEP call)* SEP?\n"
        f"PLAIN: /(.|\\n)*/ & ~/(.|\\n)*{s}(.|\\n)*/\n"
        f"pre_call[lazy]: TEXT {open_}\n"
        f"TEXT: /(.|\\n)*/\n"
        f"call: {open_} body\n"
        f"body: {body}\n"
        f"SEP: /[ \\n]+/\n"), "tools")


def marker_token(lm, text: str) -> int | None:
    """The id of the single token of ``lm``'s vocabulary that is ``text`` (an added token such as Qwen2.5's
    ``<tool_call>``), or None where ``text`` is written in several tokens."""
    tok = lm.tokenizer
    try:
        ids = tok.encode(text, add_special_tokens=False)
    except TypeError:
        ids = tok.encode(text)
    if len(ids) != 1:
        return None
    added = getattr(getattr(tok, "_tokenizer", tok), "added_tokens_decoder", None) or {}
    return ids[0] if ids[0] in added and tok.decode(ids) == text else None


# -- the tokenizer, once per local model ---------------------------------------------------------------------
_TOKENIZERS: dict[int, Any] = {}
_TOKENIZERS_LOCK = threading.Lock()


def _vocab_size(lm) -> int:
    n = (lm.config or {}).get("vocab_size") if hasattr(lm, "config") else None
    return int(n or len(lm.tokenizer.get_vocab()))


def grammar_tokenizer(lm):
    """llguidance's view of ``lm``'s tokenizer (built once per model: about 0.3 s for a 49k vocabulary)."""
    with _TOKENIZERS_LOCK:
        tok = _TOKENIZERS.get(id(lm))
        if tok is None:
            import llguidance.hf

            hf = getattr(lm.tokenizer, "_tokenizer", lm.tokenizer)
            try:
                tok = llguidance.hf.from_tokenizer(hf, n_vocab=_vocab_size(lm), eos_token=sorted(lm.eos_token_ids))
            except (ValueError, TypeError) as exc:
                raise GrammarError(f"constrained decoding needs a fast (Rust) tokenizer: {exc}") from exc
            _TOKENIZERS[id(lm)] = tok
        return tok


class GrammarState:
    """One answer's position in a grammar: the mask for the next token, and what it has consumed."""

    def __init__(self, lm, constraint: Constraint):
        import llguidance

        self.constraint = constraint
        self.vocab = _vocab_size(lm)
        self.eos = frozenset(lm.eos_token_ids)
        self.tokenizer = grammar_tokenizer(lm)
        self.matcher = llguidance.LLMatcher(self.tokenizer, constraint.lark, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"bad grammar: {self.matcher.get_error()}")
        self.consumed = 0  # tokens consumed (answer + draft)
        self._moves = 0  # consumes and rollbacks: the position's version, for the closing plan's cache
        self._plan: tuple[int, list[int] | None] | None = None  # (version, plan)
        self._chars: tuple[list[int], dict[int, bytes]] | None = None
        self._watch_from = 0  # below this many tokens left, the plan is looked at every token
        self._looked_at = -WATCH  # the position (``_moves``) where it was last looked at

    # -- the mask ----------------------------------------------------------------------------------------------
    def allowed_numpy(self, budget: int | None = None):
        """(vocab,) bool numpy array: the tokens the grammar accepts next. ``budget``: the tokens the answer may
        still take, this one included; a forced structure near its end allows only its closing (``closing``)."""
        import numpy as np

        plan = self.closing(budget)
        if plan:
            mask = np.zeros(self.vocab, dtype=bool)
            mask[plan[0]] = True
            return mask
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[: self.vocab].astype(bool)
        if not mask.any():  # an error state: only the end is left
            mask[sorted(self.eos)] = True
        return mask

    def allowed(self, budget: int | None = None):
        """The mask as an MLX bool array (what ``StepDecoder.constrain`` takes)."""
        import mlx.core as mx

        return mx.array(self.allowed_numpy(budget))

    # -- closing before the token limit (closing.py) ----------------------------------------------------------
    def plan(self) -> list[int] | None:
        """A short completion from here ([] when complete; None when none is found): cached per position."""
        if self._plan is None or self._plan[0] != self._moves:
            if self._chars is None:
                self._chars = char_tokens(self.tokenizer, self.constraint.markers)
            self._plan = (self._moves, closing_plan(self.matcher, self.tokenizer, *self._chars))
        return self._plan[1]

    def closing(self, budget: int | None) -> list[int] | None:
        """The completion to follow now, or None: a forced structure whose tokens left (``budget``) are down to
        its closing plan's length plus ``SLACK``. The plan is looked at every ``WATCH`` tokens, and every token
        once the budget is within ``WATCH`` of it."""
        if budget is None or not self.constraint.forced:
            return None
        if budget > self._watch_from and self._moves - self._looked_at < WATCH:
            return None
        plan = self.plan()
        self._looked_at = self._moves
        if plan is None:
            return None
        self._watch_from = len(plan) + SLACK + WATCH
        return plan if plan and budget <= len(plan) + SLACK else None

    def fits(self, budget: int) -> bool:
        """The structure can still be closed within ``budget`` tokens from here (True for free text)."""
        if not self.constraint.forced:
            return True
        plan = self.plan()
        return plan is None or len(plan) <= budget

    # -- following the answer ----------------------------------------------------------------------------------
    def consume(self, token: int) -> None:
        """Advance by one sampled token (always one the mask allowed). EOS is not consumed: it ends the answer."""
        if token in self.eos:
            return
        if not self.matcher.consume_token(int(token)):
            raise GrammarError(f"token {token} is not valid here: {self.matcher.get_error()}")
        self.consumed += 1
        self._moves += 1
        plan = self._plan[1] if self._plan is not None and self._plan[0] == self._moves - 1 else None
        if plan and plan[0] == token:  # following the plan: the rest of it still completes the structure
            self._plan = (self._moves, plan[1:])

    def rollback(self, n: int) -> None:
        if n <= 0:
            return
        if n > self.consumed or not self.matcher.rollback(n):
            raise GrammarError(f"cannot roll the grammar back {n} of {self.consumed} tokens")
        self.consumed -= n
        self._moves += 1

    def consume_all(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.consume(int(t))

    def valid_prefix(self, tokens: Sequence[int], budget: int | None = None) -> int:
        """How many of ``tokens``, from the current position, the grammar accepts (``budget``: the tokens the
        answer may still take; no more are accepted than leave room to close a forced structure)."""
        tokens = [int(t) for t in tokens]
        n = self.matcher.validate_tokens(tokens) if tokens else 0
        if budget is None or not self.constraint.forced:
            return n
        while n > 0:
            self.consume_all(tokens[:n])
            fits = self.fits(budget - n)
            self.rollback(n)
            if fits:
                break
            n -= 1
        return n

    @property
    def accepting(self) -> bool:
        """The answer so far is complete (the grammar may end here)."""
        return self.matcher.is_accepting()

    @property
    def stopped(self) -> bool:
        """Nothing but the end may follow."""
        return self.matcher.is_stopped()
