"""The demo end to end on a tiny model pair: a real stand-in server (serving the tiny model) and the same tiny
model local, so the token-exact path runs against a real mlx_lm server."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from collab_core.devtools.demo import DEMO_QUESTIONS, demo_questions, run_demo

ROW = {"id": "q1", "question": "The capital of France is", "answerKey": "B",
       "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["Rome", "Paris", "Oslo", "Bern", "Riga"]}}


def test_the_demo_prints_local_and_routed_answers_and_a_summary(tiny_dir):
    buf = io.StringIO()
    tally = run_demo(Console(file=buf, width=1000, highlight=False), local_model=str(tiny_dir), max_tokens=12,
                     questions=[ROW], free_form="Name a colour.", cloud_folder=str(tiny_dir),
                     router="threshold:0.0")  # every position goes to the cloud
    text = buf.getvalue()
    assert "stand-in cloud warmed up in" in text
    assert text.count("local only ") == 2 and text.count("routed ") >= 2
    assert "(same tokenizer: spans are token ids)" in text
    assert tally.failures == 0 and tally.tokens > 0
    # one-token spans, token for token: every position is routed, so every call's spare token is used
    assert tally.calls > 0 and tally.spare > 0 and tally.cloud_tokens == tally.calls + tally.spare
    summary = text.strip().splitlines()[-1]
    assert "[gold: B]" in text and re.search(r"local (right|wrong), routed (right|wrong);", text)
    assert tally.graded == 1 and tally.up + tally.down <= 1
    assert re.match(r"routing changed [01] of 1 graded answers \(\d wrong->right, \d right->wrong\); routed "
                    r"\d+\.\d% of \d+ tokens in \d+ cloud calls \(0 failed, \d+ tokens from their spares\); "
                    r"cloud tokens in/out \d+/\d+, "
                    r"against ~\d+/\d+ for cloud-only answers \(\+2 prewarm calls\); [\d.]+ s routed against "
                    r"[\d.]+ s local only", summary), summary


def test_the_demo_questions_are_the_benchmarks_first_five_after_its_seed_0_shuffle():
    """A rule, not a choice by outcome: the bundled rows are the first 5 shared validation questions after the
    shuffle that benchmarks/csqa.py applies (checked where the shared data is at hand)."""
    from pathlib import Path

    from collab_core.training.csqa import load_questions

    rows = demo_questions()
    assert len(rows) == 5 and all({"id", "question", "choices", "answerKey"} <= set(r) for r in rows)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "commonsenseqa_dev_400.jsonl"
    if not shared.exists():
        pytest.skip("the shared validation questions are not in this checkout's parent folder")
    assert rows == load_questions(shared, 5, seed=0)
    assert DEMO_QUESTIONS.name == "demo_questions.jsonl"


def test_the_demo_grades_the_whole_streamed_answer_not_the_final_events_tail():
    """A stream's FinalEvent holds only the text not yet emitted; grading must read every piece."""
    from collab_core.devtools.demo import _stream
    from collab_core.engine import FinalEvent, TokenEvent
    from collab_core.training.csqa import get_format

    events = [TokenEvent(token=1, text="Therefore, the answer is", source="local", confidence=None, score=None),
              TokenEvent(token=2, text=" (", source="cloud", confidence=None, score=None),
              TokenEvent(token=3, text="B", source="cloud", confidence=None, score=None),
              FinalEvent(text=").", finish_reason="stop", stats=None, structured=None)]
    text, final = _stream(Console(file=io.StringIO()), "routed", iter(events), colour=True)
    assert text == "Therefore, the answer is (B)." and final is events[-1]
    assert get_format("explain").extract(text, ROW) == "B"
    assert get_format("explain").extract(final.text, ROW) != "B"  # the tail alone would grade it wrong
