"""Per-token confidence signals of the local model's next-token distribution.

The signals are computed inside the MLX graph of each decode step (so they are evaluated asynchronously
together with the token) and come back as one small array: entropy, then the top-k log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Confidence:
    """Summary of one next-token distribution."""

    max_prob: float
    entropy: float  # nats
    margin: float  # top-1 minus top-2 probability
    top_ids: tuple[int, ...] = field(default=())
    top_probs: tuple[float, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "max_prob": round(self.max_prob, 6),
            "entropy": round(self.entropy, 6),
            "margin": round(self.margin, 6),
            "top_ids": list(self.top_ids),
            "top_probs": [round(p, 6) for p in self.top_probs],
        }


def summary_graph(logprobs, k: int):
    """MLX ops: (packed [entropy, top-k logprobs...], top-k ids) for a (vocab,) log-prob vector."""
    import mlx.core as mx

    probs = mx.exp(logprobs)
    entropy = -(probs * mx.maximum(logprobs, -1e30)).sum()
    top_ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
    packed = mx.concatenate([entropy[None], logprobs[top_ids]])
    return packed, top_ids


def unpack_summary(packed: list[float], ids: list[int]) -> Confidence:
    order = sorted(range(len(ids)), key=lambda i: -packed[1 + i])
    top_ids = tuple(int(ids[i]) for i in order)
    top_probs = tuple(math.exp(packed[1 + i]) for i in order)
    p1 = top_probs[0]
    p2 = top_probs[1] if len(top_probs) > 1 else 0.0
    return Confidence(max_prob=p1, entropy=max(0.0, packed[0]), margin=p1 - p2, top_ids=top_ids,
                      top_probs=top_probs)
