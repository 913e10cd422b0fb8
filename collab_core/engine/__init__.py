"""The engine: token-level collaborative generation, the one generation loop of the library.

* ``core`` -- ``Engine``: what outlives a request (decoder, router, cloud client, span cache), and the entry
  points ``stream`` / ``generate`` / ``astream`` / ``agenerate``;
* ``run`` -- ``Run``: one generation's loop (decode, score, route, settle, emit);
* ``pacing`` -- ``Pacer``: when a draft pass is worth running just before a span's reply lands;
* ``reconcile`` -- settling a cloud span against the local draft, a pure function;
* ``events`` -- ``TokenEvent``, ``FinalEvent``, ``Generation``.

Pipelines: ``sync`` waits for each cloud span; ``async`` keeps drafting locally while a call is in flight and
keeps the draft where the span agrees with it (rolling the KV cache back where it does not). The cloud never
ends a generation: a failed, late or garbled call falls back to the local token and is counted.
"""

from .core import Engine
from .events import Event, FinalEvent, Generation, TokenEvent

__all__ = ["Engine", "Event", "FinalEvent", "Generation", "TokenEvent"]
