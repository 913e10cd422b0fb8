"""The step decoder on a tiny random model: equality with mlx-lm, rollback, prefix reuse, signals."""

import math

import mlx_lm
import numpy as np
import pytest

from collab_core.local.decoder import StepDecoder
from collab_core.prompts import encode_prompt

PROMPT = "What is the capital of France?"


def _greedy_tokens(dec, ids, n):
    step = dec.prefill(ids)
    out = []
    for _ in range(n):
        out.append(step.token_id)
        step = dec.step(step.token_id)
    return out


def test_greedy_matches_mlx_lm_generate(tiny_lm):
    ids = encode_prompt(tiny_lm, PROMPT)
    ref = [r.token for r in mlx_lm.stream_generate(tiny_lm.model, tiny_lm.tokenizer, ids, max_tokens=40)]
    eos = tiny_lm.eos_token_ids
    n = next((i for i, t in enumerate(ref) if t in eos), len(ref))
    assert n >= 10, "the tiny model should produce a non-trivial sequence"
    ours = _greedy_tokens(StepDecoder(tiny_lm), ids, n)
    assert ours == ref[:n]
    text = mlx_lm.generate(tiny_lm.model, tiny_lm.tokenizer, ids, max_tokens=n)
    assert tiny_lm.tokenizer.decode(ours) == text


def test_lazy_pipelined_steps_equal_eager_steps(tiny_lm):
    ids = encode_prompt(tiny_lm, PROMPT)
    dec = StepDecoder(tiny_lm)
    step = dec.prefill(ids)
    lazy = []
    for _ in range(12):
        nxt = dec.step(step.token)  # queued before this step is read
        lazy.append(step.token_id)
        step = nxt
    assert lazy == _greedy_tokens(StepDecoder(tiny_lm), ids, 12)
    assert dec.tokens == ids + lazy


@pytest.mark.parametrize("history", [64, 2])
def test_rollback_then_replacement_equals_fresh_run(tiny_lm, history):
    ids = encode_prompt(tiny_lm, PROMPT)
    dec = StepDecoder(tiny_lm, history=history)
    gen = _greedy_tokens(dec, ids, 10)
    dec.rollback(4)
    assert dec.tokens == ids + gen[:6]
    replacement = [17, 42, 99]
    after = dec.feed(replacement)
    fresh = StepDecoder(tiny_lm).prefill(ids + gen[:6] + replacement)
    np.testing.assert_allclose(np.array(after.logprobs), np.array(fresh.logprobs), atol=1e-4)
    # one more token on top, through the single-token path
    a2 = dec.step(5)
    f2 = StepDecoder(tiny_lm).prefill(ids + gen[:6] + replacement + [5])
    np.testing.assert_allclose(np.array(a2.logprobs), np.array(f2.logprobs), atol=1e-4)


def test_rollback_returns_the_distribution_at_the_new_end(tiny_lm):
    ids = encode_prompt(tiny_lm, PROMPT)
    dec = StepDecoder(tiny_lm)
    gen = _greedy_tokens(dec, ids, 6)
    back = dec.rollback(3)
    fresh = StepDecoder(tiny_lm).prefill(ids + gen[:3])
    np.testing.assert_allclose(np.array(back.logprobs), np.array(fresh.logprobs), atol=1e-4)
    assert back.token_id == gen[3]
    with pytest.raises(ValueError):
        dec.rollback(len(dec.tokens))


def test_prefill_reuses_a_shared_prefix(tiny_lm):
    first = encode_prompt(tiny_lm, PROMPT)
    dec = StepDecoder(tiny_lm)
    gen = _greedy_tokens(dec, first, 5)
    cache_before = dec.cache
    second = first + gen[:3] + encode_prompt(tiny_lm, "And of Germany?", chat=False)
    step = dec.prefill(second)
    assert dec.cache is cache_before  # trimmed and extended, not rebuilt
    fresh = StepDecoder(tiny_lm).prefill(second)
    np.testing.assert_allclose(np.array(step.logprobs), np.array(fresh.logprobs), atol=1e-4)
    assert dec.tokens == second


