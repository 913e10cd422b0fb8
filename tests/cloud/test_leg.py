"""collab_core.cloud.leg: the cache around each call, failures and the breaker, start/wait -- with a stub client."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from collab_core.cloud.cache import SpanCache
from collab_core.cloud.client import CloudSpan, SpanRequest
from collab_core.cloud.leg import CloudLeg
from collab_core.errors import CloudError
from collab_core.stats import GenerationStats

SPAN = CloudSpan(text=" Paris", finish_reason="length", input_tokens=12, output_tokens=2, cost_usd=0.25,
                 latency_s=0.0, strategy="completion")


def request(partial: str = "The answer is") -> SpanRequest:
    return SpanRequest(messages=[{"role": "user", "content": "Capital of France?"}], prompt_text="Q:",
                       partial=partial)


class StubClient:
    """A cloud client answering from a script: each item is a CloudSpan to return or an exception to raise."""

    def __init__(self, *script, gate: threading.Event | None = None):
        self.script = list(script)
        self.gate = gate
        self.calls: list[tuple[SpanRequest, float | None]] = []

    def cache_key(self, req: SpanRequest) -> str:
        return "key:" + req.partial

    def continue_span(self, req: SpanRequest, deadline: float | None = None) -> CloudSpan:
        self.calls.append((req, deadline))
        if self.gate is not None:
            assert self.gate.wait(30), "the test never released the stub"
        item = self.script.pop(0) if self.script else SPAN
        if isinstance(item, BaseException):
            raise item
        return item


def leg_with(client, cache=None, **kw) -> tuple[CloudLeg, SpanCache, GenerationStats]:
    cache = SpanCache() if cache is None else cache
    stats = GenerationStats()
    return CloudLeg(client, cache, stats, **kw), cache, stats


def flaky(kind="RateLimitError", retryable=True) -> CloudError:
    return CloudError(f"{kind} from the stub", kind=kind, retryable=retryable)


# -- call: the cache and success ------------------------------------------------------------------------------
def test_success_is_counted_and_cached():
    client = StubClient(SPAN)
    leg, cache, stats = leg_with(client)
    span = leg.call(request())
    assert span == SPAN
    assert len(client.calls) == 1
    assert (stats.cloud_calls, stats.cloud_cache_hits, stats.cloud_failures) == (1, 0, 0)
    assert (stats.cloud_input_tokens, stats.cloud_output_tokens, stats.cost_usd) == (12, 2, 0.25)
    assert len(cache) == 1
    assert cache.get("key:The answer is").text == " Paris"
    assert leg.usable()


def test_cache_hit_makes_no_call():
    cache = SpanCache()
    cache.put("key:The answer is", SPAN)
    client = StubClient()
    leg, _, stats = leg_with(client, cache)
    span = leg.call(request())
    assert span is not None and span.text == " Paris"
    assert client.calls == []
    assert (stats.cloud_calls, stats.cloud_cache_hits) == (0, 1)
    assert (stats.cloud_input_tokens, stats.cloud_output_tokens, stats.cost_usd) == (0, 0, 0.0)  # not billed


def test_second_identical_request_is_answered_from_the_cache():
    client = StubClient(SPAN)
    leg, _, stats = leg_with(client)
    first, second = leg.call(request()), leg.call(request())
    assert first.text == second.text == " Paris"
    assert len(client.calls) == 1
    assert (stats.cloud_calls, stats.cloud_cache_hits, stats.cost_usd) == (1, 1, 0.25)
    leg.call(request("Another partial"))  # another key: a call
    assert len(client.calls) == 2


def test_without_a_cache():
    client = StubClient(SPAN, SPAN)
    stats = GenerationStats()
    leg = CloudLeg(client, None, stats)
    assert leg.call(request()) == SPAN and leg.call(request()) == SPAN
    assert (len(client.calls), stats.cloud_calls, stats.cloud_cache_hits) == (2, 2, 0)


def test_empty_span_is_not_cached():
    empty = CloudSpan(text="", finish_reason="length")
    client = StubClient(empty, SPAN)
    leg, cache, _ = leg_with(client)
    assert leg.call(request()) == empty
    assert len(cache) == 0
    assert leg.call(request()) == SPAN  # asked again, not replayed
    assert len(client.calls) == 2


def test_the_deadline_is_passed_to_the_client():
    client = StubClient(SPAN)
    deadline = time.perf_counter() + 3600
    leg, _, _ = leg_with(client, deadline=deadline)
    leg.call(request())
    assert client.calls[0][1] == deadline


# -- failures and the breaker ------------------------------------------------------------------------------------
def test_cloud_error_gives_none_and_is_counted():
    client = StubClient(flaky())
    leg, cache, stats = leg_with(client)
    assert leg.call(request()) is None
    assert (stats.cloud_calls, stats.cloud_failures) == (1, 1)
    assert stats.cloud_errors == ["RateLimitError: RateLimitError from the stub"]
    assert len(cache) == 0
    assert leg.failures_in_row == 1 and leg.off_reason is None and leg.usable()


def test_error_lines_are_truncated():
    client = StubClient(CloudError("x" * 1000, kind="InternalServerError", retryable=True))
    leg, _, stats = leg_with(client)
    leg.call(request())
    assert len(stats.cloud_errors[0]) == 300
    assert stats.cloud_errors[0].startswith("InternalServerError: xxx")


def test_three_failures_in_a_row_switch_the_cloud_off():
    client = StubClient(flaky(), flaky(), flaky())
    leg, _, stats = leg_with(client)
    leg.call(request("a"))
    leg.call(request("b"))
    assert leg.usable() and leg.off_reason is None
    leg.call(request("c"))
    assert leg.off_reason == "3 failures in a row"
    assert not leg.usable()
    assert stats.cloud_failures == 3 and len(stats.cloud_errors) == 3


def test_a_success_resets_the_failure_count():
    client = StubClient(flaky(), flaky(), SPAN, flaky(), flaky())
    leg, _, stats = leg_with(client)
    for partial in "abcde":
        leg.call(request(partial))
    assert leg.failures_in_row == 2
    assert leg.off_reason is None and leg.usable()
    assert stats.cloud_failures == 4


def test_a_cache_hit_resets_the_failure_count_as_the_call_it_saves_did():
    """A request run again with the first run's spans cached meets the same breaker: the soak's solo runs switched
    the cloud off after three failures that its concurrent run had met with successful calls in between."""
    client = StubClient(flaky(), SPAN, flaky(), SPAN, flaky())
    first, cache, _ = leg_with(client)
    for partial in "abcde":
        first.call(request(partial))
    again, _, stats = leg_with(StubClient(flaky(), flaky(), flaky()), cache=cache)
    for partial in "abcde":  # b and d from the cache, a, c and e fail again
        again.call(request(partial))
    assert (stats.cloud_cache_hits, stats.cloud_failures) == (2, 3)
    assert again.failures_in_row == first.failures_in_row == 1
    assert again.off_reason is None and again.usable()


@pytest.mark.parametrize("kind", ["AuthenticationError", "PermissionDeniedError", "NotFoundError"])
def test_a_fatal_error_switches_the_cloud_off_at_once(kind):
    client = StubClient(flaky(kind, retryable=False))
    leg, _, stats = leg_with(client)
    assert leg.call(request()) is None
    assert leg.off_reason == kind
    assert not leg.usable()
    assert stats.cloud_failures == 1


def test_a_non_retryable_error_of_another_kind_is_not_fatal():
    client = StubClient(flaky("BadRequestError", retryable=False))
    leg, _, _ = leg_with(client)
    leg.call(request())
    assert leg.off_reason is None and leg.usable()


def test_max_calls_reached_makes_the_leg_unusable():
    client = StubClient(SPAN, SPAN)
    leg, _, _ = leg_with(client, max_calls=2)
    assert leg.usable()
    leg.call(request("a"))
    assert leg.usable()
    leg.call(request("a"))  # a cache hit counts towards max_calls too
    assert not leg.usable()
    assert leg.off_reason is None  # not a breaker: nothing recorded


def test_a_passed_deadline_makes_the_leg_unusable():
    leg, _, _ = leg_with(StubClient(), deadline=time.perf_counter() - 1)
    assert not leg.usable()


# -- on_error: one retry after a repair -------------------------------------------------------------------------
def test_on_error_true_retries_once():
    client = StubClient(flaky("APIConnectionError"), SPAN)
    leg, cache, stats = leg_with(client)
    seen = []
    span = leg.call(request(), on_error=lambda exc: seen.append(exc.kind) or True)
    assert span == SPAN
    assert seen == ["APIConnectionError"]
    assert len(client.calls) == 2
    assert (stats.cloud_calls, stats.cloud_failures) == (2, 1)
    assert leg.failures_in_row == 0
    assert len(cache) == 1


def test_on_error_true_retries_only_once():
    client = StubClient(flaky(), flaky(), SPAN)
    leg, _, stats = leg_with(client)
    seen = []
    assert leg.call(request(), on_error=lambda exc: seen.append(exc) or True) is None
    assert len(seen) == 1  # not asked again after the retry failed
    assert len(client.calls) == 2
    assert (stats.cloud_calls, stats.cloud_failures) == (2, 2)


def test_on_error_false_does_not_retry():
    client = StubClient(flaky(), SPAN)
    leg, _, stats = leg_with(client)
    seen = []
    assert leg.call(request(), on_error=lambda exc: seen.append(exc) or False) is None
    assert len(seen) == 1
    assert len(client.calls) == 1
    assert (stats.cloud_calls, stats.cloud_failures) == (1, 1)


# -- start / wait ---------------------------------------------------------------------------------------------------
@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


def test_start_without_submit_is_refused():
    client = StubClient()
    leg, _, _ = leg_with(client)
    with pytest.raises(RuntimeError, match="submit"):
        leg.start(request(), answer_len=3)
    assert client.calls == []


def test_start_and_wait(pool):
    client = StubClient(SPAN)
    leg, cache, stats = leg_with(client, submit=pool.submit)
    pending = leg.start(request(), answer_len=3)
    assert pending.answer_len == 3 and pending.key == "key:The answer is" and pending.span is None
    assert leg.wait(pending) == SPAN
    assert pending.ready
    assert (stats.cloud_calls, stats.cloud_failures, stats.cost_usd) == (1, 0, 0.25)
    assert len(cache) == 1
    # the same request again: answered from the cache, no future
    again = leg.start(request(), answer_len=3)
    assert again.future is None and again.ready and again.key is None
    assert leg.wait(again).text == " Paris"
    assert len(client.calls) == 1 and stats.cloud_cache_hits == 1


def test_wait_counts_a_cloud_error(pool):
    client = StubClient(flaky("AuthenticationError", retryable=False))
    leg, _, stats = leg_with(client, submit=pool.submit)
    assert leg.wait(leg.start(request(), answer_len=0)) is None
    assert leg.off_reason == "AuthenticationError"
    assert stats.cloud_failures == 1 and stats.cloud_errors[0].startswith("AuthenticationError: ")


def test_wait_counts_any_other_exception(pool):
    client = StubClient(KeyError("boom"))
    leg, _, stats = leg_with(client, submit=pool.submit)
    assert leg.wait(leg.start(request(), answer_len=0)) is None
    assert stats.cloud_failures == 1
    assert stats.cloud_errors[0].startswith("KeyError: ")
    assert leg.off_reason is None


def test_wait_past_the_deadline_gives_none_and_switches_off(pool):
    gate = threading.Event()
    client = StubClient(SPAN, gate=gate)
    leg, cache, stats = leg_with(client, submit=pool.submit, deadline=time.perf_counter() - 1)
    try:
        pending = leg.start(request(), answer_len=5)
        assert leg.wait(pending) is None
        assert leg.off_reason == "deadline"
        assert not leg.usable()
        assert stats.cloud_calls == 1 and stats.cloud_failures == 1
        assert stats.cloud_errors[0].startswith("deadline: ")
    finally:
        gate.set()
    pending.future.result(timeout=30)  # the late call finishes ...
    assert len(cache) == 0 and stats.cost_usd == 0.0  # ... and is neither stored nor billed here
