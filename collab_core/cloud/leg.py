"""One generation's use of the cloud: the cache around each call, submission, waiting, failures, the breaker.

``CloudLeg`` wraps a ``CloudClient`` and a ``SpanCache`` for one generation (or one trace collection) and
writes what happens into that generation's ``GenerationStats``:

* ``start(req)`` answers from the cache or submits the call to a worker and returns a ``Pending``;
  ``wait(pending)`` blocks for it until the request's deadline; ``call(req)`` does both, in this thread;
* a failed, late or empty call is counted (``cloud_failures``, ``cloud_errors``) and gives ``None``: the
  caller uses its local token;
* the breaker: three failures in a row, an authentication/permission/not-found error or a passed deadline
  switch the cloud off for the rest of the generation (``off_reason``; ``usable()`` is then False), as does
  reaching ``max_calls``;
* money: the request's ``max_cost_usd`` (``max_cloud_cost_usd``) or the engine's ``SpendLimit``
  (``max_spend_usd``) reached switches it off too (``off_reason`` says which). Costs are known once a span is
  back, so the call that crosses a limit is the last one: a limit is overshot by at most the spans in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CloudError
from ..stats import GenerationStats
from .cache import SpanCache
from .client import CloudClient, CloudSpan, SpanRequest

Submit = Callable[..., cf.Future]
_FATAL = ("AuthenticationError", "PermissionDeniedError", "NotFoundError")


@dataclass
class Pending:
    """A span on its way: answered from the cache (``span``) or a call in flight (``future``)."""

    future: cf.Future | None
    span: CloudSpan | None
    key: str | None  # where to store the answer (None when it came from the cache)
    answer_len: int  # answer tokens when the request was made
    submitted: float
    arrived: float | None = None  # when the call's future completed (time.perf_counter())

    @property
    def ready(self) -> bool:
        return self.span is not None or self.future.done()

    def wait_for(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the span; whether it is ready."""
        if self.future is not None and not self.future.done():
            cf.wait([self.future], timeout=timeout)
        return self.ready

    def _arrive(self, _future: cf.Future) -> None:
        self.arrived = time.perf_counter()

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


class SpendLimit:
    """What an engine spent on the cloud over all its requests, and its limit (None: no limit). Thread-safe."""

    def __init__(self, limit_usd: float | None = None):
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self._lock = threading.Lock()

    def add(self, cost_usd: float) -> None:
        with self._lock:
            self.spent_usd += cost_usd

    @property
    def reached(self) -> bool:
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd


