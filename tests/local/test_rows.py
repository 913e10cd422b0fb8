"""The decode rounds' batched KV cache is kept from round to round (collab_core/local/rows.py).

Lanes join the running batch and leave it mid-run, a batched lane rolls back and is fed a span, a branch is forked
off a batched lane and decodes in the same rounds: every lane's tokens and distributions are those of the same
sequence decoded alone, and rounds whose lanes did not change ran on the kept batch as it was.
"""

import queue

import pytest

PROMPTS = ["What is the capital of France?", "Name a large animal.", "Why is the sky blue?",
           "Write a word that rhymes with cat."]


def _script(dec, ids, ops, out, sched=None):
    """Decode ``ids`` then run ``ops`` on ``dec`` (a LaneDecoder on ``sched``, or a StepDecoder alone, where the
    waits are skipped); ``out`` gets (who, token, logprobs) for every token read."""
    from collab_core.local.loop import Wait, ready, settled

    if sched is not None:
        sched.join(dec)
    step = dec.prefill(ids)

    def read(d, s, who):
        s = yield from ready(s)
        out.append((who, s.token_id, s.logprobs))
        return d.step(s.token_id)

    for op, arg in ops:
        if op == "wait":
            if sched is not None:
                yield Wait(arg)
        elif op == "decode":
            for _ in range(arg):
                step = yield from read(dec, step, "trunk")
        elif op == "rollback":  # the last ``arg`` tokens go, the step at the new end is read again
            yield from settled(dec)
            step = dec.rollback(arg)
        elif op == "feed":  # a span written elsewhere, fed in after the tokens the cache holds
            yield from settled(dec)
            dec.rollback(1)  # the token whose step is pending is replaced by the span
            step = dec.feed(arg)
        elif op == "fork":  # a branch from one token back, its own first token, decoding beside the trunk
            yield from settled(dec)
            twin = dec.fork(back=1)
            branch = twin.step(7)
            for _ in range(arg):
                step = yield from read(dec, step, "trunk")
                branch = yield from read(twin, branch, "branch")
            yield from settled(twin)
            twin.close()
    yield from ready(step)
    out.append(("end", step.token_id, step.logprobs))
    yield from settled(dec)
    if sched is not None:
        sched.leave(dec)


def test_kept_batch_lanes_join_leave_roll_back_and_fork(tiny_lm):
    import mlx.core as mx

    from collab_core.local.batch import LaneDecoder
    from collab_core.local.decoder import StepDecoder
    from collab_core.local.loop import ModelLoop

    tok = tiny_lm.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS]
    outs: list[list] = [[] for _ in PROMPTS]
    ops = [
        [("decode", 10), ("rollback", 3), ("decode", 8), ("feed", [11, 12, 13]), ("decode", 8)],
        [("decode", 6)],  # leaves early
        [("wait", lambda: len(outs[0]) >= 3), ("decode", 20)],  # joins the running batch
        [("decode", 5), ("fork", 6), ("decode", 8)],
    ]
    sched = ModelLoop()
    lanes = [LaneDecoder(tiny_lm, sched) for _ in PROMPTS]
    for lane in lanes:
        sched.join(lane)  # open from the start: none decodes alone before the others arrive
    sinks = [queue.SimpleQueue() for _ in PROMPTS]
    reqs = [sched.submit_generation(lambda i=i: _script(lanes[i], prompts[i], ops[i], outs[i], sched), q.put)
            for i, q in enumerate(sinks)]
    for req, q in zip(reqs, sinks):
        for _ in req.items(q):
            pass

    for i, ids in enumerate(prompts):
        alone: list = []
        for _ in _script(StepDecoder(tiny_lm), ids, ops[i], alone):
            pass
        assert [(w, t) for w, t, _ in outs[i]] == [(w, t) for w, t, _ in alone], i
        for (_, _, a), (_, _, b) in zip(alone, outs[i]):
            assert mx.allclose(a, b, atol=1e-4).item()
    rows = sched.batch
    assert sched.rounds > 0 and sched.rows / sched.rounds > 1.5  # rounds carried several lanes
    assert rows.kept > rows.rebuilt > 0  # most rounds ran on the kept batch; joins, leaves and rollbacks rebuilt it
    for lane in lanes:
        assert not rows.holds(lane) or lane._own is None
        assert lane.cache[0].offset == len(lane.tokens)  # the row read back is the lane's whole sequence
        assert not rows.holds(lane)


@pytest.mark.parametrize("lasting", [True, False])
def test_a_batch_that_cannot_be_kept_lasts_one_round(tiny_lm, monkeypatch, lasting):
    """A batched cache that cannot filter and extend (asked of it) is merged and read back every round."""
    from collab_core.local import rows as rows_mod
    from collab_core.local.batch import LaneDecoder
    from collab_core.local.decoder import StepDecoder
    from collab_core.local.loop import ModelLoop

    if not lasting:
        monkeypatch.setattr(rows_mod, "_lasting", lambda kv: False)
    tok = tiny_lm.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS[:3]]
    outs: list[list] = [[] for _ in prompts]
    sched = ModelLoop()
    lanes = [LaneDecoder(tiny_lm, sched) for _ in prompts]
    for lane in lanes:
        sched.join(lane)
    sinks = [queue.SimpleQueue() for _ in prompts]
    reqs = [sched.submit_generation(lambda i=i: _script(lanes[i], prompts[i], [("decode", 6)], outs[i], sched),
                                    q.put) for i, q in enumerate(sinks)]
    for req, q in zip(reqs, sinks):
        for _ in req.items(q):
            pass
    for i, ids in enumerate(prompts):
        alone: list = []
        for _ in _script(StepDecoder(tiny_lm), ids, [("decode", 6)], alone):
            pass
        assert [t for _, t, _ in outs[i]] == [t for _, t, _ in alone]
    assert (sched.batch.kept > 0) == lasting
    assert sched.batch.kv is None or lasting
