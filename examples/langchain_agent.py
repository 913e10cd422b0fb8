"""A LangChain tool-calling agent on CollabLLM: two tools, routed tokens inside the calls.

    python examples/langchain_agent.py                                  # Qwen2.5-Coder-0.5B + scripted fake cloud
    python examples/langchain_agent.py --local-model smollm2-135m       # the bundled SmolLM2 (generic tool format)
    python examples/langchain_agent.py --cloud-model gpt-4o-mini --budget 0.07          # needs OPENAI_API_KEY

The local model writes the calls in its own tool format (Qwen2.5: its template's tools section), under a
grammar: the structure is forced, so only the values are ever uncertain -- and those are what the router sends
to the cloud. Each call is printed with the text the cloud wrote in it (``collab["cloud_spans"]``), checked
against the grammar before it was kept.

The loop is LangChain's usual one (``bind_tools``, ``AIMessage.tool_calls``, ``ToolMessage``), written out so
it needs only ``langchain-core``; ``langchain.agents.create_agent(CollabLLM(...), tools)`` drives the same
calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from langchain_collab import CollabLLM

sys.path.insert(0, str(Path(__file__).parent))
from _agent_common import QUESTION, TOOLS, fake_reply  # noqa: E402

LC_TOOLS = [tool(f) for f in TOOLS]


def make_llm(local_model, cloud_model, api_base, threshold=0.5, budget=None):
    return CollabLLM(local_model=local_model, cloud_model=cloud_model, api_base=api_base, threshold=threshold,
                     budget=budget, max_tokens=96, pipeline="sync")


def run_agent(llm: CollabLLM, question: str = QUESTION, max_steps: int = 4, out=print) -> str:
    """Call tools until the model answers in text (at most ``max_steps`` model turns); returns the answer."""
    by_name = {t.name: t for t in LC_TOOLS}
    agent = llm.bind_tools(LC_TOOLS)
    messages = [SystemMessage("Use the tools to answer."), HumanMessage(question)]
    for _ in range(max_steps):
        ai = agent.invoke(messages)
        messages.append(ai)
        spans = ai.response_metadata["collab"]["cloud_spans"]
        if not ai.tool_calls:
            out(f"answer: {ai.content!r}   [cloud wrote: {spans}]")
            return ai.content
        for call in ai.tool_calls:
            result = by_name[call["name"]].invoke(call["args"]) if call["name"] in by_name else "unknown tool"
            out(f"call {call['name']}({call['args']}) -> {result!r}   [cloud wrote: {spans}]")
            messages.append(ToolMessage(str(result), tool_call_id=call["id"], name=call["name"]))
    out("(no answer within the step limit)")
    return ""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--cloud-model", default=None, help="a LiteLLM model string (default: a scripted fake cloud)")
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--budget", type=float, default=None)
    args = ap.parse_args(argv)
    if args.cloud_model:
        run_agent(make_llm(args.local_model, args.cloud_model, args.api_base, args.threshold, args.budget))
        return
    from collab_core.devtools.fakecloud import FakeCloud

    with FakeCloud(reply=fake_reply) as fc:
        run_agent(make_llm(args.local_model, "text-completion-openai/fake", fc.url, args.threshold, args.budget))


if __name__ == "__main__":
    main()
