"""The cloud leg against a real HTTP peer on loopback (collab_core.devtools.fakecloud.FakeCloud) with injected faults.

Every fault must leave a complete answer (the local token is used), counted in the stats.
"""

import socket

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CloudConfigError
from collab_core.router import ScheduledRouter

PROMPT = "What is the capital of France?"
MODEL = "text-completion-openai/fake"


@pytest.fixture()
def fake():
    with FakeCloud(reply=" Paris is", timeout_sleep_s=1.5) as fc:
        yield fc


def _engine(lm, fc, positions=(3,), pipeline="sync", **cloud_kw):
    cloud = CloudConfig(model=MODEL, api_base=fc.url if fc else "http://127.0.0.1:9/v1", **cloud_kw)
    return Engine(lm, cloud=cloud, router=ScheduledRouter(positions), pipeline=pipeline, cache=False)


def _local_text(lm, n=20):
    return Engine(lm).generate(PROMPT, max_tokens=n).text


def test_span_is_spliced_in_and_counted(tiny_lm, fake):
    gen = _engine(tiny_lm, fake).generate(PROMPT, max_tokens=20)
    assert len(fake.requests) == 1
    cloud = "".join(e.text for e in gen.events if e.source == "cloud")
    assert cloud.strip() == "Paris"  # " Paris is" cut back to a word boundary (finish_reason=length)
    local_prefix = "".join(e.text for e in gen.events[:3])
    assert gen.text.startswith(local_prefix + " Paris")
    s = gen.stats
    assert s.cloud_calls == 1 and s.cloud_tokens == sum(e.source == "cloud" for e in gen.events) > 0
    assert s.total_tokens == 20 and s.cloud_failures == 0
    assert s.cloud_input_tokens > 0 and s.cloud_output_tokens > 0


@pytest.mark.parametrize("faults", [["429"], ["500"], ["503", "429"]])
def test_retryable_errors_are_retried_then_succeed(tiny_lm, fake, faults):
    fake.faults.extend(faults)
    gen = _engine(tiny_lm, fake).generate(PROMPT, max_tokens=12)
    assert len(fake.requests) == len(faults) + 1
    assert gen.stats.cloud_failures == 0 and gen.stats.cloud_tokens > 0


@pytest.mark.parametrize("fault", ["500", "timeout", "garbled", "empty", "cut", "nochoices"])
def test_faults_fall_back_to_the_local_token(tiny_lm, fake, fault):
    fake.faults.extend([fault] * 3)
    eng = _engine(tiny_lm, fake, timeout_s=0.3)
    gen = eng.generate(PROMPT, max_tokens=20)
    assert gen.text == _local_text(tiny_lm)  # nothing lost, nothing added
    assert gen.stats.total_tokens == 20 and gen.stats.cloud_tokens == 0
    assert gen.stats.cloud_failures == 1 and gen.stats.cloud_errors
    assert all(e.source == "local" for e in gen.events)


def test_refused_connection_falls_back(tiny_lm):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cloud = CloudConfig(model=MODEL, api_base=f"http://127.0.0.1:{port}/v1", max_retries=1)
    gen = Engine(tiny_lm, cloud=cloud, router=ScheduledRouter([2]), pipeline="sync").generate(PROMPT, max_tokens=20)
    assert gen.text == _local_text(tiny_lm)
    assert gen.stats.cloud_failures == 1 and "Connection" in gen.stats.cloud_errors[0]


def test_non_retryable_auth_error_is_not_retried_and_disables_the_cloud(tiny_lm, fake):
    fake.faults.append("401")
    gen = _engine(tiny_lm, fake, positions=(2, 5, 8)).generate(PROMPT, max_tokens=20)
    assert len(fake.requests) == 1  # no retry, and no further calls in this request
    assert gen.stats.cloud_failures == 1 and gen.stats.cloud_disabled_reason == "AuthenticationError"
    assert gen.text == _local_text(tiny_lm)


