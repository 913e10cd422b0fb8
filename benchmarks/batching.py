"""Throughput of concurrent requests decoded as one batch against the same requests one at a time.

    python benchmarks/batching.py [--local-model SPEC] [--tokens 48] [--rounds 3] [--sizes 1,2,4,8,16]

For each size N, N distinct prompts are answered (greedy, local only, ``--tokens`` tokens each) twice in the same
process, in alternating order each round: **sequential** -- one ``Engine.generate`` after another -- and
**batched** -- N threads calling ``generate`` on one engine at once, which decodes them as one batch
(``collab_core/local/batch.py``). Every batched answer must equal its sequential answer (checked; a mismatch is
reported). Throughput is generated tokens per wall second; the speedup is the median over rounds of batched
over sequential. Prints one JSON object, then the headline ``batch_speedup_8=<x>`` (and one per size).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import platform
import statistics
import threading
import time

import collab_core  # noqa: F401  (first: loads OpenBLAS before mlx when available)
from collab_core import Engine, load_local_model
from collab_core.children import run_main
from collab_core.local import blas
from collab_core.local.loop import model_loop

TOPICS = ["the sea", "a mountain", "bread", "a violin", "rain", "a library", "bees", "a bridge", "winter",
          "a lighthouse", "chess", "a river", "tea", "a train", "the moon", "a garden"]


def prompts(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}." for i in range(n)]


def sequential(lm, ps, tokens):
    eng = Engine(lm, max_batch=1)
    t0 = time.perf_counter()
    gens = [eng.generate(p, max_tokens=tokens) for p in ps]
    return time.perf_counter() - t0, gens


def batched(lm, ps, tokens):
    eng = Engine(lm, max_batch=len(ps))
    barrier = threading.Barrier(len(ps) + 1)
    s = model_loop(lm)  # the model's loop: its counters run across engines
    before = (s.rows, s.rounds)

    def one(p):
        barrier.wait()
        return eng.generate(p, max_tokens=tokens)

    with cf.ThreadPoolExecutor(len(ps)) as ex:
        futs = [ex.submit(one, p) for p in ps]
        barrier.wait()
        t0 = time.perf_counter()
        gens = [f.result() for f in futs]
        wall = time.perf_counter() - t0
    rows, rounds = s.rows - before[0], s.rounds - before[1]
    return wall, gens, (rows / rounds if rounds else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,2,4,8,16")
    args = ap.parse_args()
    lm = load_local_model(args.local_model)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    sequential(lm, prompts(1), 4)  # warm-up
    curve = {}
    for n in sizes:
        ps = prompts(n)
        rounds = []
        for r in range(args.rounds):
            res = {}
            order = ["sequential", "batched"] if r % 2 == 0 else ["batched", "sequential"]
            for name in order:
                if name == "sequential":
                    wall, gens = sequential(lm, ps, args.tokens)
                else:
                    wall, gens, rows = batched(lm, ps, args.tokens)
                    res["rows_per_round"] = round(rows, 2)
                toks = sum(g.stats.total_tokens for g in gens)
                res[name] = {"wall_s": round(wall, 3), "tokens": toks, "tps": round(toks / wall, 3),
                             "texts": [g.text for g in gens]}
            res["same_answers"] = res["batched"].pop("texts") == res["sequential"].pop("texts")
            res["speedup"] = round(res["batched"]["tps"] / res["sequential"]["tps"], 4)
            rounds.append(res)
            print(json.dumps({"size": n, "round": r, **res}), flush=True)
        curve[n] = {"speedup": statistics.median(x["speedup"] for x in rounds),
                    "sequential_tps": statistics.median(x["sequential"]["tps"] for x in rounds),
                    "batched_tps": statistics.median(x["batched"]["tps"] for x in rounds),
                    "same_answers": all(x["same_answers"] for x in rounds),
                    "rows_per_round": statistics.median(x["rows_per_round"] for x in rounds)}
    out = {"benchmark": "batching", "model": lm.name, "form": lm.form,
           "blas": blas.status()["loaded"] or "reference",
           "machine": f"{platform.system()} {platform.machine()}", "tokens": args.tokens,
           "rounds": args.rounds, "curve": curve}
    print(json.dumps(out, indent=2))
    print(" ".join(f"batch_speedup_{n}={c['speedup']:.4f}" for n, c in curve.items()))


if __name__ == "__main__":
    run_main(main)
