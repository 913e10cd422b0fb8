"""The tool-calling check (benchmarks/tool_calls.py): its tasks, its scoring, and a smoke run of every mode on
SmolLM2 with a scripted fake cloud."""

import importlib.util
import json
from pathlib import Path

import pytest

from collab_core.devtools.fakecloud import FakeCloud

spec = importlib.util.spec_from_file_location("tool_calls", Path(__file__).parent.parent / "benchmarks" /
                                              "tool_calls.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_tasks_are_well_formed_and_their_answers_validate():
    tools, tasks = bench.load_tasks(bench.DATA)
    assert 20 <= len(tasks) <= 50 and len({t["id"] for t in tasks}) == len(tasks)
    names = {t["function"]["name"] for t in tools}
    for t in tasks:
        assert t["expected"]["name"] in names
        assert bench.score(t["expected"], t["expected"], tools) == {"valid": True, "tool": True, "args": True}


def test_scoring():
    tools, _ = bench.load_tasks(bench.DATA)
    exp = {"name": "set_timer", "arguments": {"minutes": 15}}
    assert bench.score({"name": "set_timer", "arguments": {"minutes": 15.0}}, exp, tools)["args"]
    assert bench.score({"name": "set_timer", "arguments": {"minutes": 14}}, exp, tools) == \
        {"valid": True, "tool": True, "args": False}
    assert bench.score({"name": "set_timer", "arguments": {"minutes": "x"}}, exp, tools)["valid"] is False
    assert bench.score({"name": "nope", "arguments": {}}, exp, tools) == {"valid": False, "tool": False, "args": False}
    assert bench.score(None, exp, tools) == {"valid": False, "tool": False, "args": False}
    city = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    assert bench.score({"name": "get_weather", "arguments": {"city": " paris", "unit": "celsius"}}, city, tools)["args"]


@pytest.mark.smollm
def test_smoke_every_mode(smollm, tmp_path, capsys):
    def reply(body):  # a cloud that writes the expected call (chat: whole; completion: the rest of it)
        text = body.get("prompt") or json.dumps(body.get("messages"))
        call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "celsius"}}\n</tool_call>'
        if "prompt" in body:
            partial = text.rsplit("<|im_start|>assistant\n", 1)[1]
            return call[len(partial):] if call.startswith(partial) else " "
        return call

    with FakeCloud(reply=reply) as fc:
        url = fc.url
        bench.main(["--cloud-model", "text-completion-openai/fake", "--api-base", url, "--limit", "2",
                    "--out", str(tmp_path), "--max-tokens", "64"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert summary["tasks"] == 2 and set(summary["modes"]) == {"local", "routed", "cloud"} and len(rows) == 6
    for r in rows:
        if r["mode"] != "cloud":  # under the grammar a call validates, or the token limit came first (counted)
            assert r["valid"] or r["error"].startswith("GrammarError: ") and r["call"] is None
    cloud = [r for r in rows if r["mode"] == "cloud"]
    assert cloud[0]["args"] and not cloud[1]["args"]  # the scripted cloud always asks for Tokyo's weather
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("local_valid_call_rate=")
    # resumed: every (task, mode) row is there, so nothing is asked again (the cloud is gone) and the summary holds
    bench.main(["--cloud-model", "text-completion-openai/fake", "--api-base", url, "--limit", "2",
                "--out", str(tmp_path), "--max-tokens", "64"])
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 6
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
