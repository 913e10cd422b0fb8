"""The CommonsenseQA benchmark's prompt, answer extraction and reporting (no models needed)."""

import importlib.util
from pathlib import Path

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
    assert s["budget:0.07"]["routed_share"] == 2 / 200
    h = csqa.headline(s)
    assert h["relative_gain_at_7pct"] == (0.5 - 0.2) / 0.2  # the best routed mode within 7%
    assert h["gap_closed_at_7pct"] == (0.5 - 0.2) / (0.6 - 0.2)
    assert abs(h["learned_minus_confidence_at_budget_0.07"] - 0.1) < 1e-12