def test_confidence_summary_matches_the_distribution(tiny_lm):
    dec = StepDecoder(tiny_lm, top_k=4)
    step = dec.prefill(encode_prompt(tiny_lm, PROMPT))
    lp = np.array(step.logprobs, dtype=np.float64)
    p = np.exp(lp)
    c = step.confidence
    order = np.argsort(-lp)
    assert list(c.top_ids) == order[:4].tolist()
    assert math.isclose(c.max_prob, p.max(), rel_tol=1e-5)
    assert math.isclose(c.margin, p[order[0]] - p[order[1]], rel_tol=1e-4, abs_tol=1e-7)
    assert math.isclose(c.entropy, float(-(p * lp).sum()), rel_tol=1e-4)
    assert step.token_id == int(order[0])


def test_hidden_state_is_exposed_and_logits_unchanged(tiny_lm):
    ids = encode_prompt(tiny_lm, PROMPT)
    plain = StepDecoder(tiny_lm).prefill(ids)
    dec = StepDecoder(tiny_lm, want_hidden=True)
    step = dec.prefill(ids)
    assert step.hidden.shape == (tiny_lm.config["hidden_size"],)
    np.testing.assert_allclose(np.array(step.logprobs), np.array(plain.logprobs), atol=1e-5)
    nxt = dec.step(step.token_id)
    assert nxt.hidden is not None and not np.allclose(np.array(nxt.hidden), np.array(step.hidden))


def test_encode_prompt_uses_chat_template(tiny_lm):
    ids = encode_prompt(tiny_lm, "hi")
    text = tiny_lm.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nhi<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    msgs = [{"role": "user", "content": "hi"}]
    assert encode_prompt(tiny_lm, msgs) == ids
    assert tiny_lm.tokenizer.decode(encode_prompt(tiny_lm, "hi", chat=False)) == "hi"
    sys_ids = encode_prompt(tiny_lm, "hi", system="Be brief.")
    assert tiny_lm.tokenizer.decode(sys_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_greedy_along_is_teacher_forcing_and_leaves_the_sequence_cached(tiny_lm):
    ids = encode_prompt(tiny_lm, PROMPT)
    answer = _greedy_tokens(StepDecoder(tiny_lm), ids, 12)
    answer[5] = (answer[5] + 7) % 1000  # off the greedy path, so later predictions are forced, not generated
    seq = ids + answer
    ref = [StepDecoder(tiny_lm).prefill(seq[:j]).token_id for j in range(len(ids), len(seq))]
    dec = StepDecoder(tiny_lm, prefill_step_size=8)  # chunked, and the prompt spans several chunks
    assert dec.greedy_along(seq, len(ids)) == ref
    assert dec.tokens == seq
    before = dec.passes
    assert dec.prefill(seq[:len(ids) + 3]).token_id == ref[3]  # a prefix only trims the cache
    assert dec.passes == before + 1
    # a second sequence sharing the prompt: the kept prefix stops short of the first prediction it needs
    other = ids + answer[:2]
    assert dec.greedy_along(other, len(ids)) == ref[:2]
    with pytest.raises(Exception, match="start must be inside"):
        dec.greedy_along(seq, len(seq))


def test_one_greedy_answer_on_a_plain_decoder_and_on_the_loop(tiny_lm):
    """``lane_greedy_answer`` is the one greedy loop: driven on a plain decoder (traces) it never waits and gives the
    tokens the loop's lanes give (calibration, rollouts), stopping at ``max_tokens``."""
    from collab_core.local.loop import drive, lane_greedy_answer, run_lanes

    ids = encode_prompt(tiny_lm, PROMPT)
    plain = [t for t, _ in drive(lane_greedy_answer(StepDecoder(tiny_lm), ids, max_tokens=12))]
    [lanes] = run_lanes(tiny_lm, [lambda d: lane_greedy_answer(d, ids, max_tokens=12)], max_batch=1)
    assert plain == [t for t, _ in lanes] == _greedy_tokens(StepDecoder(tiny_lm), ids, 12)
    assert len(plain) == 12  # capped by max_tokens: the tiny model writes no EOS this early


def test_drive_refuses_a_coroutine_that_waits():
    from collab_core.local.loop import Wait, drive

    def waits():
        yield Wait(lambda: True)
        return 1

    with pytest.raises(RuntimeError, match="waits"):
        drive(waits())
