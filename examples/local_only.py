"""Local-only generation with the bundled default model (no cloud, no keys).

    python examples/local_only.py "What is the capital of France?"
"""

import sys

import collab_core  # noqa: F401  (first: OpenBLAS on Linux)
from collab_core import Engine

engine = Engine()
prompt = sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?"
last = None
for event in engine.stream(prompt, max_tokens=128):
    print(event.text, end="", flush=True)
    last = event
print()
print(last.stats.summary_line(), file=sys.stderr)
