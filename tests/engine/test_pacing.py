"""Pacing the async pipeline's draft (``engine/pacing.py``): a pass the reply is about to cut short is held back
where it is a likely loss, only against a cloud whose latency is steady to within a pass; answers never change."""

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.engine.pacing import Pacer
from collab_core.router import ScheduledRouter


def pacer(arrivals, kept, pass_s=0.047, **kw) -> Pacer:
    p = Pacer(**kw)
    for a in arrivals:
        p.arrived(a)
    for k in kept:
        p.settled(k)
    if pass_s is not None:
        p.passed(pass_s)
    return p


def test_a_steady_cloud_holds_only_the_pass_its_reply_would_cut_short():
    p = pacer([0.158] * 10, [True] * 6 + [False] * 4)  # the benchmark's fake: 150 ms, 60% kept
    assert p.keep_share == pytest.approx(7 / 12)
    # the reply 6 ms away: the pass would run 41 ms past it, thrown away 40% of the time
    assert p.hold(0.152) == pytest.approx(0.006 + p.slack_s)
    assert p.hold(0.135) == 0.0  # 23 ms away: a < (1 - p) * d = 19.6 ms fails; the pass pays
    assert p.hold(0.105) == 0.0  # 53 ms away: the pass ends before it
    assert p.hold(0.0) == 0.0
    assert p.hold(0.2) == 0.0  # later than every reply seen: nothing to go on


def test_the_keep_share_decides_how_close_the_reply_must_be():
    refusing, agreeing = pacer([0.158] * 10, [False] * 10), pacer([0.158] * 10, [True] * 10)
    assert refusing.hold(0.12) > 0  # 38 ms away: most of the pass would be thrown away
    assert agreeing.hold(0.14) == 0.0  # the pass is of use: it holds only the last few ms
    assert agreeing.hold(0.156) > 0
    even = pacer([0.158] * 10, [True, False] * 5)
    assert even.hold(0.152) > 0 and even.hold(0.125) == 0.0


def test_a_spread_latency_never_holds():
    hosted = [0.1 + 0.08 * i for i in range(10)]  # 100-820 ms, as a hosted API's spans might take
    jittered = [0.125 + 0.05 * i / 9 for i in range(10)]  # 150 +- 25 ms: wider than half a 47 ms pass
    for arrivals in (hosted, jittered):
        p = pacer(arrivals, [False] * 10)
        assert all(p.hold(e / 1000) == 0.0 for e in range(0, 900, 1))
    tight = pacer([0.142 + 0.016 * i / 9 for i in range(10)], [False] * 10)  # 150 +- 8 ms: steady enough
    assert tight.hold(0.13) > 0


def test_no_hold_before_enough_is_known():
    assert pacer([0.158] * 7, [False] * 7).hold(0.15) == 0.0  # fewer spans than min_spans
    assert pacer([0.158] * 10, [False] * 10, pass_s=None).hold(0.15) == 0.0  # no pass timed yet
    assert pacer([0.158] * 2, [False] * 2, min_spans=2).hold(0.15) > 0


class Eager(Pacer):
    """Holds every draft pass from 50 ms after sending: the plumbing under test, not the rule."""

    def hold(self, elapsed: float) -> float:
        return 0.02 if elapsed > 0.05 else 0.0


@pytest.mark.smollm
def test_held_passes_leave_the_answer_as_it_was(smollm):
    """Against a steady cloud that refuses every span: the pacer learns the cloud (its replies' arrival, the keep
    share) and the passes; held passes wait for the reply, are counted as cloud wait, and leave the answer as it
    was without pacing and in the sync pipeline."""
    prompt, positions = "Write a short story about a lighthouse keeper.", range(2, 48, 9)

    def engine(fc, pipeline, **kw):
        cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=2)
        return Engine(smollm, cloud=cloud, router=ScheduledRouter(positions), pipeline=pipeline, cache=False, **kw)

    # a reply slower than a draft pass even on a loaded machine: some draft passes always run (and are timed)
    with FakeCloud(reply=" and then", latency_s=1.0) as fc:
        learning, eager = engine(fc, "async"), engine(fc, "async")
        eager.pacer = Eager()
        gens = {name: e.generate(prompt, max_tokens=48) for name, e in
                [("sync", engine(fc, "sync")), ("unpaced", engine(fc, "async", pace=False)), ("learning", learning),
                 ("eager", eager)]}
    p = learning.pacer
    assert len(p.arrivals) == len(positions) and all(a >= 0.15 for a in p.arrivals)
    assert p.keep_share < 0.5 and p.pass_s > 0  # every draft refused
    assert gens["eager"].stats.draft_holds > 0 and gens["unpaced"].stats.draft_holds == 0
    assert gens["eager"].stats.time_cloud_wait_s >= 0.02 * gens["eager"].stats.draft_holds
    assert Engine(smollm, pipeline="sync").pacer is None  # only the async pipeline drafts
    # passes: one per token alone; the sync pipeline feeds each refused span's token in a pass of its own, and the
    # async one also drafts passes that the refusals throw away
    alone = Engine(smollm).generate(prompt, max_tokens=48).stats
    assert alone.local_passes == alone.total_tokens == 48
    assert 48 < gens["sync"].stats.local_passes < gens["unpaced"].stats.local_passes
    for g in gens.values():
        assert g.stats.cloud_calls == len(positions)
        assert g.text == gens["sync"].text and [e.source for e in g.events] == [e.source for e in gens["sync"].events]
