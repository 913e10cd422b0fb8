"""A LlamaIndex ``FunctionAgent`` on CollabLLM: two tools, routed tokens inside the calls.

    python examples/llamaindex_agent.py                                 # Qwen2.5-Coder-0.5B + scripted fake cloud
    python examples/llamaindex_agent.py --local-model smollm2-135m      # the bundled SmolLM2 (generic tool format)
    python examples/llamaindex_agent.py --cloud-model gpt-4o-mini --budget 0.07         # needs OPENAI_API_KEY

CollabLLM is a ``FunctionCallingLLM``: the agent hands it the tools, the local model writes each call under the
tool-call grammar, and its uncertain tokens -- the values -- go to the cloud. Each call is printed with the
text the cloud wrote in that turn (``raw["collab"]["cloud_spans"]``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCallResult
from llama_index.core.tools import FunctionTool

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from llamaindex_collab import CollabLLM

sys.path.insert(0, str(Path(__file__).parent))
from _agent_common import QUESTION, TOOLS, fake_reply  # noqa: E402


def make_llm(local_model, cloud_model, api_base, threshold=0.5, budget=None):
    return CollabLLM(local_model=local_model, cloud_model=cloud_model, api_base=api_base, threshold=threshold,
                     budget=budget, max_tokens=96, pipeline="sync")


async def run_agent(llm: CollabLLM, question: str = QUESTION, out=print) -> str:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(f) for f in TOOLS], llm=llm,
                          system_prompt="Use the tools to answer.")
    handler = agent.run(user_msg=question, max_iterations=8)
    spans: list = []
    async for ev in handler.stream_events():
        if isinstance(ev, AgentOutput):
            spans = (ev.raw or {}).get("collab", {}).get("cloud_spans", []) if isinstance(ev.raw, dict) else []
        elif isinstance(ev, ToolCallResult):
            out(f"call {ev.tool_name}({ev.tool_kwargs}) -> {ev.tool_output.content!r}   [cloud wrote: {spans}]")
    answer = str(await handler)
    out(f"answer: {answer!r}")
    return answer


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--cloud-model", default=None, help="a LiteLLM model string (default: a scripted fake cloud)")
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--budget", type=float, default=None)
    args = ap.parse_args(argv)
    if args.cloud_model:
        asyncio.run(run_agent(make_llm(args.local_model, args.cloud_model, args.api_base, args.threshold, args.budget)))
        return
    from collab_core.devtools.fakecloud import FakeCloud

    with FakeCloud(reply=fake_reply) as fc:
        asyncio.run(run_agent(make_llm(args.local_model, "text-completion-openai/fake", fc.url, args.threshold,
                                       args.budget)))


if __name__ == "__main__":
    main()
