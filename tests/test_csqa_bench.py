"""The CommonsenseQA benchmark's prompt, answer extraction and reporting (no models needed)."""

import importlib.util
from pathlib import Path

import pytest

from collab_core.training import csqa as task

spec = importlib.util.spec_from_file_location("csqa", Path(__file__).parent.parent / "benchmarks" / "csqa.py")
csqa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(csqa)

Q = {"id": "q1", "question": "Where do you keep plates?", "answerKey": "A",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["cupboard", "table", "restaurant", "dishwasher", "market"]}}


def test_prompt_lists_every_choice():
    msg = task.user_message(Q)
    assert "Where do you keep plates?" in msg and "A) cupboard" in msg and "E) market" in msg


def test_extraction_letter_then_choice_text_else_invalid():
    assert task.extract(" A) cupboard.", Q) == "A"
    assert task.extract(" D.", Q) == "D"
    assert task.extract(" the dishwasher", Q) == "D"
    assert task.extract(" I am not sure", Q) is None
    assert task.extract(" Apples", Q) is None  # a capital letter inside a word is not an answer


class _LM:
    """Just enough of a LocalModel for ``render_prompt``: a chat template that wraps the user message."""

    has_chat_template = True

    class tokenizer:  # noqa: N801
        @staticmethod
        def apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw):
            return f"<user>{messages[-1]['content']}</user><assistant>"

        @staticmethod
        def encode(text, add_special_tokens=False):
            return list(text.encode())


def test_letter_format_is_unchanged():
    f = task.get_format("letter")
    assert (f.prefill, f.max_tokens, f.stop) == ("The answer is", 6, "\n")
    assert task.user_message(Q).endswith("\nAnswer with the letter of the correct choice.")
    assert task.prompt_text(_LM, Q).endswith("</user><assistant>The answer is")
    assert task.is_correct(" A) cupboard", Q) and not task.is_correct("Therefore, the answer is (B).", Q)


def test_explain_format_asks_for_a_short_explanation_and_the_final_sentence():
    f = task.get_format("explain")
    assert (f.prefill, f.max_tokens, f.stop) == ("Let's think briefly.", 100, "")  # explain first; no newline stop
    msg = task.user_message(Q, "explain")
    assert "A) cupboard" in msg and "E) market" in msg and "explain" in msg.lower()
    assert '"Therefore, the answer is (X)."' in msg
    assert task.prompt_text(_LM, Q, "explain").endswith("</user><assistant>Let's think briefly.")
    with pytest.raises(ValueError, match="letter, explain"):
        task.get_format("essay")


def test_explain_extraction_reads_the_end_of_the_answer():
    ex = task.extract_final
    assert ex("Plates are kept in a cupboard (A), not on a table (B). Therefore, the answer is (A).", Q) == "A"
    assert ex("B looks right at first, but the answer is C.", Q) == "C"  # the last "answer is", not the first letter
    assert ex("The answer is (D). On reflection, the answer is: (E)", Q) == "E"
    assert ex("So the answer is **(B)**", Q) == "B"
    assert ex("The answer is B) table", Q) == "B"
    # no "answer is": the last standalone letter; the article "A" before a word is not a choice
    assert ex("Plates go in a cupboard, so D) is wrong and (A) is right.", Q) == "A"
    assert ex("A person keeps plates where they are safe: B", Q) == "B"
    assert ex("A person keeps plates in a cupboard.", Q) is None  # invalid
    assert ex("The answer is Apples.", Q) is None  # a capital letter inside a word is not an answer
    assert ex("", Q) is None
    assert task.is_correct("Cupboards hold plates. Therefore, the answer is (A).", Q, "explain")
    assert not task.is_correct("Therefore, the answer is (A).", {**Q, "answerKey": "B"}, "explain")


def test_summary_and_headline():
    rows = []
    for i in range(10):
        rows.append({"mode": "small", "id": str(i), "tokens": 5, "cloud_tokens": 0, "cloud_calls": 0,
                     "cloud_failures": 0, "cloud_in": 0, "cloud_out": 0, "cost": 0.0, "time_s": 1.0,
                     "pred": "A" if i < 2 else None, "correct": i < 2})
        rows.append({"mode": "cloud", "id": str(i), "tokens": 5, "cloud_tokens": 5, "cloud_calls": 1,
                     "cloud_failures": 0, "cloud_in": 50, "cloud_out": 5, "cost": 0.0, "time_s": 4.0,
                     "pred": "A", "correct": i < 6})
        rows.append({"mode": "budget:0.07", "id": str(i), "tokens": 20, "cloud_tokens": 1 if i < 2 else 0,
                     "cloud_calls": 1 if i < 2 else 0, "cloud_failures": 0, "cloud_in": 0, "cloud_out": 0,
                     "cost": 0.0, "time_s": 1.5, "pred": "A", "correct": i < 4})
        rows.append({**rows[-1], "mode": "learned-budget:0.07", "correct": i < 5})
    s = csqa.summarize(rows, ["small", "cloud", "budget:0.07", "learned-budget:0.07"])
    assert s["small"]["accuracy"] == 0.2 and s["small"]["invalid_rate"] == 0.8
    assert s["small"]["median_answer_tokens"] == 5 and s["budget:0.07"]["median_answer_tokens"] == 20
    assert s["budget:0.07"]["routed_share"] == 2 / 200
    h = csqa.headline(s)
    assert h["relative_gain_at_7pct"] == (0.5 - 0.2) / 0.2  # the best routed mode within 7%
    assert h["gap_closed_at_7pct"] == (0.5 - 0.2) / (0.6 - 0.2)
    assert abs(h["learned_minus_confidence_at_budget_0.07"] - 0.1) < 1e-12


