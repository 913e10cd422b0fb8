"""collab_core.text: prefix length, splicing a continuation onto the answer, word boundaries, echo and spacing."""

import pytest

from collab_core.text import common_prefix_len, cut_to_word_boundary, fix_spacing, splice, strip_echo


def ids(tiny_lm, text: str) -> list[int]:
    return list(tiny_lm.tokenizer.encode(text, add_special_tokens=False))


def spliced_text(tiny_lm, answer: list[int], continuation: str, **kw) -> tuple[int, list[int], str]:
    n_back, new = splice(tiny_lm.tokenizer, answer, continuation, **kw)
    return n_back, new, tiny_lm.tokenizer.decode(answer[: len(answer) - n_back] + new)


# -- common_prefix_len -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "n"), [
    ([], [], 0),
    ([1, 2, 3], [], 0),
    ([1, 2, 3], [1, 2, 3], 3),
    ([1, 2, 3], [1, 2], 2),
    ([1, 2], [1, 2, 3, 4], 2),
    ([1, 2, 3], [1, 9, 3], 1),
    ([9, 2, 3], [1, 2, 3], 0),
    ("abcd", "abxd", 2),
    ((1, 2), [1, 2], 2),
])
def test_common_prefix_len(a, b, n):
    assert common_prefix_len(a, b) == n
    assert common_prefix_len(b, a) == n


# -- splice ------------------------------------------------------------------------------------------------
def test_splice_mid_word_respells_the_fragment(tiny_lm):
    tok = tiny_lm.tokenizer
    answer = ids(tiny_lm, "The answer is Par")
    n_back, new, text = spliced_text(tiny_lm, answer, "is.")
    assert text == tok.decode(answer) + "is." == "The answer is Paris."
    assert n_back >= 1  # "Par" is taken back ...
    assert new == ids(tiny_lm, "The answer is Paris.")[len(answer) - n_back:]  # ... and spelled as "Paris"
    assert answer[: len(answer) - n_back] + new == ids(tiny_lm, "The answer is Paris.")


def test_splice_keeps_fragment_tokens_the_joint_spelling_shares(tiny_lm):
    answer = ids(tiny_lm, "The an")
    n_back, new, text = spliced_text(tiny_lm, answer, "swer is")
    assert text == "The answer is"
    assert n_back == 0  # " an" starts " answer" in the joint spelling too: nothing taken back
    assert answer + new == ids(tiny_lm, "The answer is")


def test_splice_continuation_starting_with_a_space(tiny_lm):
    answer = ids(tiny_lm, "The answer is")
    n_back, new, text = spliced_text(tiny_lm, answer, " Paris.")
    assert (n_back, text) == (0, "The answer is Paris.")
    assert new == ids(tiny_lm, " Paris.")


def test_splice_after_a_trailing_space_merges_the_space_into_the_word(tiny_lm):
    answer = ids(tiny_lm, "The answer is ")
    n_back, new, text = spliced_text(tiny_lm, answer, "Paris")
    assert text == "The answer is Paris"  # no space added or removed
    assert answer[: len(answer) - n_back] + new == ids(tiny_lm, "The answer is Paris")


def test_splice_empty_continuation_changes_nothing(tiny_lm):
    answer = ids(tiny_lm, "The answer is Paris")
    assert splice(tiny_lm.tokenizer, answer, "") == (0, [])
    assert splice(tiny_lm.tokenizer, [], "") == (0, [])


def test_splice_onto_an_empty_answer(tiny_lm):
    n_back, new = splice(tiny_lm.tokenizer, [], "Paris and Berlin")
    assert n_back == 0
    assert new == ids(tiny_lm, "Paris and Berlin")


@pytest.mark.parametrize(("answer", "continuation"), [
    ("Paris and Ber", "lin are"),
    ("The quick brown fo", "x jumps"),
    ("The capital of France", ", and"),
    ("What is the capital of", " France?"),
    ("Café", " is"),
    ("Numbers like 123", "45 and 3.14"),
    ("new\n", "lines"),
    ("tabs\t", "and"),
])
@pytest.mark.parametrize("max_back", [1, 2, 8])
def test_splice_text_is_answer_plus_continuation(tiny_lm, answer, continuation, max_back):
    a = ids(tiny_lm, answer)
    n_back, new, text = spliced_text(tiny_lm, a, continuation, max_back=max_back)
    assert text == tiny_lm.tokenizer.decode(a) + continuation
    assert 0 <= n_back <= min(max_back, len(a))


