"""Concurrent generations on one engine are decoded as a batch (collab_core/local/batch.py).

Each answer must be the one the same request gives alone -- with routing on, against the fake cloud -- and the
batch must really have been shared (rounds carrying several sequences).
"""

import asyncio
import concurrent.futures as cf
import threading

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import ConfigError
from collab_core.router import ScheduledRouter, ThresholdRouter
from collab_core.scoring import LearnedScorer

PROMPTS = ["What is the capital of France?", "Name a large animal.", "Why is the sky blue?",
           "Write a word that rhymes with cat.", "Count to five.", "What do bees make?",
           "Say something about the sea.", "What is two plus two?"]


def _together(engine, prompts, max_tokens=16, **opts):
    barrier = threading.Barrier(len(prompts))

    def one(p):
        barrier.wait()  # every request starts at once
        return engine.generate(p, max_tokens=max_tokens, **opts)

    with cf.ThreadPoolExecutor(len(prompts)) as ex:
        return list(ex.map(one, prompts))


def _same(a, b):
    assert [g.text for g in a] == [g.text for g in b]
    assert [[e.token for e in g.events] for g in a] == [[e.token for e in g.events] for g in b]


def test_concurrent_local_answers_equal_alone_and_share_rounds(smollm):
    alone = [Engine(smollm, max_batch=1).generate(p, max_tokens=16) for p in PROMPTS]
    eng = Engine(smollm, max_batch=8)
    together = _together(eng, PROMPTS)
    _same(together, alone)
    sched = eng._scheduler
    assert sched.rounds > 0 and sched.rows / sched.rounds > 2  # steps were really taken together
    assert sched.prefill_rows > sched.prefill_rounds  # and prompts read together


def test_batched_prefill_equals_alone_with_reused_prefixes(tiny_lm):
    """Prompts of different lengths read in one prefill round -- two of the lanes already holding part of their
    prompt (a previous turn) -- leave the same caches and next-token distributions as each read alone."""
    import mlx.core as mx

    from collab_core.local.batch import LaneDecoder
    from collab_core.local.decoder import StepDecoder
    from collab_core.local.loop import ModelLoop, ready, run_on_loop

    tok = tiny_lm.tokenizer
    prompts = [tok.encode(p * k) for k, p in zip((1, 3, 2, 5), PROMPTS)]
    earlier = {1: prompts[1][:9], 3: prompts[3][:4] + [7, 7]}  # a shared prefix, then tokens to drop
    alone = [StepDecoder(tiny_lm).prefill(ids) for ids in prompts]
    sched = ModelLoop()
    lanes = [LaneDecoder(tiny_lm, sched) for _ in prompts]

    def read():
        for i, ids in earlier.items():
            yield from ready(lanes[i].prefill(ids))
        for lane in lanes:
            sched.join(lane)  # every lane open: the four prompts are read in one round
        steps = [lane.prefill(ids) for lane, ids in zip(lanes, prompts)]
        for step in steps:
            yield from ready(step)  # waits for the round that runs the last token
        return [step.resolved() for step in steps]

    steps = run_on_loop(sched, read)
    assert sched.prefill_rounds == 1 and sched.prefill_rows == len(lanes)
    for lane, ids, a, b in zip(lanes, prompts, alone, steps):
        assert lane.tokens == ids and lane.cache[0].offset == len(ids)
        assert b.token_id == a.token_id
        assert mx.allclose(b.logprobs, a.logprobs, atol=1e-5).item()


def test_concurrent_routed_answers_equal_alone(smollm):
    """Threshold routing (stateless, so order cannot matter) with a cloud that answers every span."""
    with FakeCloud(reply=" the sea", latency_s=0.05) as fc:
        cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url)

        def eng(n):
            return Engine(smollm, cloud=cloud, router=ThresholdRouter(0.6), pipeline="sync", cache=False,
                          max_batch=n)

        alone = [eng(1).generate(p, max_tokens=16) for p in PROMPTS]
        e8 = eng(8)
        together = _together(e8, PROMPTS)
    _same(together, alone)
    assert [[e.source for e in g.events] for g in together] == [[e.source for e in g.events] for g in alone]
    assert [g.stats.cloud_calls for g in together] == [g.stats.cloud_calls for g in alone]
    assert sum(g.stats.cloud_tokens for g in together) > 0
    assert e8._scheduler.rows > e8._scheduler.rounds  # some rounds carried several sequences