def test_answers_by_place_counts_each_answer_once_against_the_local_answer():
    base = {"tokens": 50, "cloud_calls": 1, "cloud_failures": 0, "cloud_in": 0, "cloud_out": 0, "cost": 0.0,
            "time_s": 1.0, "pred": "A"}
    small = [{**base, "mode": "small", "id": str(i), "cloud_tokens": 0, "correct": ok}
             for i, ok in enumerate([False, True, False, True, False])]
    places = [{"answer slot": 1, "first sentence": 0, "elsewhere": 1},  # " (" and the letter: wrong -> right
              {"answer slot": 1, "first sentence": 0, "elsewhere": 0},  # the letter alone: right -> wrong
              {"answer slot": 0, "first sentence": 0, "elsewhere": 1},  # elsewhere only: no change
              {"answer slot": 0, "first sentence": 0, "elsewhere": 0},  # not routed
              {"answer slot": 0, "first sentence": 2, "elsewhere": 0}]  # elsewhere only: wrong -> right
    routed = [{**base, "mode": "learned-budget:0.02", "id": str(i), "routed_places": p,
               "cloud_tokens": sum(p.values()), "correct": ok}
              for i, (p, ok) in enumerate(zip(places, [True, False, False, True, True]))]
    s = csqa.summarize(small + routed, ["small", "learned-budget:0.02"])
    assert "answers_by_place" not in s["small"]
    assert s["learned-budget:0.02"]["answers_by_place"] == {
        "slot": {"answers": 2, "cloud_tokens": 3, "up": 1, "down": 1},
        "elsewhere only": {"answers": 2, "cloud_tokens": 3, "up": 1, "down": 0},
        "none": {"answers": 1, "cloud_tokens": 0, "up": 0, "down": 0}}


def test_median_answer_tokens_per_mode():
    rows = [{"mode": "small", "id": str(i), "tokens": t, "cloud_tokens": 0, "cloud_calls": 0, "cloud_failures": 0,
             "cloud_in": 0, "cloud_out": 0, "cost": 0.0, "time_s": 1.0, "pred": None, "correct": False}
            for i, t in enumerate([3, 100, 40, 41])]
    assert csqa.summarize(rows, ["small"])["small"]["median_answer_tokens"] == 40.5


def test_modes_and_out_folder(tmp_path):
    import argparse

    args = argparse.Namespace(modes="small", skip="", thresholds="0.5", budgets="0.07", learned_budgets="",
                              learned_thresholds="", seed_thresholds="0.7")
    assert csqa.build_modes(args) == ["small"]
    args.modes = ""
    assert csqa.build_modes(args) == ["small", "cloud", "threshold:0.5", "budget:0.07", "seed:0.7"]
    args.modes = "small,bogus:1"
    with pytest.raises(SystemExit, match="bogus"):
        csqa.build_modes(args)
    assert csqa.default_out(None, "letter").name == "csqa"  # today's folder for the default
    assert csqa.default_out("qwen2.5-coder-0.5b", "explain").name == "csqa-qwen2.5-coder-0.5b-explain"
    assert csqa.default_out("/m/x.gguf", "letter").name == "csqa-x.gguf"
    csqa.check_run_settings(tmp_path, {"format": "letter", "max_tokens": 6})
    csqa.check_run_settings(tmp_path, {"format": "letter", "max_tokens": 6})  # same settings: resumes
    with pytest.raises(SystemExit, match="other settings"):
        csqa.check_run_settings(tmp_path, {"format": "explain", "max_tokens": 100})


def test_where_routed_tokens_fall():
    from collab_core.training.csqa import answer_slot, routed_places

    pieces = [("Cats", "local"), (" purr", "cloud"), (".", "local"), (" So the answer is (", "local"),
              ("C", "cloud"), (").", "local"), (" Done", "cloud")]
    assert routed_places(pieces) == {"answer slot": 1, "first sentence": 1, "elsewhere": 1}
    assert routed_places([("No letter here", "cloud")]) == {"answer slot": 0, "first sentence": 1, "elsewhere": 0}
    assert answer_slot("the answer is (B). The answer is D") == len("the answer is (B). The answer is ")
