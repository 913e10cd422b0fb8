"""A user's own task for router training: prompts, gold answers and an answer check.

``collab router collect --values`` needs to know, for any answer text, whether it is right. A task file is JSONL,
one row per prompt:

* CommonsenseQA rows (``question``, ``choices``, ``answerKey``) -- the built-in check of the answer format;
* ``{"id": ..., "prompt": ..., "answer": ...}`` -- ``prompt`` is a string (chat-templated for the local model) or
  a message list; ``answer`` is the gold answer, read by the check.

Checks (``answer_check``), given as a string:

* ``contains`` (the default): the gold answer appears in the answer as a whole word or phrase, ignoring case;
* ``regex:PATTERN``: the *last* match of PATTERN in the answer (its first group if it has one) equals the gold
  answer, ignoring case and surrounding space;
* ``module:function`` (or ``path/to/file.py:function``): an importable Python callable ``f(answer, row) -> bool``.

Nothing here knows the task's wording: the check is the user's, and the router learns from the labels it gives.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from .traces import TraceTask

Check = Callable[[str, dict], bool]


def _contains(answer: str, row: dict) -> bool:
    gold = str(row["answer"]).strip()
    return bool(gold) and re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", answer, re.IGNORECASE) is not None


def _regex(pattern: str) -> Check:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"answer check regex {pattern!r} does not compile: {exc}") from None

    def check(answer: str, row: dict) -> bool:
        found = list(rx.finditer(answer))
        if not found:
            return False
        last = found[-1]
        got = last.group(1) if rx.groups else last.group(0)
        return (got or "").strip().casefold() == str(row["answer"]).strip().casefold()
    return check


def _callable(spec: str) -> Check:
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            loader = importlib.util.spec_from_file_location(Path(where).stem, where)
            if loader is None or loader.loader is None:
                raise ImportError(f"cannot load {where}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        fn = getattr(module, name)
    except (ImportError, AttributeError, OSError) as exc:
        raise ConfigError(f"answer check {spec!r} cannot be imported: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"answer check {spec!r} is not callable")
    return fn


def answer_check(spec: str | None) -> Check:
    """The check named by ``spec`` (see the module docstring)."""
    if spec in (None, "", "contains"):
        return _contains
    if spec.startswith("regex:"):
        return _regex(spec[len("regex:"):])
    if ":" in spec:
        return _callable(spec)
    raise ConfigError(f"unknown answer check {spec!r}: contains, regex:PATTERN or module:function")


def load_tasks(lm, path: str | Path, *, limit: int | None = None, seed: int = 7, fmt: str = "explain",
               check: str | None = None, need_answer: bool = True) -> list[TraceTask]:
    """Tasks from a JSONL file, shuffled with ``seed``, the first ``limit``: CommonsenseQA rows with their
    format's check, or ``{id, prompt, answer}`` rows with ``answer_check(check)``; with ``need_answer=False``,
    ``{id, prompt}`` rows too (no check: disagreement traces only)."""
    from ..prompts import render_prompt
    from . import csqa

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"no task file at {p}")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise ConfigError(f"{p}:{n}: not JSON ({exc})") from None
    random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit else rows
    if rows and "choices" in rows[0] and check is None:
        return [TraceTask(q["id"], csqa.prompt_text(lm, q, fmt), (lambda a, q=q: csqa.is_correct(a, q, fmt)))
                for q in rows]
    fn = answer_check(check)
    tasks = []
    for i, row in enumerate(rows):
        if "prompt" not in row or (need_answer and "answer" not in row):
            raise ConfigError(f"{p}: row {row.get('id', i)!r} needs 'prompt' and 'answer' (or CommonsenseQA fields)")
        tasks.append(TraceTask(str(row.get("id", i)), render_prompt(lm, row["prompt"])[0],
                               (lambda a, row=row: bool(fn(a, row))) if "answer" in row else None))
    return tasks
