"""The chat-protocols benchmark (benchmarks/chat_protocols.py) reports, for the completion path and each chat path
run end to end, accuracy, invalid answers and cloud input tokens per call, side by side."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("chat_protocols", Path(__file__).parent.parent / "benchmarks" /
                                              "chat_protocols.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _row(mode, i, correct, pred, calls, cloud_in, errors=()):
    return {"mode": mode, "id": str(i), "pred": pred, "correct": correct, "tokens": 6, "cloud_tokens": 2,
            "cloud_calls": calls, "cloud_failures": len(errors), "errors": list(errors), "cloud_in": cloud_in,
            "cloud_out": 2 * calls, "time_s": 1.0}


def test_both_paths_are_reported_side_by_side():
    rows = [_row("completion", 0, True, "A", 2, 160), _row("completion", 1, False, "B", 2, 170),
            _row("chat:restate", 0, True, "A", 2, 190),
            _row("chat:restate", 1, False, None, 2, 200, ["UnalignedSpan: ... restates the prompt", "Timeout: x"])]
    summary = bench.summarize(rows, [], ["completion", "chat:restate"], [])
    chat = summary["end_to_end"]["chat:restate"]
    assert chat["accuracy"] == 0.5 and chat["invalid_rate"] == 0.5 and chat["cloud_in_per_call"] == 97.5
    assert chat["cloud_failures"] == 2 and chat["not_continuations"] == 1
    head = bench.headline(summary)
    assert head["accuracy_completion"] == 0.5 and head["invalid_completion"] == 0.0
    assert head["cloud_in_per_call_completion"] == 82.5 and head["cloud_in_per_call_restate"] == 97.5
    assert head["accuracy_ratio_restate"] == 1.0 and head["invalid_excess_points_restate"] == 50.0


def test_the_chat_path_runs_by_default_and_the_data_path_is_an_argument(tmp_path):
    args = bench.parser().parse_args(["--data", str(tmp_path / "q.jsonl"), "--limit", "0"])
    assert args.data == str(tmp_path / "q.jsonl") and args.limit == 0 and args.end_to_end == "restate"
    assert bench.parser().parse_args(["--data", "x.jsonl", "--end-to-end", ""]).end_to_end == ""