def test_async_pipeline_batched_equals_alone(tiny_lm):
    """Drafting while spans are in flight, rollback where the cloud disagrees: per lane, in a batch. The cloud is
    slow enough that every draft reaches ``max_draft`` before its span comes back, so which positions are routed
    does not depend on timing (with a fast cloud it may: README, Serving)."""
    with FakeCloud(reply=" zebra crossing", latency_s=1.5) as fc:
        cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url)

        def eng(n):
            return Engine(tiny_lm, cloud=cloud, router=ScheduledRouter((2, 13)), pipeline="async", cache=False,
                          max_draft=4, max_batch=n)

        alone = [eng(1).generate(p, max_tokens=20) for p in PROMPTS[:3]]
        together = _together(eng(3), PROMPTS[:3], max_tokens=20)
    _same(together, alone)
    assert [g.stats.cloud_calls for g in together] == [g.stats.cloud_calls for g in alone]
    assert [g.stats.rollbacks for g in together] == [g.stats.rollbacks for g in alone]
    assert sum(g.stats.cloud_calls for g in together) >= 3 and sum(g.stats.rollbacks for g in together) > 0


def test_requests_join_and_leave_between_steps(tiny_lm):
    """Different lengths: short answers leave, later requests join the running batch."""
    eng = Engine(tiny_lm, max_batch=3)
    lengths = [3, 20, 7, 12, 5, 16]
    alone = [Engine(tiny_lm, max_batch=1).generate(p, max_tokens=n) for p, n in zip(PROMPTS, lengths)]
    with cf.ThreadPoolExecutor(6) as ex:
        together = list(ex.map(lambda a: eng.generate(a[0], max_tokens=a[1]), zip(PROMPTS, lengths)))
    _same(together, alone)
    assert [g.stats.total_tokens for g in together] == lengths
    assert len(eng._lanes) == 3 and not eng._busy  # three lanes, all idle again


def test_astream_streams_per_request(tiny_lm):
    eng = Engine(tiny_lm, max_batch=4)
    alone = [Engine(tiny_lm, max_batch=1).generate(p, max_tokens=10).text for p in PROMPTS[:4]]

    async def main():
        async def one(p):
            return "".join([ev.text async for ev in eng.astream(p, max_tokens=10)])
        return await asyncio.gather(*(one(p) for p in PROMPTS[:4]))

    assert asyncio.run(main()) == alone


def test_a_stream_left_early_frees_its_lane(tiny_lm):
    eng = Engine(tiny_lm, max_batch=2)
    it = eng.stream(PROMPTS[0], max_tokens=20)
    next(it)
    it.close()
    assert not eng._busy and not eng._scheduler.open and not eng._scheduler.pending
    assert eng.generate(PROMPTS[1], max_tokens=8).text == Engine(tiny_lm).generate(PROMPTS[1], max_tokens=8).text


def test_a_lane_left_while_its_prompt_is_read_keeps_only_what_its_cache_holds(tiny_lm):
    """A generation dropped between two chunks of its prompt: the lane goes back idle holding the chunks read, and
    a next prompt on it reuses exactly them (its tokens no longer claim the unread rest)."""
    import mlx.core as mx

    from collab_core.local.batch import LaneDecoder
    from collab_core.local.decoder import StepDecoder
    from collab_core.local.loop import ModelLoop, ready, run_on_loop

    ids = tiny_lm.tokenizer.encode(PROMPTS[2] * 3)
    sched = ModelLoop()
    sched.prefill_chunk = 4
    a, b = LaneDecoder(tiny_lm, sched), LaneDecoder(tiny_lm, sched)

    def go():
        sched.join(a)
        sched.join(b)
        first, other = a.prefill(ids), b.prefill(ids[:5])
        yield from ready(other)  # one round: b's prompt read, a's first chunk only
        assert not first.settled() and sched.prefills
        sched.leave(a)  # a's generation ends here

    run_on_loop(sched, go)
    assert a.tokens == ids[:4] and a.cache[0].offset == 4
    again, alone = a.prefill(ids), StepDecoder(tiny_lm).prefill(ids)
    assert again.token_id == alone.token_id
    assert mx.allclose(again.logprobs, alone.logprobs, atol=1e-5).item()