def test_consecutive_failures_open_the_circuit(tiny_lm, fake):
    fake.faults.extend(["500"] * 30)
    gen = _engine(tiny_lm, fake, positions=range(0, 20), max_retries=0).generate(PROMPT, max_tokens=20)
    assert gen.stats.cloud_calls == 3 and gen.stats.cloud_failures == 3
    assert gen.stats.cloud_disabled_reason == "3 failures in a row"
    assert gen.text == _local_text(tiny_lm)


def test_deadline_stops_waiting_for_the_cloud(tiny_lm):
    with FakeCloud(reply=" Paris", latency_s=1.0) as slow:
        eng = _engine(tiny_lm, slow, positions=(2, 6))
        gen = eng.generate(PROMPT, max_tokens=20, deadline_s=0.4)
    assert gen.text == _local_text(tiny_lm)
    assert gen.stats.cloud_failures == 1 and gen.stats.cloud_disabled_reason == "deadline"
    assert gen.stats.time_cloud_wait_s < 0.8


def test_cap_on_cloud_calls_and_local_only_switch(tiny_lm, fake):
    eng = _engine(tiny_lm, fake, positions=(1, 4, 8, 12))
    gen = eng.generate(PROMPT, max_tokens=20, max_cloud_calls=2)
    assert gen.stats.cloud_calls == 2 and len(fake.requests) == 2
    local = eng.generate(PROMPT, max_tokens=20, local_only=True)
    assert local.stats.cloud_calls == 0 and len(fake.requests) == 2
    assert local.text == _local_text(tiny_lm)


def test_cache_answers_identical_requests(tiny_lm, fake):
    eng = Engine(tiny_lm, cloud=MODEL, api_base=fake.url, router=ScheduledRouter([3]), pipeline="sync")
    first = eng.generate(PROMPT, max_tokens=12)
    second = eng.generate(PROMPT, max_tokens=12)
    assert len(fake.requests) == 1
    assert second.text == first.text
    assert first.stats.cloud_calls == 1 and second.stats.cloud_calls == 0 and second.stats.cloud_cache_hits == 1
    assert second.stats.cloud_tokens == first.stats.cloud_tokens > 0


def test_disk_cache_survives_a_new_engine(tiny_lm, fake, tmp_path):
    from collab_core.cloud.cache import SpanCache

    for _ in range(2):
        eng = Engine(tiny_lm, cloud=MODEL, api_base=fake.url, router=ScheduledRouter([3]), pipeline="sync",
                     cache=SpanCache(path=tmp_path / "spans.sqlite"))
        gen = eng.generate(PROMPT, max_tokens=12)
    assert len(fake.requests) == 1 and gen.stats.cloud_cache_hits == 1


def test_cloud_stop_ends_the_answer(tiny_lm):
    with FakeCloud(reply=" Paris.", finish_reason="stop") as fc:
        gen = _engine(tiny_lm, fc, positions=(3,)).generate(PROMPT, max_tokens=30)
    assert gen.text.endswith(" Paris.") and gen.finish_reason == "stop"
    assert gen.stats.total_tokens < 30


def test_stop_sequence_inside_a_cloud_span(tiny_lm):
    with FakeCloud(reply=" Paris END more") as fc:
        eng = _engine(tiny_lm, fc, positions=(3,), span_tokens=8)
        gen = eng.generate(PROMPT, max_tokens=30, stop=["END"])
    assert gen.finish_reason == "stop" and gen.text.endswith(" Paris ") and "END" not in gen.text


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_pipelines_give_the_same_answer(tiny_lm, pipeline):
    with FakeCloud(reply=" Paris is", latency_s=0.3) as fc:
        gen = _engine(tiny_lm, fc, positions=(3, 10), pipeline=pipeline).generate(PROMPT, max_tokens=24)
    with FakeCloud(reply=" Paris is") as fc:
        ref = _engine(tiny_lm, fc, positions=(3, 10), pipeline="sync").generate(PROMPT, max_tokens=24)
    assert gen.text == ref.text
    assert gen.stats.cloud_calls == 2
    if pipeline == "async":
        # the local model drafted while the cloud was busy (the tiny model drafts its 8 tokens in a few ms),
        # and the disagreeing drafts were rolled back
        assert gen.stats.time_cloud_hidden_s > 0 and gen.stats.rollbacks > 0
    else:
        assert gen.stats.time_cloud_hidden_s < 0.05 and gen.stats.time_cloud_wait_s >= 0.55


