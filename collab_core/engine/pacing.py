"""Pacing the async pipeline's draft: hold back a forward pass that the cloud's reply will likely make useless.

While a span is in flight the local model drafts, one forward pass per token. A pass still running when the reply
arrives pays only if the cloud agreed (the draft is kept). Where it disagreed, the pass is thrown away, and the pass
that feeds the cloud's tokens waits behind it: a running MLX evaluation cannot be stopped. So just before the
reply, a pass is a bet. ``Pacer`` keeps what it takes to weigh it, per engine: when the replies of the last
``window`` spans arrived (from sending), the share of spans whose draft was kept, and how long a draft pass takes.
Before each draft pass, ``hold(elapsed)`` says how long to wait for the reply instead (0: run the pass now).

It holds only against a steady cloud: the middle 80% of the recent replies (``lo`` to ``hi`` after sending)
within half a pass (``d``) of each other -- where the latency spreads wider (most hosted APIs), it never holds.
There, ``elapsed`` after sending, with the whole window ahead within the next pass, a pass started now would
run past the reply by ``d - a`` (``a``: the expected wait, to the window's middle): kept (the keep share ``p``)
it is of use, refused it is thrown away and delays the feed. Waiting instead costs ``a`` where the draft is
kept and saves ``d - a`` where it is not, so it holds, until ``hi``, where ``(1 - p) * (d - a) > p * a``, that
is ``a < (1 - p) * d``. Holding only changes when a pass runs, never what is decoded: answers are the same with
and without it.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque


class Pacer:
    """What the async pipeline has seen of its cloud and its own passes; ``hold`` decides. Thread-safe."""

    def __init__(self, *, window: int = 32, min_spans: int = 8, prior_keep: float = 0.5, slack_s: float = 0.002):
        self.min_spans = min_spans
        self.prior_keep = prior_keep
        self.slack_s = slack_s
        self._arrivals: deque[float] = deque(maxlen=window)  # seconds from sending a span to its reply
        self._kept: deque[bool] = deque(maxlen=window)
        self._passes: deque[float] = deque(maxlen=16)  # the last draft passes' durations
        self._lock = threading.Lock()

    def arrived(self, seconds: float) -> None:
        with self._lock:
            self._arrivals.append(seconds)

    def settled(self, kept: bool) -> None:
        """A span settled against a draft of more than its first token: was the draft kept?"""
        with self._lock:
            self._kept.append(kept)

    def passed(self, seconds: float) -> None:
        """One draft pass took ``seconds`` (from queuing it to its token read)."""
        with self._lock:
            self._passes.append(seconds)

    @property
    def arrivals(self) -> tuple[float, ...]:
        return tuple(self._arrivals)

    @property
    def pass_s(self) -> float | None:
        """A draft pass, the median of the last ones (None before the first)."""
        passes = list(self._passes)
        return statistics.median(passes) if passes else None

    @property
    def keep_share(self) -> float:
        k = self._kept
        return (sum(k) + 2 * self.prior_keep) / (len(k) + 2)

    def hold(self, elapsed: float) -> float:
        """Seconds to wait for the reply before the next draft pass (0: run it now), ``elapsed`` seconds after
        the span was sent."""
        with self._lock:
            d, arrivals, p = self.pass_s, sorted(self._arrivals), self.keep_share
        if d is None or len(arrivals) < self.min_spans:
            return 0.0
        cut = len(arrivals) // 10  # the middle 80% (a first call's connection set-up is an outlier)
        lo, hi = arrivals[cut], arrivals[-1 - cut]
        if hi - lo > d / 2 or elapsed >= hi or hi - elapsed > d:  # not steady; late; or not due within a pass
            return 0.0
        a = (max(elapsed, lo) + hi) / 2 - elapsed
        return hi - elapsed + self.slack_s if a < (1 - p) * d else 0.0
