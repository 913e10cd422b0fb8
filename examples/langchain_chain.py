"""A LangChain chain: prompt | CollabLLM | output parser.

    python examples/langchain_chain.py                     # local only (bundled SmolLM2), offline
    python examples/langchain_chain.py --standin           # + the stand-in cloud on loopback, offline
    python examples/langchain_chain.py --cloud-model anthropic/claude-sonnet-4-5       # needs ANTHROPIC_API_KEY
    python examples/langchain_chain.py --cloud-model gpt-4o-mini                       # needs OPENAI_API_KEY
    python examples/langchain_chain.py --cloud-model deepseek/deepseek-chat            # needs DEEPSEEK_API_KEY
    python examples/langchain_chain.py --cloud-model openai/default_model --api-base http://127.0.0.1:8080/v1 \
        --timeout 60   # a chat-only endpoint on loopback (`collab standin --port 8080`): the path gpt-4o-mini takes

Swapping the provider is swapping the model string; nothing else in the chain changes. The last line says how
the cloud was asked (the strategy ``auto`` picked) and what it wrote.
"""

import argparse

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from langchain_collab import CollabLLM

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "You answer in one short sentence."),
    ("human", "{question}"),
])


def make_llm(cloud_model=None, api_base=None, threshold=0.5, timeout=10.0):
    return CollabLLM(cloud_model=cloud_model, api_base=api_base, threshold=threshold, max_tokens=48, timeout=timeout)


def build_chain(cloud_model=None, api_base=None, threshold=0.5):
    return PROMPT | make_llm(cloud_model, api_base, threshold) | StrOutputParser()


def run(cloud_model, api_base, question: str, timeout: float = 10.0) -> None:
    """Stream the answer, then say how the cloud was asked and what it wrote."""
    llm = make_llm(cloud_model, api_base, timeout=timeout)
    stats = {}
    for chunk in (PROMPT | llm).stream({"question": question}):
        print(chunk.content, end="", flush=True)
        stats = chunk.response_metadata.get("collab", stats)
    print()
    if cloud_model:
        print(f"[cloud via strategy {llm._engine().cloud.strategy!r}: {stats['cloud_tokens']} of "
              f"{stats['total_tokens']} tokens, {stats['cloud_calls']} calls, {stats['cloud_failures']} failed]")
        for line in stats["cloud_errors"][:3]:
            print(f"[cloud error: {line}]")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloud-model", default=None)
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--standin", action="store_true", help="start the stand-in cloud on loopback")
    ap.add_argument("--question", default="Why do leaves change colour in autumn?")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per cloud call (a CPU stand-in needs more)")
    args = ap.parse_args()
    if args.standin:
        from collab_core.devtools.standin import StandinCloud

        with StandinCloud() as cloud:
            run(cloud.model, cloud.api_base, args.question, timeout=60)
        return
    run(args.cloud_model, args.api_base, args.question, args.timeout)


if __name__ == "__main__":
    main()
