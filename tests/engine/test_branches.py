"""The async pipeline's drafts: they stop before a token the router would send, and with ``branches`` they start
from the local model's next-best candidates too, the one the cloud picked kept. On the tiny model, against a fake
cloud that answers with the local model's own rank-r candidate (``LocalReply``)."""

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud, LocalReply
from collab_core.router import ScheduledRouter

pytestmark = pytest.mark.smollm
PROMPT = "Write a short story about a lighthouse keeper."
POSITIONS = (3, 11, 19)


def _engine(lm, fc, pipeline, positions=POSITIONS, **kw):
    cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=2)
    return Engine(lm, cloud=cloud, router=ScheduledRouter(positions), pipeline=pipeline, cache=False, **kw)


def test_local_reply_sends_the_local_models_rank_r_candidate(smollm):
    alone = Engine(smollm).generate(PROMPT, max_tokens=8)
    prompt = smollm.tokenizer.decode(Engine(smollm).encode(PROMPT)) + "".join(e.text for e in alone.events[:3])
    top = alone.events[3].confidence.top_ids
    first = smollm.tokenizer.decode([top[0]])
    assert LocalReply(smollm, agree=1.0)({"prompt": prompt, "max_tokens": 1}) == first
    assert LocalReply(smollm, agree=0.0, ranks=(1.0,))({"prompt": prompt, "max_tokens": 1}) == \
        smollm.tokenizer.decode([top[1]])
    assert LocalReply(smollm, agree=0.0, other=" zz")({"prompt": prompt}) == " zz"
    # the rank is a deterministic function of the prompt, drawn with the given shares
    reply = LocalReply(smollm, agree=0.5, ranks=(0.25,))
    ranks = [reply.rank(f"prompt {i}") for i in range(2000)]
    assert ranks == [reply.rank(f"prompt {i}") for i in range(2000)]
    assert abs(ranks.count(0) / 2000 - 0.5) < 0.05 and abs(ranks.count(1) / 2000 - 0.25) < 0.05
    with pytest.raises(ValueError):
        LocalReply(smollm, agree=0.8, ranks=(0.3,))


@pytest.mark.parametrize("branches", [1, 3])
def test_async_with_branches_gives_the_sync_answer(smollm, branches):
    """The cloud always picks the local model's second candidate: a branch from it is adopted at every span."""
    reply = LocalReply(smollm, agree=0.0, ranks=(1.0,))
    with FakeCloud(reply=reply) as fc:
        ref = _engine(smollm, fc, "sync").generate(PROMPT, max_tokens=28)
    with FakeCloud(reply=reply, latency_s=0.3) as fc:  # slow enough for every draft to reach the next routed token
        eng = _engine(smollm, fc, "async", branches=branches)
        gen = eng.generate(PROMPT, max_tokens=28)
    assert gen.text == ref.text and [e.source for e in gen.events] == [e.source for e in ref.events]
    assert gen.stats.cloud_calls == ref.stats.cloud_calls == len(POSITIONS)
    # the second candidate, spliced as text: where it re-spells the word before it (None) no draft can be kept
    ranks = gen.stats.cloud_token_ranks
    assert set(ranks) <= {1, None} and ranks.count(1) >= 2
    if branches == 1:  # every draft started from the local pick: all rolled back
        assert gen.stats.drafts_kept == 0 and gen.stats.rollbacks > 0
    else:  # drafted from the second candidate meanwhile, and kept
        assert gen.stats.branches_adopted == gen.stats.drafts_kept == ranks.count(1)
    assert not eng._scheduler.open  # every branch left the batch


def test_a_draft_stops_before_the_next_routed_token(smollm):
    """With a slow cloud (1 s, the time for many drafted tokens even on a busy CPU) and a long max_draft, each
    draft would run over the next routed position: it stops there instead, so the async pipeline routes the same
    positions as the sync one (and never commits them unrouted)."""
    reply, positions = LocalReply(smollm, agree=1.0), (3, 6, 9)
    with FakeCloud(reply=reply) as fc:
        ref = _engine(smollm, fc, "sync", positions).generate(PROMPT, max_tokens=16)
    with FakeCloud(reply=reply, latency_s=1.0) as fc:
        gen = _engine(smollm, fc, "async", positions, max_draft=64).generate(PROMPT, max_tokens=16)
    assert gen.stats.cloud_calls == 3 and gen.stats.drafts_kept == 3
    assert all(gen.events[p].source == "cloud" for p in positions)
    assert gen.text == ref.text and [e.source for e in gen.events] == [e.source for e in ref.events]


def test_branches_leave_the_batch_when_the_caller_stops_early(smollm):
    with FakeCloud(reply=LocalReply(smollm, agree=0.0, ranks=(1.0,)), latency_s=0.3) as fc:
        eng = _engine(smollm, fc, "async", branches=3)
        for ev in eng.stream(PROMPT, max_tokens=28):
            if ev.source == "cloud":
                break
        assert not eng._scheduler.open
        assert eng.generate(PROMPT, max_tokens=28).stats.branches_adopted >= 2  # still works


def test_branches_option_is_checked(smollm):
    from collab_core.errors import ConfigError

    with pytest.raises(ConfigError, match="branches"):
        Engine(smollm, branches=0)


def test_recorded_replies_are_looked_up():
    from collab_core.devtools.fakecloud import Recorder, TableReply

    rec = Recorder(lambda body: body.get("prompt", "")[::-1])
    assert rec({"prompt": "abc"}) == "cba" and rec({"messages": []}) == "" and rec.table == {"abc": "cba"}
    table = TableReply(rec.table, fallback=" other")
    assert table({"prompt": "abc"}) == "cba" and table({"prompt": "abd"}) == " other" and table.misses == 1
