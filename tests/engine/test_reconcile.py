"""collab_core.engine.reconcile: settling a cloud span against the answer and the local draft."""

import pytest

from collab_core.engine.reconcile import Reconciliation, reconcile

BIG = 10_000


@pytest.fixture
def enc(tiny_lm):
    return lambda text: list(tiny_lm.tokenizer.encode(text, add_special_tokens=False))


@pytest.fixture
def eos(tiny_lm):
    return set(tiny_lm.tokenizer.eos_token_ids)


def split(ids: list[int], n: int) -> tuple[list[int], list[int]]:
    return ids[:n], ids[n:]


def test_span_agreeing_with_the_draft_keeps_the_rest_of_the_draft(tiny_lm, enc):
    full = enc("The answer is Paris and Berlin")
    answer, draft = split(full, len(enc("The answer is")))
    span = enc(" Paris")
    assert draft[: len(span)] == span and len(draft) > len(span)
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris", ends_answer=False, max_tokens=BIG)
    assert r == Reconciliation(replace=0, cloud=tuple(span), keep_from=len(span), rollbacks=0, ends=False)
    assert r.target(answer, draft) == full


def test_span_equal_to_the_whole_draft(tiny_lm, enc):
    full = enc("The answer is Paris")
    answer, draft = split(full, len(enc("The answer is")))
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris", ends_answer=False, max_tokens=BIG)
    assert (r.keep_from, r.rollbacks, r.ends) == (len(draft), 0, False)
    assert r.target(answer, draft) == full


def test_span_disagreeing_with_the_draft_drops_it(tiny_lm, enc):
    answer = enc("The answer is")
    draft = enc(" Berlin is")
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris", ends_answer=False, max_tokens=BIG)
    assert r == Reconciliation(replace=0, cloud=tuple(enc(" Paris")), keep_from=None, rollbacks=len(draft),
                               ends=False)
    assert r.target(answer, draft) == enc("The answer is Paris")


def test_rollbacks_count_only_the_drafted_tokens_past_the_common_prefix(tiny_lm, enc):
    answer = enc("The answer is")
    draft = enc(" Paris and Berlin")  # " Paris" agrees, " and Berlin" does not
    span = enc(" Paris is")
    assert span[0] == draft[0] and span[1] != draft[1]
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris is", ends_answer=False, max_tokens=BIG)
    assert r.keep_from is None
    assert r.rollbacks == len(draft) - 1
    assert r.target(answer, draft) == enc("The answer is Paris is")


def test_no_draft(tiny_lm, enc):
    answer = enc("The answer is")
    r = reconcile(tiny_lm.tokenizer, answer, [], " Paris", ends_answer=False, max_tokens=BIG)
    assert (r.replace, r.cloud, r.rollbacks, r.ends) == (0, tuple(enc(" Paris")), 0, False)
    assert r.target(answer, []) == enc("The answer is Paris")


def test_span_respells_the_answers_last_word_fragment(tiny_lm, enc):
    answer = enc("The answer is Par")
    draft = enc("is")
    r = reconcile(tiny_lm.tokenizer, answer, draft, "is.", ends_answer=False, max_tokens=BIG)
    assert r.replace >= 1
    assert list(r.cloud) == enc("The answer is Paris.")[len(answer) - r.replace:]
    assert r.keep_from is None  # the draft continued the old spelling
    assert r.target(answer, draft) == enc("The answer is Paris.")
    assert tiny_lm.tokenizer.decode(r.target(answer, draft)) == "The answer is Paris."


def test_empty_text_that_ends_the_answer_rolls_back_the_whole_draft(tiny_lm, enc):
    answer = enc("The answer is Paris")
    draft = enc(" and Berlin")
    r = reconcile(tiny_lm.tokenizer, answer, draft, "", ends_answer=True, max_tokens=BIG)
    assert r == Reconciliation(replace=0, cloud=(), keep_from=None, rollbacks=len(draft), ends=True)
    assert r.target(answer, draft) == answer