def test_splice_max_back_bounds_the_tokens_taken_back(tiny_lm):
    answer = ids(tiny_lm, "The answer is Par")
    assert splice(tiny_lm.tokenizer, answer, "is.", max_back=8)[0] >= 1
    n_back, new = splice(tiny_lm.tokenizer, answer, "is.", max_back=0)
    assert n_back == 0  # nothing may be taken back: the continuation is tokenized on its own
    assert new == ids(tiny_lm, "is.")


def test_splice_never_cuts_inside_a_character(tiny_lm):
    answer = ids(tiny_lm, "He said 日本語の文章")  # byte-level tokens, several per character
    _, _, text = spliced_text(tiny_lm, answer, "です", max_back=8)
    assert text == "He said 日本語の文章です"


# -- cut_to_word_boundary -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "cut"), [
    ("", ""),
    ("Paris", "Paris"),  # one word: kept whole
    ("  Paris", "  Paris"),  # one word after spaces: kept
    ("Paris is the capi", "Paris is the"),
    (" Paris is", " Paris"),
    ("Paris is ", "Paris is "),  # already at a boundary
    ("Paris\nBer", "Paris"),
    ("Paris is\tthe", "Paris is"),
])
def test_cut_to_word_boundary(text, cut):
    assert cut_to_word_boundary(text) == cut


# -- strip_echo ---------------------------------------------------------------------------------------------
LONG = "Many people wonder about it, but in fact the capital of France is"  # tail: "it, but ... France is"


@pytest.mark.parametrize(("text", "partial", "out"), [
    ("The answer is Paris.", "The answer is", " Paris."),  # the whole partial answer echoed
    ("The answer is Paris.", "The answer is ", "Paris."),
    ("The answer is Paris.", " The answer is ", " Paris."),  # echoed without its surrounding spaces
    (" Paris.", "The answer is", " Paris."),  # no echo
    ("", "The answer is", ""),
    ("Paris.", "", "Paris."),
    # only the tail (the last 40 characters, found near the start) echoed
    ("it, but in fact the capital of France is Paris.", LONG, " Paris."),
    ("> it, but in fact the capital of France is Paris.", LONG, " Paris."),
    ("the capital of France is Paris.", LONG, "the capital of France is Paris."),  # less than the tail
    # the tail appears, but too far from the start to be an echo
    ("Something else first: it, but in fact the capital of France is Paris.", LONG,
     "Something else first: it, but in fact the capital of France is Paris."),
    # a short partial answer is only stripped when echoed whole
    ("It is Paris.", "So: It is", "It is Paris."),
])
def test_strip_echo(text, partial, out):
    assert strip_echo(text, partial) == out


# -- fix_spacing --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "partial", "word_start", "out"), [
    # nothing written yet: a continuation never starts with whitespace
    ("  Paris", "", None, "Paris"),
    ("\nParis", "", True, "Paris"),
    # the partial answer ends with whitespace: no second space
    (" Paris", "The answer is ", True, "Paris"),
    ("Paris", "The answer is\n", None, "Paris"),
    ("\nParis", "The answer is ", None, "\nParis"),  # only spaces are dropped, not a newline
    # the local model starts a new word: a dropped space is put back
    ("Paris", "The answer is", True, " Paris"),
    ("  Paris", "The answer is", True, " Paris"),
    ("5 km", "It is", True, " 5 km"),
    (".", "The answer is Paris", True, "."),  # punctuation is not a word: no space
    # the local model goes on with the same word: no space
    (" is.", "The answer is Par", False, "is."),
    ("is.", "The answer is Par", False, "is."),
    # no hint: left as the server sent it
    (" Paris", "The answer is", None, " Paris"),
    ("is.", "The answer is Par", None, "is."),
])
def test_fix_spacing(text, partial, word_start, out):
    assert fix_spacing(text, partial, word_start) == out
