"""The cooperative span cache: identical (model, context, span) requests are answered without a call.

In memory (LRU) and optionally on disk (SQLite), shared across requests and engines. LiteLLM's own
``litellm.Cache`` crashed on its first hit in 1.106.x without the proxy extras installed, and keys on the
whole request, so this small cache is used instead.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

from .client import CloudSpan


class SpanCache:
    """LRU of cloud spans, with an optional SQLite file behind it."""

    def __init__(self, max_items: int = 4096, path: str | Path | None = None):
        self.max_items = max_items
        self._mem: OrderedDict[str, CloudSpan] = OrderedDict()
        self._lock = threading.Lock()
        self._db = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS spans (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()

    def get(self, key: str) -> CloudSpan | None:
        with self._lock:
            span = self._mem.get(key)
            if span is not None:
                self._mem.move_to_end(key)
            elif self._db is not None:
                row = self._db.execute("SELECT value FROM spans WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    span = _span_from_json(row[0])
                    self._remember(key, span)
            if span is None:
                return None
        return CloudSpan(**{**asdict(span), "latency_s": 0.0, "cost_usd": 0.0,
                            "input_tokens": 0, "output_tokens": 0})

    def put(self, key: str, span: CloudSpan) -> None:
        """Remember ``span`` -- unless it says nothing (no text and not the end of the answer): a transient
        empty reply must be asked again, not replayed."""
        if not (span.text or span.token_ids or span.ends_answer):
            return
        with self._lock:
            self._remember(key, span)
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO spans VALUES (?, ?)", (key, json.dumps(asdict(span))))
                self._db.commit()

    def _remember(self, key: str, span: CloudSpan) -> None:
        self._mem[key] = span
        self._mem.move_to_end(key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

    def __len__(self) -> int:
        return len(self._mem)


def _span_from_json(blob: str) -> CloudSpan:
    """A stored span; fields of older versions that no longer exist are ignored."""
    known = CloudSpan.__dataclass_fields__
    return CloudSpan(**{k: v for k, v in json.loads(blob).items() if k in known})
