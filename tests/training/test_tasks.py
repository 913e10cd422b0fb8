"""A user's task for router training: rows, gold answers and the answer checks."""

from __future__ import annotations

import json

import pytest

from collab_core.errors import ConfigError
from collab_core.training.tasks import answer_check, load_tasks


def test_contains_is_the_default_check():
    check = answer_check(None)
    assert check("The capital is Paris.", {"answer": "paris"})
    assert not check("The capital is Parisian.", {"answer": "Paris"})  # a whole word, not a prefix
    assert not check("anything", {"answer": ""})


def test_regex_reads_the_last_match():
    check = answer_check(r"regex:answer:\s*(\w+)")
    assert check("answer: 3 ... wait, answer: 4", {"answer": "4"})
    assert not check("answer: 4 ... no, answer: 3", {"answer": "4"})
    assert not check("no answer here", {"answer": "4"})
    assert answer_check(r"regex:\d+")("7 then 12", {"answer": "12"})  # no group: the whole match
    with pytest.raises(ConfigError):
        answer_check("regex:(")


def test_a_python_callable_check(tmp_path):
    f = tmp_path / "mycheck.py"
    f.write_text("def right(answer, row):\n    return answer.strip().endswith(row['answer'])\n")
    check = answer_check(f"{f}:right")
    assert check("so it is 42", {"answer": "42"}) and not check("42 or 41", {"answer": "42"})
    assert answer_check("json:loads") is json.loads  # any importable module:function
    for bad in (f"{f}:missing", "no_such_module_xyz:f", "magic"):
        with pytest.raises(ConfigError):
            answer_check(bad)


def test_load_tasks_from_a_users_jsonl(tiny_lm, tmp_path):
    p = tmp_path / "tasks.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"t{i}", "prompt": f"What is {i}+{i}?", "answer": str(2 * i)})
                           for i in range(5)) + "\n")
    tasks = load_tasks(tiny_lm, p, limit=3, check=r"regex:(\d+)")
    assert len(tasks) == 3 and len({t.id for t in tasks}) == 3
    gold = {f"t{i}": str(2 * i) for i in range(5)}
    t = tasks[0]
    assert t.check(f"it is {gold[t.id]}") and not t.check("it is 999")
    assert "What is" in t.prompt and t.prompt != "What is"  # chat-templated
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": 1, "prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match="answer"):
        load_tasks(tiny_lm, tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError):
        load_tasks(tiny_lm, tmp_path / "missing.jsonl")


def test_collect_and_train_on_your_own_task_from_the_cli(tiny_dir, tmp_path, capsys):
    """`collab router collect --values` then `collab router train --values` on a user's JSONL with a regex check
    (the tiny model is its own teacher here: every position agrees, so every label is 0, but the plumbing runs)."""
    from collab_core.cli import main

    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"m{i}", "prompt": f"Say {i}.", "answer": str(i)})
                              for i in range(4)) + "\n")
    traces, out = tmp_path / "traces", tmp_path / "router"
    common = ["--local-model", str(tiny_dir), "--traces", str(traces), "--values"]
    assert main(["router", "collect", *common, "--teacher", str(tiny_dir), "--data", str(data), "--limit", "4",
                 "--check", r"regex:(\d+)", "--max-tokens", "6", "--max-batch", "2"]) == 0
    assert len(list(traces.glob("*.npz"))) == 4
    assert main(["router", "train", *common, "--out", str(out), "--losses", "weighted", "--epochs", "2"]) == 0
    meta = json.loads((out / "router.json").read_text())
    assert meta["metrics"]["kind"] == "value" and meta["feature_set"] == "hidden+embed+topk+conf"
    assert "4 questions" in capsys.readouterr().out