def test_max_batch_is_checked(tiny_lm):
    with pytest.raises(ConfigError):
        Engine(tiny_lm, max_batch=0)


def test_langchain_batch_and_abatch_are_decoded_together(tiny_dir, tiny_lm):
    from langchain_collab import CollabLLM

    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=10)
    prompts = PROMPTS[:4]
    alone = [llm.invoke(p).content for p in prompts]
    sched = llm._engine()._scheduler
    before = (sched.rounds, sched.rows)
    assert [m.content for m in llm.batch(prompts, config={"max_concurrency": 4})] == alone
    assert [m.content for m in asyncio.run(llm.abatch(prompts))] == alone
    rounds, rows = sched.rounds - before[0], sched.rows - before[1]
    assert rounds > 0 and rows / rounds > 1.5  # the concurrent calls shared forward passes


def test_llamaindex_async_calls_are_decoded_together(tiny_dir):
    from llamaindex_collab import CollabLLM

    llm = CollabLLM(local_model=str(tiny_dir), max_tokens=10)
    prompts = PROMPTS[:4]
    alone = [llm.complete(p).text for p in prompts]
    sched = llm._engine()._scheduler
    before = (sched.rounds, sched.rows)

    async def main():
        return await asyncio.gather(*(llm.acomplete(p) for p in prompts))

    assert [r.text for r in asyncio.run(main())] == alone
    rounds, rows = sched.rounds - before[0], sched.rows - before[1]
    assert rounds > 0 and rows / rounds > 1.5


def test_streams_interleaved_in_one_thread(tiny_lm):
    """Two streams open in one thread each get a lane; beyond max_batch that would wait forever: an error."""
    eng = Engine(tiny_lm, max_batch=2)
    a, b = eng.stream(PROMPTS[0], max_tokens=6), eng.stream(PROMPTS[1], max_tokens=6)
    toks_a, toks_b = [], []
    for ea, eb in zip(a, b):
        toks_a.append(ea.text)
        toks_b.append(eb.text)
    solo = Engine(tiny_lm, max_batch=1)
    assert "".join(toks_a) == solo.generate(PROMPTS[0], max_tokens=6).text
    assert "".join(toks_b) == solo.generate(PROMPTS[1], max_tokens=6).text
    one = Engine(tiny_lm, max_batch=1)
    first = one.stream(PROMPTS[0], max_tokens=6)
    next(first)
    with pytest.raises(ConfigError, match="max_batch"):
        next(one.stream(PROMPTS[1], max_tokens=6))
    first.close()


def test_row_summaries_equal_one_row_at_a_time():
    import mlx.core as mx

    from collab_core.scoring import summary_graph, unpack_summary

    logits = mx.random.normal((3, 500), key=mx.random.key(0))
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    packed, top = summary_graph(lp, 5)  # every row in one graph
    for r in range(3):
        one = unpack_summary(*(a.tolist() for a in summary_graph(lp[r], 5)))
        rows = unpack_summary(packed[r].tolist(), top[r].tolist())
        assert rows.top_ids == one.top_ids
        assert rows.max_prob == pytest.approx(one.max_prob, abs=1e-7)
        assert rows.entropy == pytest.approx(one.entropy, abs=1e-5)


def test_a_lane_that_cannot_batch_takes_its_own_forward_in_the_round(tiny_lm, monkeypatch):
    from collab_core.local.batch import LaneDecoder

    monkeypatch.setattr(LaneDecoder, "batchable", property(lambda self: False))
    alone = [Engine(tiny_lm, max_batch=1).generate(p, max_tokens=8).text for p in PROMPTS[:3]]
    eng = Engine(tiny_lm, max_batch=3)
    assert [g.text for g in _together(eng, PROMPTS[:3], max_tokens=8)] == alone