def test_async_draft_kept_when_it_agrees_with_the_cloud(tiny_lm):
    local = Engine(tiny_lm).generate(PROMPT, max_tokens=20)
    toks = [e.token for e in local.events]
    tok = tiny_lm.tokenizer
    agree = tok.decode(toks[:6])[len(tok.decode(toks[:3])):]  # the cloud says exactly what the draft says
    with FakeCloud(reply=agree, latency_s=0.3) as fc:
        gen = _engine(tiny_lm, fc, positions=(3,), pipeline="async", span_tokens=8).generate(PROMPT, max_tokens=20)
    assert gen.text == local.text
    assert gen.stats.rollbacks == 0 and gen.stats.cloud_tokens > 0


def test_unknown_model_and_missing_key_fail_up_front(tiny_lm, monkeypatch):
    with pytest.raises(CloudConfigError, match="unknown cloud model"):
        Engine(tiny_lm, cloud="gpt-4o-mni")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(CloudConfigError, match="OPENAI_API_KEY"):
        Engine(tiny_lm, cloud="gpt-4o-mini")
    with pytest.raises(CloudConfigError, match="strategy"):
        CloudConfig(model="gpt-4o-mini", strategy="telepathy")
    Engine(tiny_lm, cloud="gpt-4o-mini", api_key="sk-test")  # a key given: fine


def test_api_key_never_reaches_stats_or_repr(tiny_lm, fake):
    cfg = CloudConfig(model=MODEL, api_base=fake.url, api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(cfg)
    fake.faults.extend(["500"] * 3)
    gen = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([2]), pipeline="sync").generate(PROMPT, max_tokens=8)
    assert "sk-secret-123" not in " ".join(gen.stats.cloud_errors)


def test_a_router_for_one_call_leaves_the_engines_own_alone(tiny_lm, fake):
    from collab_core.router import NeverRouter

    eng = _engine(tiny_lm, fake, positions=(3,))
    local = eng.generate(PROMPT, max_tokens=12, router=NeverRouter())
    assert local.stats.cloud_calls == 0 and not fake.requests and local.text == _local_text(tiny_lm, 12)
    routed = eng.generate(PROMPT, max_tokens=12, router=ScheduledRouter([5]))
    assert routed.stats.cloud_calls == 1 and routed.events[5].source == "cloud"
    assert eng.generate(PROMPT, max_tokens=12).events[3].source == "cloud"  # its own router, as before


def test_cloud_token_rank_among_the_local_candidates(tiny_lm):
    """stats.cloud_token_ranks: 0 where the cloud wrote the local model's own pick, -1 where none of its top-k."""
    alone = Engine(tiny_lm).generate(PROMPT, max_tokens=12)
    agree = "".join(e.text for e in alone.events[3:9])  # what the local model writes from position 3 on
    with FakeCloud(reply=agree) as fc:
        gen = _engine(tiny_lm, fc).generate(PROMPT, max_tokens=12)
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_token_ranks == [0]
    with FakeCloud(reply=" qqqq") as fc:
        gen = _engine(tiny_lm, fc).generate(PROMPT, max_tokens=12)
    (rank,) = gen.stats.cloud_token_ranks
    first_cloud = next(e.token for e in gen.events if e.source == "cloud")
    top = alone.events[3].confidence.top_ids
    assert rank == (top.index(first_cloud) if first_cloud in top else -1)
