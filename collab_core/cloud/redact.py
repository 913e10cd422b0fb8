"""Redaction: what the cloud must not read never leaves the machine.

Every text the cloud leg sends (the conversation, the rendered prompt, the answer so far) goes through the
redactor first, in ``CloudClient.build``; every span that comes back goes through ``restore``, so a span that
repeats a placeholder (``<EMAIL_1>``) puts the original back into the answer, which never leaves the machine.

* ``Redactor`` -- the default: emails, phone numbers and API-key-like strings (``sk-...``, ``AKIA...``,
  ``ghp_...``, ``Bearer ...``, long mixed letter-and-digit tokens) become numbered placeholders. The same
  value always gets the same placeholder (per redactor, i.e. per engine), so a redacted prompt is the same
  text on every call of an answer and on later turns: a provider's prefix cache still hits.
* any function ``str -> str`` -- a user's own redactor (``FunctionRedactor``): applied to every text sent,
  nothing restored (unless it is a ``Redactor`` subclass or has its own ``restore``).

``make_redactor(spec)`` turns a setting (``None``, ``"default"``, ``"none"``, a function, a redactor) into
one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

#: (kind, pattern), tried in this order: a key before a phone number (keys hold digit runs).
PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    ("KEY", re.compile(
        r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic / Stripe-like
        r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
        r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
        r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
        r"|(?<=Bearer )[A-Za-z0-9._~+/=-]{16,}"  # a bearer token
        r"|\b(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}\b"  # long letters+digits
    )),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}(?!\w)")),
)
_MIN_PHONE_DIGITS = 7
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")  # dates are not phone numbers
_PLACEHOLDER = re.compile(r"<(EMAIL|KEY|PHONE)_(\d+)>")


class Redactor:
    """The default redactor: numbered placeholders for emails, phone numbers and API-key-like strings.

    ``redact(text)`` replaces them; ``restore(text)`` puts the originals back. Thread-safe; one per engine.
    """

    def __init__(self, patterns: tuple[tuple[str, re.Pattern], ...] = PATTERNS):
        self.patterns = patterns
        self._by_value: dict[str, str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _placeholder(self, kind: str, value: str) -> str:
        with self._lock:
            ph = self._by_value.get(value)
            if ph is None:
                self._counts[kind] = self._counts.get(kind, 0) + 1
                ph = f"<{kind}_{self._counts[kind]}>"
                self._by_value[value] = ph
                self._by_placeholder[ph] = value
            return ph

    def redact(self, text: str) -> str:
        for kind, pattern in self.patterns:
            def sub(m: re.Match, kind=kind) -> str:
                value = m.group(0)
                if kind == "PHONE" and (sum(c.isdigit() for c in value) < _MIN_PHONE_DIGITS
                                        or _DATE.fullmatch(value)):
                    return value
                return self._placeholder(kind, value)

            text = pattern.sub(sub, text)
        return text

    def restore(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self._by_placeholder.get(m.group(0), m.group(0)), text)

    __call__ = redact


class FunctionRedactor:
    """A user's function ``str -> str`` over every text sent to the cloud (nothing to restore)."""

    def __init__(self, fn: Callable[[str], str], restore: Callable[[str], str] | None = None):
        self.fn = fn
        self._restore = restore

    def redact(self, text: str) -> str:
        out = self.fn(text)
        if not isinstance(out, str):
            raise ConfigError(f"the redaction function must return a str, not {type(out).__name__}")
        return out

    def restore(self, text: str) -> str:
        return self._restore(text) if self._restore is not None else text

    __call__ = redact


def make_redactor(spec: Any) -> Redactor | FunctionRedactor | None:
    """``None``/``"none"``: no redaction; ``"default"``: a ``Redactor``; an object with ``redact`` (and maybe
    ``restore``) is used as is; any other callable is a ``FunctionRedactor``."""
    if spec is None or spec is False or spec == "none":
        return None
    if spec is True or spec == "default":
        return Redactor()
    if hasattr(spec, "redact") and callable(spec.redact):
        return spec if hasattr(spec, "restore") else FunctionRedactor(spec.redact)
    if callable(spec):
        return FunctionRedactor(spec)
    raise ConfigError(f"redact must be 'default', 'none', a function str -> str or a redactor, not {spec!r}")


def redact_messages(redactor, messages: list[dict]) -> list[dict]:
    """``messages`` with every text redacted (string contents and text blocks); other fields untouched."""
    out = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if isinstance(content, str):
            m["content"] = redactor.redact(content)
        elif isinstance(content, list):
            m["content"] = [{**b, "text": redactor.redact(b["text"])} if isinstance(b, dict) and
                            isinstance(b.get("text"), str) else b for b in content]
        out.append(m)
    return out