def test_a_failed_round_fails_every_request_in_it(tiny_lm, monkeypatch):
    """An error inside a batched forward pass reaches every request it carried; none waits forever."""
    from collab_core.local.batch import BatchScheduler

    def boom(self, batch):
        raise RuntimeError("forward pass failed")

    monkeypatch.setattr(BatchScheduler, "_forward_batch", boom)
    eng = Engine(tiny_lm, max_batch=4)
    barrier = threading.Barrier(3)

    def one(p):
        barrier.wait()
        try:
            eng.generate(p, max_tokens=8)
        except RuntimeError as exc:
            return str(exc)
        return "finished"  # a request that ran alone throughout never meets the failing path

    with cf.ThreadPoolExecutor(3) as ex:
        outcomes = list(ex.map(one, PROMPTS[:3]))
    assert "forward pass failed" in outcomes
    assert set(outcomes) <= {"forward pass failed", "finished"}
    assert not eng._busy and not eng._scheduler.open  # every lane given back


def test_a_failed_round_fails_exactly_its_generations(tiny_lm, monkeypatch):
    """The first round of two lanes fails once: the two generations in it get its error, the one outside it (a
    short answer, done or waiting) ends as it does alone, and the engine serves the next request as usual."""
    from collab_core.local.batch import BatchScheduler

    real = BatchScheduler._forward_batch
    failed_round: list = []

    def once(self, batch):
        if len(batch) == 2 and not failed_round:
            failed_round.extend(lane for lane, _, _ in batch)
            raise RuntimeError("forward pass failed")
        return real(self, batch)

    monkeypatch.setattr(BatchScheduler, "_forward_batch", once)
    eng = Engine(tiny_lm, max_batch=4)
    lengths = {PROMPTS[0]: 40, PROMPTS[1]: 40, PROMPTS[2]: 3}  # the short one leaves: the rest go on as two
    barrier = threading.Barrier(3)

    def one(p):
        barrier.wait()
        try:
            return eng.generate(p, max_tokens=lengths[p]).text
        except RuntimeError as exc:
            return exc

    with cf.ThreadPoolExecutor(3) as ex:
        outcomes = dict(zip(lengths, ex.map(one, lengths)))
    assert len(failed_round) == 2
    failed = [p for p, o in outcomes.items() if isinstance(o, RuntimeError)]
    assert len(failed) == 2 and all(str(outcomes[p]) == "forward pass failed" for p in failed)
    (finished,) = [p for p in outcomes if p not in failed]
    alone = Engine(tiny_lm)
    assert outcomes[finished] == alone.generate(finished, max_tokens=lengths[finished]).text
    assert not eng._busy and not eng._scheduler.open
    assert eng.generate(PROMPTS[3], max_tokens=8).text == alone.generate(PROMPTS[3], max_tokens=8).text


def test_batched_calibration_gives_the_same_scores(tiny_lm):
    from collab_core.router import BudgetRouter
    from collab_core.training import calibrate_on

    one, four = BudgetRouter(0.1), BudgetRouter(0.1)
    t1 = calibrate_on(one, tiny_lm, PROMPTS[:4], max_tokens=10, batch=1)
    t4 = calibrate_on(four, tiny_lm, PROMPTS[:4], max_tokens=10, batch=4)
    # the prompts are read in one batched prefill (right-padded, as mlx-lm does): float rounding differs there
    assert len(one.scores) == 40 and list(four.scores) == pytest.approx(list(one.scores), abs=1e-5)
    assert t4 == pytest.approx(t1, abs=1e-5)


def test_learned_router_scores_on_the_decoding_threads(smollm):
    """The learned scorer is loaded on this thread and called on the lanes' threads (it failed with MLX's
    'There is no Stream(cpu, 0) in current thread' while its weights were still lazy)."""
    with FakeCloud(reply=" the sea", latency_s=0.02) as fc:
        cloud = CloudConfig(model="text-completion-openai/fake", api_base=fc.url)
        router = ThresholdRouter(0.5, scorer=LearnedScorer())
        router.bind(smollm)  # loaded here, on the main thread, as a benchmark does
        eng = Engine(smollm, cloud=cloud, router=router, pipeline="sync", cache=False, max_batch=4)
        together = _together(eng, PROMPTS[:4], max_tokens=8)
    scored = [e.score for g in together for e in g.events if e.source == "local"]
    assert scored and all(isinstance(x, float) for x in scored)  # scored on the lanes' threads
    assert eng._scheduler.rows > eng._scheduler.rounds