def test_ends_answer_never_keeps_the_draft(tiny_lm, enc):
    full = enc("The answer is Paris and Berlin")
    answer, draft = split(full, len(enc("The answer is")))
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris", ends_answer=True, max_tokens=BIG)
    assert r.ends is True and r.keep_from is None
    assert r.cloud == tuple(enc(" Paris"))
    assert r.rollbacks == len(draft) - len(enc(" Paris"))  # the agreeing part is not counted
    assert r.target(answer, draft) == enc("The answer is Paris")


def test_eos_is_filtered_out_of_the_span(tiny_lm, enc, eos):
    answer = enc("The answer is")
    text = " Paris<|im_end|>"
    assert set(enc(text)) & eos  # the tokenizer spells the end marker as the EOS token
    r = reconcile(tiny_lm.tokenizer, answer, [], text, ends_answer=True, max_tokens=BIG, eos=eos)
    assert r.cloud == tuple(enc(" Paris"))
    assert not set(r.cloud) & eos
    assert r.target(answer, []) == enc("The answer is Paris")
    # without eos ids nothing is filtered
    unfiltered = reconcile(tiny_lm.tokenizer, answer, [], text, ends_answer=True, max_tokens=BIG)
    assert unfiltered.cloud == tuple(enc(text))


def test_max_tokens_caps_the_span(tiny_lm, enc):
    answer = enc("The answer is")
    text = " Paris and Berlin"
    span = enc(text)
    assert len(span) >= 3
    r = reconcile(tiny_lm.tokenizer, answer, [], text, ends_answer=False, max_tokens=len(answer) + 2)
    assert r.cloud == tuple(span[:2])
    assert len(r.target(answer, [])) == len(answer) + 2
    # an answer already at the limit takes no span tokens
    full = reconcile(tiny_lm.tokenizer, answer, [], text, ends_answer=False, max_tokens=len(answer))
    assert full.cloud == ()
    assert full.target(answer, []) == answer
    over = reconcile(tiny_lm.tokenizer, answer, [], text, ends_answer=False, max_tokens=1)
    assert over.cloud == ()


def test_capped_span_agreeing_with_the_draft_keeps_the_rest(tiny_lm, enc):
    full = enc("The answer is Paris and Berlin")
    answer, draft = split(full, len(enc("The answer is")))
    r = reconcile(tiny_lm.tokenizer, answer, draft, " Paris and", ends_answer=False, max_tokens=len(answer) + 1)
    assert r.cloud == (draft[0],)
    assert (r.keep_from, r.rollbacks) == (1, 0)
    assert r.target(answer, draft) == full


def test_target_with_replace_and_kept_draft():
    r = Reconciliation(replace=2, cloud=(7, 8), keep_from=1, rollbacks=0, ends=False)
    assert r.target([1, 2, 3, 4], [5, 6]) == [1, 2, 7, 8, 6]
    dropped = Reconciliation(replace=0, cloud=(9,), keep_from=None, rollbacks=2, ends=False)
    assert dropped.target([1, 2], [5, 6]) == [1, 2, 9]
    assert Reconciliation(0, (), 0, 0, False).target((1, 2), (3,)) == [1, 2, 3]


def test_token_ids_are_appended_as_they_are(tiny_lm):
    tok = tiny_lm.tokenizer
    answer = tok.encode("The capital is Par", add_special_tokens=False)
    span = tok.encode("is", add_special_tokens=False)
    r = reconcile(tok, answer, [], "is", ends_answer=False, max_tokens=64, token_ids=span)
    assert r.replace == 0 and r.cloud == tuple(span)  # nothing re-spelled, whatever the word boundary
    assert r.target(answer, []) == answer + span
    eos = next(iter(tiny_lm.eos_token_ids))
    r = reconcile(tok, answer, [5], "", ends_answer=True, max_tokens=64, eos={eos}, token_ids=[])
    assert r.ends and r.rollbacks == 1 and r.cloud == ()
    r = reconcile(tok, answer, [], "x", ends_answer=False, max_tokens=len(answer) + 1, eos={eos},
                  token_ids=[eos, *span, *span])
    assert r.cloud == tuple(span[:1])  # never an EOS, never past max_tokens