class CloudLeg:
    MAX_CONSECUTIVE_FAILURES = 3

    def __init__(self, client: CloudClient, cache: SpanCache | None, stats: GenerationStats, *,
                 submit: Submit | None = None, deadline: float | None = None, max_calls: int | None = None,
                 max_cost_usd: float | None = None, spend: SpendLimit | None = None):
        self.client, self.cache, self.stats = client, cache, stats
        self.submit = submit
        self.deadline = deadline  # time.perf_counter() value after which the cloud is not waited for
        self.max_calls = max_calls
        self.max_cost_usd = max_cost_usd  # this request's cost cap
        self.spend = spend  # the engine's spend and its limit
        self.failures_in_row = 0
        self.off_reason: str | None = None

    def usable(self) -> bool:
        if self.off_reason:
            return False
        if self.max_cost_usd is not None and self.stats.cost_usd >= self.max_cost_usd:
            self.off_reason = (f"cost cap reached: ${self.stats.cost_usd:.6f} spent, "
                               f"max_cloud_cost_usd={self.max_cost_usd:g}")
            return False
        if self.spend is not None and self.spend.reached:
            self.off_reason = (f"engine spend limit reached: ${self.spend.spent_usd:.6f} spent, "
                               f"max_spend_usd={self.spend.limit_usd:g}")
            return False
        if self.max_calls is not None and self.stats.cloud_calls + self.stats.cloud_cache_hits >= self.max_calls:
            return False
        return self.deadline is None or time.perf_counter() < self.deadline

    # -- the cache around a call -------------------------------------------------------------------------------
    def _lookup(self, req: SpanRequest) -> tuple[str, CloudSpan | None]:
        key = self.client.cache_key(req)
        span = self.cache.get(key) if self.cache is not None else None
        if span is not None:  # an answer as a call's is: it breaks a run of failures (a run that found the span
            self.stats.cloud_cache_hits += 1  # cached meets the breaker's decisions of one that called)
            self.failures_in_row = 0
        return key, span

    def _received(self, span: CloudSpan, key: str | None, waited: float) -> None:
        s = self.stats
        s.time_cloud_hidden_s += max(0.0, span.latency_s - waited)
        s.cloud_input_tokens += span.input_tokens
        s.cloud_output_tokens += span.output_tokens
        s.cloud_cached_input_tokens += span.cached_input_tokens
        s.cloud_cache_write_tokens += span.cache_write_tokens
        s.cost_usd += span.cost_usd
        s.cloud_rerouted += span.rerouted
        if span.deployment:
            s.cloud_deployments[span.deployment] = s.cloud_deployments.get(span.deployment, 0) + 1
        if self.spend is not None:
            self.spend.add(span.cost_usd)
        self.failures_in_row = 0
        if self.cache is not None and key is not None:
            self.cache.put(key, span)

    def _call(self, req: SpanRequest) -> CloudSpan:
        return self.client.continue_span(req, deadline=self.deadline)

    # -- asynchronous: start, then wait --------------------------------------------------------------------------
    def start(self, req: SpanRequest, answer_len: int) -> Pending:
        key, span = self._lookup(req)
        now = time.perf_counter()
        if span is not None:
            return Pending(None, span, None, answer_len, now)
        if self.submit is None:
            raise RuntimeError("CloudLeg.start needs a submit function (use call() in this thread)")
        self.stats.cloud_calls += 1
        pending = Pending(self.submit(self._call, req), None, key, answer_len, now)
        pending.future.add_done_callback(pending._arrive)
        return pending

    def wait(self, pending: Pending, since: float | None = None) -> CloudSpan | None:
        """The span, or None when the call failed or the deadline passed (counted); ``since``: when the wait
        began, if it was waited for elsewhere (the loop waits for the future, then asks here)."""
        if pending.span is not None:
            return pending.span
        t = time.perf_counter() if since is None else since
        timeout = None if self.deadline is None else max(0.0, self.deadline - time.perf_counter())
        try:
            span = pending.future.result(timeout=timeout)
        except cf.TimeoutError:
            self.failed("deadline", "the request deadline passed while waiting for the cloud")
            span = None
        except CloudError as exc:
            self.failed(exc.kind, str(exc), retryable=exc.retryable)
            span = None
        except Exception as exc:  # noqa: BLE001 - any other failure of the call: the local token is used
            self.failed(type(exc).__name__, str(exc))
            span = None
        waited = time.perf_counter() - t
        self.stats.time_cloud_wait_s += waited
        if span is not None:
            self._received(span, pending.key, waited)
        return span

    # -- synchronous -----------------------------------------------------------------------------------------------
    def call(self, req: SpanRequest, *, on_error: Callable[[CloudError], bool] | None = None) -> CloudSpan | None:
        """One span, in this thread. ``on_error`` may repair the cloud (restart a dead server) and return True
        to have the call made once more."""
        key, span = self._lookup(req)
        if span is not None:
            return span
        for attempt in (0, 1):
            self.stats.cloud_calls += 1
            t = time.perf_counter()
            try:
                span = self._call(req)
            except CloudError as exc:
                self.failed(exc.kind, str(exc), retryable=exc.retryable)
                if attempt or on_error is None or not on_error(exc):
                    return None
                continue
            self._received(span, key, time.perf_counter() - t)
            return span
        return None  # pragma: no cover - the loop always returns

    # -- failures and the breaker ----------------------------------------------------------------------------------
    def failed(self, kind: str, message: str, retryable: bool = True) -> None:
        s = self.stats
        s.cloud_failures += 1
        s.cloud_errors.append(f"{kind}: {message}"[:300])
        self.failures_in_row += 1
        if not retryable and kind in _FATAL:
            self.off_reason = kind
        elif kind == "deadline":
            self.off_reason = "deadline"
        elif self.failures_in_row >= self.MAX_CONSECUTIVE_FAILURES:
            self.off_reason = f"{self.failures_in_row} failures in a row"
