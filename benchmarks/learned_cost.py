"""Per-token cost of the learned router, against a plain local decode step, interleaved in one process.

    python benchmarks/learned_cost.py [--local-model SPEC] [--router PATH] [--tokens 64] [--rounds 5]

Three loops over the same prompt and greedy tokens: ``plain`` (decode step, no hidden state, no scoring),
``confidence`` (plus the confidence router's score) and ``learned`` (the step also returns the hidden state,
plus the learned router's score). Also the scorer call alone, timed on a fixed signal. Without ``--router``
it uses the router shipped for the model, else an untrained MLP of the same shape (same cost).

Last line: ``learned_step_overhead=<learned/plain - 1>``, ``scorer_share=<scorer call / plain step>``.
Target: under 0.03.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import collab_core  # noqa: F401  (first: loads OpenBLAS before mlx when available)
from collab_core import load_local_model
from collab_core import scoring as S
from collab_core.local.decoder import StepDecoder
from collab_core.prompts import encode_prompt
from collab_core.scoring import ConfidenceScorer, TokenSignal
from collab_core.training import train as T

PROMPT = "Write a detailed story about a dragon who learns to paint. Use at least three paragraphs."


def per_token(lm, ids, n, hidden: bool, scorer) -> float:
    dec = StepDecoder(lm, want_hidden=hidden)
    step = dec.prefill(ids)
    step.token_id  # noqa: B018 - prefill finished before the clock starts
    t0 = time.perf_counter()
    for i in range(n):
        tid = step.token_id
        if scorer is not None:
            scorer(TokenSignal(step.confidence, i, tid, step.hidden))
        step = dec.step(tid)
    step.token_id  # noqa: B018
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--router", default=None)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    lm = load_local_model(args.local_model)
    path = args.router or S.shipped_router(lm.fingerprint)
    if path is None:  # an untrained MLP of the shipped shape costs the same
        import numpy as np

        d = int(lm.config["hidden_size"]) + 3
        model, _, _ = T.train(np.zeros((8, d), np.float32), np.array([0, 1] * 4, np.float32), epochs=1)
        path = T.save(model, tempfile.mkdtemp() + "/r", model_fingerprint=lm.fingerprint, in_dim=d, hidden=64)
    learned = S.LearnedScorer(path)
    learned.bind(lm)
    conf = ConfidenceScorer()
    conf.bind(lm)
    ids = encode_prompt(lm, PROMPT)
    per_token(lm, ids, 8, True, learned)  # warm-up (compiles, allocates)
    times: dict[str, list[float]] = {"plain": [], "confidence": [], "learned": []}
    for _ in range(args.rounds):
        times["plain"].append(per_token(lm, ids, args.tokens, False, None))
        times["confidence"].append(per_token(lm, ids, args.tokens, False, conf))
        times["learned"].append(per_token(lm, ids, args.tokens, True, learned))
    dec = StepDecoder(lm, want_hidden=True)
    step = dec.prefill(ids)
    sig = TokenSignal(step.confidence, 0, step.token_id, step.hidden)
    t0 = time.perf_counter()
    for _ in range(200):
        learned(sig)
    call = (time.perf_counter() - t0) / 200
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": lm.name, "router": str(path), "tokens": args.tokens, "rounds": args.rounds,
           "ms_per_token": {k: round(v * 1e3, 3) for k, v in med.items()}, "scorer_call_ms": round(call * 1e3, 4)}
    print(json.dumps(out))
    print(f"learned_step_overhead={med['learned'] / med['plain'] - 1:.4f} "
          f"confidence_step_overhead={med['confidence'] / med['plain'] - 1:.4f} "
          f"scorer_share={call / med['plain']:.4f}")


if __name__ == "__main__":
    main()
