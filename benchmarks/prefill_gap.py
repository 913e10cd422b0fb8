"""A running stream while a long prompt arrives: the worst gap between two of its tokens, with the long prompt read
in chunks between decode rounds (``BatchScheduler.prefill_chunk``) against read in one round.

    python benchmarks/prefill_gap.py [--local-model SPEC] [--prompt-tokens 2000] [--chunk 512] [--rounds 3]

Per round and per setting, in one process: stream A (a short prompt, greedy) runs; once it has emitted 8 tokens,
request B arrives with a ``--prompt-tokens`` prompt (token ids) and writes 4 tokens. A's token times are taken as
its reader receives them; reported: A's median gap before B arrived, and its worst gap from B's arrival to B's end.
A's answer must not change (checked). Prints one JSON object, then the headline ``prefill_gap_ms=<worst, chunked>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import collab_core  # noqa: F401  (first: loads OpenBLAS before mlx when available)
from collab_core import Engine, load_local_model
from collab_core.local.loop import model_loop


def one_round(lm, long_ids: list[int], chunk: int) -> dict:
    model_loop(lm).prefill_chunk = chunk
    eng = Engine(lm, max_batch=2)
    stamps: list[float] = []
    text: list[str] = []
    arrived = threading.Event()
    b_span: list[float] = []

    def long_request():
        arrived.wait()
        b_span.append(time.perf_counter())
        eng.generate(long_ids, max_tokens=4, chat=False)
        b_span.append(time.perf_counter())

    t = threading.Thread(target=long_request)
    t.start()
    for ev in eng.stream("Write a long story about a lighthouse keeper.", max_tokens=64):
        stamps.append(time.perf_counter())
        text.append(getattr(ev, "text", ""))
        if len(stamps) == 8:
            arrived.set()
    t.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    t0, t1 = b_span
    during = [b - a for a, b in zip(stamps, stamps[1:]) if b >= t0 and a <= t1]
    return {"median_gap_ms": 1000 * statistics.median(gaps[:7]), "worst_gap_ms": 1000 * max(during or [0.0]),
            "long_request_s": t1 - t0, "text": "".join(text)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lm = load_local_model(args.local_model)
    words = lm.tokenizer.encode(" ".join(f"item {i}," for i in range(args.prompt_tokens)))
    long_ids = words[: args.prompt_tokens]
    Engine(lm).generate("Hello", max_tokens=4)  # warm-up
    settings = {"chunked": args.chunk, "whole": 1 << 30}
    rows: dict[str, list[dict]] = {k: [] for k in settings}
    for r in range(args.rounds):
        for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            rows[name].append(one_round(lm, long_ids, settings[name]))
    model_loop(lm).prefill_chunk = args.chunk
    texts = {row["text"] for rs in rows.values() for row in rs}
    out = {"model": lm.name, "prompt_tokens": len(long_ids), "chunk": args.chunk, "answers_equal": len(texts) == 1}
    for name, rs in rows.items():
        out[name] = {k: round(statistics.median(r[k] for r in rs), 1) for k in
                     ("median_gap_ms", "worst_gap_ms", "long_request_s")}
    print(json.dumps(out, indent=1))
    print(f"prefill_gap_whole_ms={out['whole']['worst_gap_ms']}")
    print(f"prefill_gap_ms={out['chunked']['worst_gap_ms']}")


if __name__ == "__main__":
    main()
