"""A LangChain chain: prompt | CollabLLM | output parser.

    python examples/langchain_chain.py                     # local only (bundled SmolLM2), offline
    python examples/langchain_chain.py --standin           # + the stand-in cloud on loopback, offline
    python examples/langchain_chain.py --cloud-model anthropic/claude-sonnet-4-5       # needs ANTHROPIC_API_KEY
    python examples/langchain_chain.py --cloud-model gpt-4o-mini                       # needs OPENAI_API_KEY
    python examples/langchain_chain.py --cloud-model deepseek/deepseek-chat            # needs DEEPSEEK_API_KEY

Swapping the provider is swapping the model string; nothing else in the chain changes.
"""

import argparse

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from langchain_collab import CollabLLM


def build_chain(cloud_model=None, api_base=None, threshold=0.5):
    prompt = ChatPromptTemplate.from_messages([
        ("system", "You answer in one short sentence."),
        ("human", "{question}"),
    ])
    llm = CollabLLM(cloud_model=cloud_model, api_base=api_base, threshold=threshold, max_tokens=48)
    return prompt | llm | StrOutputParser()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloud-model", default=None)
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--standin", action="store_true", help="start the stand-in cloud on loopback")
    ap.add_argument("--question", default="Why do leaves change colour in autumn?")
    args = ap.parse_args()
    if args.standin:
        from collab_core.devtools.standin import StandinCloud

        with StandinCloud() as cloud:
            chain = build_chain(cloud.model, cloud.api_base)
            for piece in chain.stream({"question": args.question}):
                print(piece, end="", flush=True)
            print()
        return
    chain = build_chain(args.cloud_model, args.api_base)
    for piece in chain.stream({"question": args.question}):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
