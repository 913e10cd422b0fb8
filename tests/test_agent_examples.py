"""The agent examples run to completion on SmolLM2 with their scripted fake cloud (a smoke check: the real pair is
Qwen2.5-Coder-0.5B with a cloud model)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from collab_core.devtools.fakecloud import FakeCloud

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_scripted_cloud_writes_the_next_word_of_its_turn():
    common = _load("_agent_common")
    head = "<|im_start|>user\nWeather?<|im_end|>\n"
    assert common.fake_reply({"prompt": head + "<|im_start|>assistant\n"}) == "<tool_call"
    assert common.fake_reply({"prompt": head + '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", '
                                              '"arguments": {"city": "'}) == "Paris"
    after = head + "<|im_start|>user\n<tool_response>\nParis: 18 C\n</tool_response><|im_end|>\n"
    assert '"celsius_to_fahrenheit"' in common.scripted_turn(after)


@pytest.mark.smollm
@pytest.mark.parametrize("example", ["langchain_agent", "llamaindex_agent"])
def test_agent_example_runs_to_completion(smollm, example):
    import asyncio

    mod = _load(example)
    lines = []
    with FakeCloud(reply=mod.fake_reply) as fc:
        llm = mod.make_llm("smollm2-135m", "text-completion-openai/fake", fc.url)
        result = mod.run_agent(llm, out=lines.append)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        assert fc.requests  # tokens were routed
    calls = [x for x in lines if x.startswith("call ")]
    assert calls and all("get_weather" in c or "celsius_to_fahrenheit" in c for c in calls)
    assert "[cloud wrote: [" in calls[0] and isinstance(result, str)
