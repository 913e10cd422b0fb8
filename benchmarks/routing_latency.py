"""Routing latency against a loopback OpenAI-compatible server with injected latency.

    python benchmarks/routing_latency.py [--latency-ms 150] [--every 10] [--tokens 96] [--rounds 3]

A fake cloud (collab_core.devtools.fakecloud.FakeCloud: real HTTP on 127.0.0.1, through LiteLLM as any provider)
answers every span after ``--latency-ms``. It agrees with the local model's own greedy continuation at
about ``--agree`` of the routed positions (as a stronger model agrees with a weaker one where the weak
one was merely unsure) and says something else otherwise. The local model is the bundled SmolLM2; a
fixed schedule routes every ``--every``-th token, so sync and async runs route the same positions.
Interleaved rounds, one process. Reports:

* ``span_over_rtt``: mean wall time per routed span (decision -> the span's text ready to stream), sync
  pipeline, divided by one round trip of the same cloud call made directly (target <= 1.3);
* ``hidden_share``: 1 - (cloud wait with the async pipeline / cloud wait with the sync pipeline) on the
  same positions (target >= 0.5);
* ``async_speedup``: sync wall time / async wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core import Engine, load_local_model
from collab_core.children import run_main, spawn_python
from collab_core.cloud.client import CloudClient, CloudConfig, SpanRequest
from collab_core.prompts import render_prompt
from collab_core.router import ScheduledRouter

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how rain forms, step by step.",
           "Describe a busy market in the morning."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--latency-ms", type=float, default=150)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agree", type=float, default=0.6)
    args = ap.parse_args()
    lm = load_local_model(args.local_model)
    positions = range(args.every // 2, args.tokens, args.every)
    local = Engine(lm)
    references = {render_prompt(lm, p)[0]: local.generate(p, max_tokens=args.tokens + 8).text for p in PROMPTS}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(references, f)
    # the cloud runs in its own process, as a remote provider would (and stops with this one)
    server = spawn_python(["-m", "collab_core.devtools.fakecloud", "--latency-ms", str(args.latency_ms),
                           "--references", f.name, "--agree", str(args.agree)], name="fake cloud",
                          stdout=subprocess.PIPE, text=True)
    try:
        url = server.proc.stdout.readline().strip()
        run(args, lm, positions, url, out := {})
    finally:
        server.stop()
        os.unlink(f.name)
    print(json.dumps(out, indent=2))
    print(f"span_over_rtt={out['span_over_rtt']}")
    print(f"hidden_share={out['hidden_share']}")
    print(f"async_speedup={out['async_speedup']}")


def run(args, lm, positions, url: str, out: dict) -> None:
    cfg = CloudConfig(model="text-completion-openai/fake", api_base=url, span_tokens=2)
    client = CloudClient(cfg)
    req = SpanRequest(messages=[], prompt_text="Once upon a time", partial=" there was")
    rtts = []
    for _ in range(8):
        t = time.perf_counter()
        client.continue_span(req)
        rtts.append(time.perf_counter() - t)
    rtt = statistics.median(rtts[2:])
    engines = {p: Engine(lm, cloud=cfg, router=ScheduledRouter(positions), pipeline=p, cache=False)
               for p in ("sync", "async")}
    engines["sync"].generate(PROMPTS[0], max_tokens=8)  # warm-up
    runs = {"sync": [], "async": []}
    for r in range(args.rounds):
        for p in (("sync", "async") if r % 2 == 0 else ("async", "sync")):
            for prompt in PROMPTS:
                s = engines[p].generate(prompt, max_tokens=args.tokens).stats
                runs[p].append(s)

    def total(p, attr):
        return sum(getattr(s, attr) for s in runs[p])

    span_wall = total("sync", "time_spans_s") / total("sync", "cloud_calls")
    hidden = 1 - total("async", "time_cloud_wait_s") / total("sync", "time_cloud_wait_s")
    speedup = total("sync", "time_total_s") / total("async", "time_total_s")
    out.update({
        "benchmark": "routing_latency",
        "model": lm.name,
        "latency_ms": args.latency_ms,
        "round_trip_s": round(rtt, 4),
        "routed_every": args.every,
        "tokens_per_answer": args.tokens,
        "answers_per_mode": len(runs["sync"]),
        "calls": {p: total(p, "cloud_calls") for p in runs},
        "cloud_wait_s": {p: round(total(p, "time_cloud_wait_s"), 3) for p in runs},
        "cloud_hidden_s": {p: round(total(p, "time_cloud_hidden_s"), 3) for p in runs},
        "wall_s": {p: round(total(p, "time_total_s"), 3) for p in runs},
        "rollbacks": {p: total(p, "rollbacks") for p in runs},
        "span_wall_s_sync": round(span_wall, 4),
        "span_over_rtt": round(span_wall / rtt, 4),
        "hidden_share": round(hidden, 4),
        "async_speedup": round(speedup, 4),
        "agree": args.agree,
    })


if __name__ == "__main__":
    run_main(main)
