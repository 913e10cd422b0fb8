"""MLX on a Linux CPU: the wheel's reference BLAS against OpenBLAS, prefill and decode tokens/s.

    python benchmarks/blas.py [--local-model SPEC] [--rounds 2]

The BLAS is chosen when a process starts, so each measurement runs in a child process (alternating,
same model, prompt and token count). Prints JSON, then ``openblas_prefill_speedup=`` and
``openblas_decode_speedup=`` as the last lines. Needs an OpenBLAS (`collab blas fetch`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from collab_core.children import run_main, spawn_python

CHILD = r"""
import json, sys, time
import collab_core
from collab_core import Engine, load_local_model
from collab_core.local import blas
lm = load_local_model(sys.argv[1] or None)
engine = Engine(lm)
prompt = "Summarise the following text in one sentence. " + " ".join(
    f"Sentence {i}: the committee met again to discuss the budget, the schedule and the venue." for i in range(12))
engine.generate("Hi", max_tokens=2)  # warm-up
g = engine.generate(prompt, max_tokens=int(sys.argv[2]))
s = g.stats
print(json.dumps({"blas": blas.status()["loaded"] or "reference", "prompt_tokens": s.prompt_tokens,
                  "prefill_tps": s.prompt_tokens / s.time_prefill_s, "decode_tps": s.decode_tokens_per_s,
                  "tokens": s.total_tokens}))
"""


def child(setting: str, spec: str, tokens: int) -> dict:
    env = {**os.environ, "COLLAB_BLAS": setting}
    child = spawn_python(["-c", CHILD, spec, str(tokens)], name="blas measurement", env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.proc.communicate()
    finally:
        child.stop()
    if child.proc.returncode:
        raise subprocess.CalledProcessError(child.proc.returncode, "blas measurement", out, err)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local-model", default="")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    rows = {"reference": [], "openblas": []}
    for i in range(args.rounds):
        order = ["off", "auto"] if i % 2 == 0 else ["auto", "off"]
        for setting in order:
            r = child(setting, args.local_model, args.tokens)
            rows["reference" if setting == "off" else "openblas"].append(r)
    if any(r["blas"] == "reference" for r in rows["openblas"]):
        print(json.dumps(rows, indent=2))
        sys.exit("no OpenBLAS was loaded: run `collab blas fetch` first")
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("prefill_tps", "decode_tps")} for k, v in rows.items()}
    pre = med["openblas"]["prefill_tps"] / med["reference"]["prefill_tps"]
    dec = med["openblas"]["decode_tps"] / med["reference"]["decode_tps"]
    print(json.dumps({"benchmark": "blas", "runs": rows, "median": med}, indent=2))
    print(f"openblas_prefill_speedup={pre:.2f}")
    print(f"openblas_decode_speedup={dec:.2f}")


if __name__ == "__main__":
    run_main(main)
