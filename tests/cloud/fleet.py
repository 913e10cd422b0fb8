"""Two fake cloud servers behind one model group, and a way to kill one mid-run (shared by the Router and proxy
tests and by benchmarks/scaleout.py's idea of it)."""

from __future__ import annotations

import re
import threading

from collab_core.devtools.fakecloud import FakeCloud

GROUP = "span"
_RESTATE = re.compile(r'Begin your answer with exactly these words: "(.*)"\s*$', re.S)


def reply(body: dict) -> str:
    """A text completion goes on with " the sea"; a chat request (the restate protocol) restates the answer so
    far and goes on."""
    if "messages" in body:
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else "".join(b.get("text", "") for b in last)
        m = _RESTATE.search(text)
        return (m.group(1) + " the sea") if m else "The sea"
    return " the sea"


class Fleet:
    """Two FakeClouds; ``kill_after(n)``: the second dies (connections cut) once the two have had ``n`` requests."""

    def __init__(self, latency_s: float = 0.0):
        self.a = FakeCloud(reply=self._reply, latency_s=latency_s).start()
        self.b = FakeCloud(reply=self._reply, latency_s=latency_s).start()
        self.b_url = self.b.url
        self._kill_at: int | None = None
        self.killed = threading.Event()
        self._lock = threading.Lock()

    def _reply(self, body: dict) -> str:
        with self._lock:
            n = len(self.a.requests) + len(self.b.requests)
            if self._kill_at is not None and n >= self._kill_at and not self.killed.is_set():
                self.killed.set()
                threading.Thread(target=self.b.kill, daemon=True).start()
        return reply(body)

    def kill_after(self, n: int) -> None:
        self._kill_at = n

    @property
    def urls(self) -> list[str]:
        return [self.a.url, self.b_url]

    def deployments(self, model: str = "text-completion-openai/fake") -> list[dict]:
        return [{"model_name": GROUP, "litellm_params": {"model": model, "api_base": url, "api_key": "sk-fake"}}
                for url in self.urls]

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
