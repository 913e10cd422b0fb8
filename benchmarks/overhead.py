"""Local-only decode speed: our engine (step decoder + confidence signals + streaming text) against
``mlx_lm.stream_generate`` on the same model, prompt and token count, interleaved in one process.

    python benchmarks/overhead.py [--local-model SPEC] [--tokens 128] [--rounds 5]

Prints one JSON object, then ``overhead_ratio=<ours/mlx_lm>`` (decode tokens/s, median over rounds) as
its last line. Target: >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import collab_core  # noqa: F401  (first: loads OpenBLAS before mlx when available)
from collab_core import Engine, TokenEvent, load_local_model
from collab_core.local import blas
from collab_core.prompts import encode_prompt

PROMPT = "Write a detailed story about a dragon who learns to paint. Use at least three paragraphs."


def decode_tps(stamps: list[float]) -> float:
    """Tokens per second after the first token (prefill excluded), from per-token timestamps."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def run_mlx_lm(lm, ids, n):
    import mlx_lm

    stamps, toks = [], []
    for r in mlx_lm.stream_generate(lm.model, lm.tokenizer, ids, max_tokens=n):
        stamps.append(time.perf_counter())
        toks.append(r.token)
    return stamps, toks


def run_ours(engine, prompt, n):
    stamps, toks = [], []
    for ev in engine.stream(prompt, max_tokens=n):
        if isinstance(ev, TokenEvent):  # the closing FinalEvent carries stats, not a token
            stamps.append(time.perf_counter())
            toks.append(ev.token)
    return stamps, toks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    lm = load_local_model(args.local_model)
    engine = Engine(lm)
    ids = encode_prompt(lm, PROMPT)
    run_ours(engine, PROMPT, 8)  # warm-up both paths
    run_mlx_lm(lm, ids, 8)
    rows = []
    for i in range(args.rounds):
        order = [("ours", lambda: run_ours(engine, PROMPT, args.tokens)),
                 ("mlx_lm", lambda: run_mlx_lm(lm, ids, args.tokens))]
        if i % 2:
            order.reverse()
        res = {}
        for name, fn in order:
            stamps, toks = fn()
            res[name] = {"tokens": len(toks), "decode_tps": round(decode_tps(stamps), 3)}
        ours_toks = res["ours"]["tokens"]
        # mlx-lm also yields the EOS token; ours does not -- compare decode rates, not counts.
        res["ratio"] = round(res["ours"]["decode_tps"] / res["mlx_lm"]["decode_tps"], 4)
        res["same_tokens"] = abs(ours_toks - res["mlx_lm"]["tokens"]) <= 1
        rows.append(res)
    ratio = statistics.median(r["ratio"] for r in rows)
    out = {
        "benchmark": "overhead",
        "model": lm.name,
        "form": lm.form,
        "blas": blas.status()["loaded"] or "reference",
        "machine": f"{platform.system()} {platform.machine()}",
        "prompt_tokens": len(ids),
        "max_tokens": args.tokens,
        "rounds": rows,
        "median_ours_tps": statistics.median(r["ours"]["decode_tps"] for r in rows),
        "median_mlx_lm_tps": statistics.median(r["mlx_lm"]["decode_tps"] for r in rows),
        "overhead_ratio": round(ratio, 4),
    }
    print(json.dumps(out, indent=2))
    print(f"overhead_ratio={ratio:.4f}")


if __name__ == "__main__":
    main()
