"""The ``collab`` command line.

    collab run "PROMPT" [--local-model SPEC] [--max-tokens N] [--json] [--html OUT.html]
               [--cloud-model MODEL [--api-base URL] [--api-key KEY] [--threshold T | --budget B]]
               [--deployments router.yaml] [--max-spend-usd USD] [--max-cloud-cost-usd USD] [--redact default]
               [--max-batch N] [--max-draft N] [--branches N] [--no-pace] ...   (every EngineSettings field)
    collab serve [ENGINE FLAGS] [--host 127.0.0.1] [--port 8000]   OpenAI-compatible API + the page at /
    collab prepare [--local-model SPEC]      fetch/convert the local model ahead of time
    collab demo [--serve [--port P]]         Qwen 0.5B routed to the stand-in cloud, beside local only
    collab standin [--port 8080] [--model-folder DIR]   serve the stand-in cloud model until interrupted
    collab bench csqa|overhead|routing_latency|blas|learned_cost [ARGS]   the benchmarks in benchmarks/
    collab blas fetch|status                 OpenBLAS for MLX on a Linux CPU
    collab router collect --data hf:train|FILE [--limit N] [--traces DIR]    traces for the learned router
    collab router train [--traces DIR] [--out DIR] [--label outcome|disagree]

Modules: ``flags`` (the flags the settings give), ``commands`` (what the commands do), ``train`` (``collab
router``). Exit codes: 0 done, 2 an error (``CollabError``), 130 on SIGINT (Ctrl-C) and 143 on SIGTERM -- after
stopping every process the command started (see ``collab_core.children``).
"""

from __future__ import annotations

import argparse
import sys

from ..children import handle_signals
from ..errors import CollabError
from .commands import cmd_bench, cmd_blas, cmd_demo, cmd_prepare, cmd_run, cmd_serve, cmd_standin
from .flags import (
    add_engine_args,
    add_generation_args,
    add_max_tokens,
    engine_from_args,
    engine_settings,
    generation_config,
)
from .train import add_router_parser, cmd_router

__all__ = ["build_parser", "engine_from_args", "engine_settings", "generation_config", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collab", description="Token-level collaborative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate an answer")
    run.add_argument("prompt")
    add_generation_args(run)
    run.add_argument("--json", action="store_true", help="print one JSON object (text, tokens, stats)")
    run.add_argument("--html", metavar="FILE", default=None,
                     help="also write the answer's token view (cloud tokens highlighted) as one self-contained page")

    sv = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/completions, "
                                      "/v1/models) and a page at / that shows the routing")
    add_engine_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free one)")
    add_max_tokens(sv)
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: %(default)s)")

    prep = sub.add_parser("prepare", help="fetch and convert the local model once")
    prep.add_argument("--local-model", default=None)

    d = sub.add_parser("demo", help="a few answers routed to the stand-in cloud on loopback, beside local only")
    d.add_argument("--local-model", default="qwen2.5-coder-0.5b", help="the local model (default: %(default)s)")
    d.add_argument("--budget", type=float, default=0.02, help="routed share of tokens (default: %(default)s, the "
                   "shipped learned router's default)")
    d.add_argument("--max-tokens", type=int, default=96)
    d.add_argument("--serve", action="store_true",
                   help="then serve the page (routed beside local only) until Ctrl-C, and print its address")
    d.add_argument("--port", type=int, default=8000, help="the page's port with --serve (default: %(default)s)")

    s = sub.add_parser("standin", help="serve the stand-in cloud model on 127.0.0.1 until interrupted")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--model-folder", default=None,
                   help="serve this mlx-lm model folder instead of the default stand-in model")

    bench = sub.add_parser("bench", help="run a benchmark from benchmarks/ (in a source checkout)",
                           add_help=False)
    bench.add_argument("name", choices=["csqa", "overhead", "routing_latency", "blas", "learned_cost"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("blas", help="OpenBLAS for MLX on a Linux CPU")
    b.add_argument("action", choices=["fetch", "status"])

    add_router_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "serve": cmd_serve, "prepare": cmd_prepare, "blas": cmd_blas, "demo": cmd_demo,
                "standin": cmd_standin, "bench": cmd_bench, "router": cmd_router}
    with handle_signals():  # SIGTERM unwinds like Ctrl-C: `with` blocks stop what they started
        try:
            return commands[args.command](args)
        except CollabError as exc:
            print(f"collab: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # Ctrl-C, or Interrupted (SIGINT, SIGTERM) from handle_signals
            return getattr(exc, "exit_code", 130)

