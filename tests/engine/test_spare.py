"""Spare cloud tokens: a token-exact call asked for one token beyond its span; the engine keeps it aside and uses it,
with no call, where the router routes the very next position. Same answers and sources as without, fewer calls."""

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.router import ScheduledRouter

pytestmark = pytest.mark.smollm
PROMPT = "Write a short story about a lighthouse keeper."


def sea(body):
    """A cloud that writes " sea" at every position (one token each): the same tokens however it is asked."""
    return " sea" * body["max_tokens"]


def _run(lm, fc, positions, *, spare, pipeline="sync", vocab="local"):
    cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=1, spare_tokens=spare,
                        vocab=vocab, strategy="completion")
    eng = Engine(lm, cloud=cloud, router=ScheduledRouter(positions), pipeline=pipeline, cache=False)
    return eng.generate(PROMPT, max_tokens=24)


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_a_routed_pair_costs_one_call(smollm, pipeline):
    positions = (3, 4, 5, 12)  # a run of three, and one alone
    with FakeCloud(reply=sea, tokenizer=smollm.tokenizer) as fc:
        ref = _run(smollm, fc, positions, spare=0, pipeline=pipeline)
        assert {r["body"]["max_tokens"] for r in fc.requests} == {1}
        fc.requests.clear()
        gen = _run(smollm, fc, positions, spare=1, pipeline=pipeline)
        asked = [r["body"]["max_tokens"] for r in fc.requests]
    assert gen.text == ref.text and [e.source for e in gen.events] == [e.source for e in ref.events]
    assert [i for i, e in enumerate(gen.events[:-1]) if e.source == "cloud"] == list(positions)
    assert ref.stats.cloud_calls == 4 and ref.stats.cloud_spare_tokens == 0
    # 3 and 4 from one call, 5 from a second (the spare of a spare's span is not asked for), 12 from a third
    assert gen.stats.cloud_calls == 3 and gen.stats.cloud_spare_tokens == 1 and asked == [2, 2, 2]
    assert gen.stats.cloud_tokens == ref.stats.cloud_tokens == 4
    assert [gen.events[p].text for p in positions] == [" sea"] * 4


def test_a_spare_the_router_does_not_want_is_dropped(smollm):
    with FakeCloud(reply=sea, tokenizer=smollm.tokenizer) as fc:
        ref = _run(smollm, fc, (3, 12), spare=0)
        gen = _run(smollm, fc, (3, 12), spare=1)
    assert gen.text == ref.text and gen.stats.cloud_calls == 2 and gen.stats.cloud_spare_tokens == 0
    assert gen.stats.cloud_output_tokens >= ref.stats.cloud_output_tokens  # the spare was paid for all the same


def test_a_text_cloud_is_asked_for_its_span_only(smollm):
    """Without token ids a reply cannot be cut at the cloud's token boundaries: no spare is asked for."""
    with FakeCloud(reply=" lamp", tokenizer=None) as fc:
        gen = _run(smollm, fc, (3, 4), spare=1, vocab=None)
        assert [r["body"]["max_tokens"] for r in fc.requests] == [1, 1]
    assert gen.stats.cloud_calls == 2 and gen.stats.cloud_spare_tokens == 0
