"""Routing latency against a loopback OpenAI-compatible server with injected latency.

    python benchmarks/routing_latency.py [--latency-ms 150] [--jitter-ms 0] [--every 10] [--tokens 96] [--rounds 3]
                                         [--agree 0.6] [--ranks R2,R3,..] [--max-draft N] [--branches K]
                                         [--baseline-max-draft N] [--baseline-no-pace]
                                         [--local-model SPEC] [--cloud-model M --api-base URL --cloud-vocab V]

A fake cloud (``FakeCloud``: real HTTP on 127.0.0.1 in its own process, reached through LiteLLM as any provider)
answers every span after ``--latency-ms`` (spread uniformly by ``--jitter-ms``, per request). At each routed position it sends the local model's own pick at
``--agree`` of the positions (the rank 2, 3, ... candidates at the ``--ranks`` shares, something else otherwise) --
as a stronger model agrees with a weaker one where the weak one was merely unsure. A dry run decides those replies
(``LocalReply`` runs the local model); the timed cloud only looks them up, so no cloud work takes this machine's
cores from the local model. A fixed schedule routes every ``--every``-th position, so sync and async runs route the
same positions and send the same requests. Local only, sync and async pipelines (and, side by side, the async
pipeline with ``--branches K``, ``--baseline-max-draft N`` or without pacing, ``--baseline-no-pace``), interleaved per answer in rotating order, one
process. With ``--cloud-model`` the spans go to that cloud instead (the stand-in pair: ``--local-model
qwen2.5-coder-0.5b --cloud-model text-completion-openai/default_model --api-base http://127.0.0.1:8090/v1
--cloud-vocab standin``). Reports:

* ``span_over_rtt``: mean wall time per routed span (decision -> the span's text ready), sync pipeline,
  divided by one round trip of the same cloud call made directly (target <= 1.3);
* ``hidden_share``: 1 - (cloud wait with the async pipeline / cloud wait with the sync pipeline);
* ``async_speedup``: sync wall time / async wall time;
* ``off_clock_share``: (sync - async) / (sync - local only), wall time per answer token: the share of what
  the cloud costs the answer that the async pipeline takes off the clock (target >= 0.5 at the default
  agreement);
* ``kept_share``: the async spans whose draft was kept (the cloud's token was the one drafted from: the routed
  token's, or with ``--branches K`` one of the K best candidates');
* ``off_clock_share_by_passes``: the same share with each pipeline's wall time counted as its forward passes
  (``local_passes``) at the local-only pipeline's time per pass, plus its cloud wait: the accounting without the
  machine's pass-to-pass noise (it leaves out any other cost, such as a multi-token feed pass costing more);
* ``draft_holds``: draft passes the async pipeline held back for a reply about to land (``engine/pacing.py``);
* ``cloud_token_rank_sync``: where the cloud's first token stood among the local candidates at routed positions.
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
from collab_core.devtools.fakecloud import FakeCloud, LocalReply, Recorder
from collab_core.router import ScheduledRouter

PROBE = SpanRequest(messages=[], prompt_text="Once upon a time", partial=" there was")  # one direct call, timed
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how rain forms, step by step.",
           "Describe a busy market in the morning."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--latency-ms", type=float, default=150)
    ap.add_argument("--jitter-ms", type=float, default=0, help="each request's latency uniform in latency +- jitter")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agree", type=float, default=0.6)
    ap.add_argument("--ranks", default="", help="the cloud's shares of rank 2, 3, ... local candidates")
    ap.add_argument("--max-draft", type=int, default=None, help="default: the engine's")
    ap.add_argument("--branches", type=int, default=1,
                    help="also run the async pipeline drafting this many local candidates at once, side by side")
    ap.add_argument("--baseline-max-draft", type=int, default=None,
                    help="also run the async pipeline with this max_draft, side by side (8: the old default)")
    ap.add_argument("--baseline-no-pace", action="store_true",
                    help="also run the async pipeline without pacing (pace=False), side by side")
    ap.add_argument("--cloud-model", default=None, help="a real cloud instead of the fake (e.g. the stand-in)")
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--cloud-vocab", default=None, help="as --cloud-vocab of the CLI (standin: token-exact)")
    args = ap.parse_args()
    lm = load_local_model(args.local_model)
    positions = range(args.every // 2, args.tokens, args.every)
    if args.cloud_model:
        run(args, lm, positions, None, out := {})
        return report(out)
    # A dry run records what the fake cloud answers each routed position (it runs the local model to decide), so
    # the timed cloud only looks its replies up: a real cloud's work does not take this machine's cores from the
    # local model's drafting. Sync and async send the same requests (the same answers, the same positions).
    ranks = tuple(float(x) for x in args.ranks.split(",") if x)
    recorder = Recorder(LocalReply(lm, agree=args.agree, ranks=ranks))
    with FakeCloud(reply=recorder) as fc:
        CloudClient(fake_cloud(fc.url)).continue_span(PROBE)  # the round-trip probe is looked up too
        dry = routed(lm, fake_cloud(fc.url), positions, "sync")
        for prompt in PROMPTS:
            dry.generate(prompt, max_tokens=args.tokens)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(recorder.table, f)
    # the cloud runs in its own process, as a remote provider would (and stops with this one)
    server = spawn_python(["-m", "collab_core.devtools.fakecloud", "--latency-ms", str(args.latency_ms),
                           "--jitter-ms", str(args.jitter_ms),
                           "--replies", f.name, "--local-model", args.local_model or "", "--agree", str(args.agree),
                           "--ranks", args.ranks], name="fake cloud", stdout=subprocess.PIPE, text=True)
    try:
        url = server.proc.stdout.readline().strip()
        run(args, lm, positions, url, out := {})
    finally:
        server.stop()
        os.unlink(f.name)
    out["replies_recorded"] = len(recorder.table)
    report(out)


def report(out: dict) -> None:
    print(json.dumps(out, indent=2))
    for k in ("span_over_rtt", "hidden_share", "async_speedup"):
        print(f"{k}={out[k]}")
    print(" ".join(f"{k}={v}" for k, v in out.items() if k.startswith(("kept_share", "off_clock_share"))))


def fake_cloud(url: str) -> CloudConfig:
    return CloudConfig(model="text-completion-openai/fake", api_base=url, span_tokens=2)


def routed(lm, cfg: CloudConfig, positions, pipeline: str, **kw) -> Engine:
    """An engine routing the scheduled ``positions`` to ``cfg`` (no span cache: every position is a call)."""
    return Engine(lm, cloud=cfg, router=ScheduledRouter(positions), pipeline=pipeline, cache=False, **kw)


def run(args, lm, positions, url: str | None, out: dict) -> None:
    if url is None:
        vocab = args.cloud_vocab
        if vocab == "standin":
            from collab_core.devtools.standin import StandinCloud

            vocab = StandinCloud(progress=False).vocab
        cfg = CloudConfig(model=args.cloud_model, api_base=args.api_base, span_tokens=2, vocab=vocab, timeout_s=120)
    else:
        cfg = fake_cloud(url)
    client = CloudClient(cfg)
    rtts = []
    for _ in range(8):
        t = time.perf_counter()
        client.continue_span(PROBE)
        rtts.append(time.perf_counter() - t)
    rtt = statistics.median(rtts[2:])
    engines = {"local": Engine(lm)}
    md = {} if args.max_draft is None else {"max_draft": args.max_draft}
    engines["sync"] = routed(lm, cfg, positions, "sync")
    engines["async"] = routed(lm, cfg, positions, "async", **md)
    if args.branches > 1:  # side by side with one branch
        engines[f"async_b{args.branches}"] = routed(lm, cfg, positions, "async", branches=args.branches, **md)
    if args.baseline_max_draft:  # side by side with a shorter draft (the engine's old default: 8)
        engines[f"async_md{args.baseline_max_draft}"] = routed(lm, cfg, positions, "async",
                                                               max_draft=args.baseline_max_draft)
    if args.baseline_no_pace:
        engines["async_nopace"] = routed(lm, cfg, positions, "async", pace=False, **md)
    names = list(engines)
    for e in engines.values():  # warm-up
        e.generate(PROMPTS[0], max_tokens=16)
    runs: dict[str, list] = {p: [] for p in names}
    for r in range(args.rounds):  # interleaved per answer, the order rotating: a drifting load hits all alike
        for i, prompt in enumerate(PROMPTS):
            k = (r * len(PROMPTS) + i) % len(names)
            for p in names[k:] + names[:k]:
                runs[p].append(engines[p].generate(prompt, max_tokens=args.tokens).stats)

    def total(p, attr):
        return sum(getattr(s, attr) for s in runs[p])

    per_token = {p: total(p, "time_total_s") / total(p, "total_tokens") for p in names}
    drafted = [p for p in names if p.startswith("async")]
    t_pass = total("local", "time_total_s") / total("local", "local_passes")  # a pass and its token's handling
    span_wall = total("sync", "time_spans_s") / total("sync", "cloud_calls")
    out.update({
        "benchmark": "routing_latency",
        "model": lm.name,
        "cloud": args.cloud_model or f"fake ({args.latency_ms:g} ms)",
        "latency_ms": None if args.cloud_model else args.latency_ms,
        "jitter_ms": None if args.cloud_model else args.jitter_ms,
        "agree": None if args.cloud_model else args.agree,
        "ranks": None if args.cloud_model else args.ranks,
        "max_draft": engines["async"].max_draft,
        "round_trip_s": round(rtt, 4),
        "routed_every": args.every,
        "tokens_per_answer": args.tokens,
        "answers_per_pipeline": len(runs["sync"]),
        "tokens": {p: total(p, "total_tokens") for p in names},
        "calls": {p: total(p, "cloud_calls") for p in names},
        "cloud_wait_s": {p: round(total(p, "time_cloud_wait_s"), 3) for p in names},
        "cloud_hidden_s": {p: round(total(p, "time_cloud_hidden_s"), 3) for p in names},
        "wall_s": {p: round(total(p, "time_total_s"), 3) for p in names},
        "wall_ms_per_token": {p: round(1000 * v, 3) for p, v in per_token.items()},
        "rollbacks": {p: total(p, "rollbacks") for p in names},
        "local_passes": {p: total(p, "local_passes") for p in names},
        "draft_holds": {p: total(p, "draft_holds") for p in drafted},
        "cloud_token_rank_sync": _ranks([x for s in runs["sync"] for x in s.cloud_token_ranks]),
        "span_wall_s_sync": round(span_wall, 4),
        "span_over_rtt": round(span_wall / rtt, 4),
        "hidden_share": round(1 - total("async", "time_cloud_wait_s") / total("sync", "time_cloud_wait_s"), 4),
        "async_speedup": round(total("sync", "time_total_s") / total("async", "time_total_s"), 4),
    })
    for p in drafted:
        suffix = p[len("async"):]
        out["kept_share" + suffix] = round(total(p, "drafts_kept") / max(1, total(p, "cloud_calls")), 4)
        out["branches_adopted" + suffix] = total(p, "branches_adopted")
        out["off_clock_share" + suffix] = round(
            (per_token["sync"] - per_token[p]) / (per_token["sync"] - per_token["local"]), 4)
        by_passes = {q: total(q, "local_passes") * t_pass + total(q, "time_cloud_wait_s") for q in ("sync", p)}
        out["off_clock_share_by_passes" + suffix] = round(
            (by_passes["sync"] - by_passes[p]) / (by_passes["sync"] - total("local", "time_total_s")), 4)


def _ranks(ranks: list) -> dict:
    """Where the cloud's first token stood among the local top-k at routed positions: shares of rank 1, 2, 3,
    outside the top-k (-1) and re-spelled spans (None)."""
    n = max(1, len(ranks))
    keys = sorted({r for r in ranks if r is not None and r >= 0}) + [-1, None]
    return {("top" + str(k + 1) if k is not None and k >= 0 else str(k)): round(ranks.count(k) / n, 4)
            for k in keys if k in ranks} | {"n": len(ranks)}


if __name__ == "__main__":
    run_main(main)
