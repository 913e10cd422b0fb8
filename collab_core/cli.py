"""The ``collab`` command line.

    collab run "PROMPT" [--local-model SPEC] [--max-tokens N] [--json] [--html OUT.html]
               [--cloud-model MODEL [--api-base URL] [--api-key KEY] [--threshold T | --budget B]]
               [--cloud-config router.yaml] [--max-spend-usd USD] [--max-cloud-cost-usd USD] [--redact default]
    collab serve [ENGINE FLAGS] [--host 127.0.0.1] [--port 8000]   OpenAI-compatible API + the page at /
    collab prepare [--local-model SPEC]      fetch/convert the local model ahead of time
    collab demo [--serve [--port P]]         Qwen 0.5B routed to the stand-in cloud, beside local only
    collab standin [--port 8080] [--model-folder DIR]   serve the stand-in cloud model until interrupted
    collab bench csqa|overhead|routing_latency|blas|learned_cost [ARGS]   the benchmarks in benchmarks/
    collab blas fetch|status                 OpenBLAS for MLX on a Linux CPU
    collab router collect [--data FILE] [--limit N] [--traces DIR]    traces for the learned router
    collab router train [--traces DIR] [--out DIR] [--label outcome|disagree]

Exit codes: 0 done, 2 an error (``CollabError``), 130 on SIGINT (Ctrl-C) and 143 on SIGTERM -- after
stopping every process the command started (see ``collab_core.children``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .children import handle_signals
from .errors import CollabError, ConfigError
from .local import blas
from .settings import EngineSettings, GenerationConfig

_TYPES = {"float": float, "int": int}


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """One flag per ``EngineSettings`` field (``--local-model``, ``--cloud-model``, ``--budget``, ...)."""
    c = p.add_argument_group("local model and cloud routing")
    for f in dataclasses.fields(EngineSettings):
        kind = _TYPES.get(str(f.type).split(" ")[0], str)
        opts = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        c.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"], **opts)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """The engine's flags and one per ``GenerationConfig`` option (``--raw`` is ``chat=False``)."""
    _add_engine_args(p)
    g = p.add_argument_group("generation")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    g.add_argument("--system", default=None, help="system message")
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--local-only", action="store_true", help="never call the cloud")
    g.add_argument("--max-cloud-calls", type=int, default=None, help="cloud calls per request, at most")
    g.add_argument("--deadline", type=float, default=None,
                   help="seconds per request after which the cloud is not waited for")
    g.add_argument("--max-cloud-cost-usd", type=float, default=None,
                   help="per request: stop routing once the cloud cost this many USD (the answer finishes locally)")
    g.add_argument("--tools", type=_json_arg, default=None,
                   help="tools the model may call: a JSON list of function specs, or @FILE")
    g.add_argument("--tool-choice", default=None, help="auto | none | required | a tool's name")
    g.add_argument("--json-schema", type=_json_arg, default=None,
                   help="the answer is JSON following this schema (JSON, or @FILE; {} for any object)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="collab", description="Token-level collaborative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate an answer")
    run.add_argument("prompt")
    _add_generation_args(run)
    run.add_argument("--json", action="store_true", help="print one JSON object (text, tokens, stats)")
    run.add_argument("--html", metavar="FILE", default=None,
                     help="also write the answer's token view (cloud tokens highlighted) as one self-contained page")

    sv = sub.add_parser("serve", help="an OpenAI-compatible server (/v1/chat/completions, /v1/completions, "
                                      "/v1/models) and a page at / that shows the routing")
    _add_engine_args(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free one)")
    sv.add_argument("--max-tokens", type=int, default=256, help="per request unless it says (default: %(default)s)")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: %(default)s)")

    prep = sub.add_parser("prepare", help="fetch and convert the local model once")
    prep.add_argument("--local-model", default=None)

    d = sub.add_parser("demo", help="a few answers routed to the stand-in cloud on loopback, beside local only")
    d.add_argument("--local-model", default="qwen2.5-coder-0.5b", help="the local model (default: %(default)s)")
    d.add_argument("--budget", type=float, default=0.07, help="routed share of tokens (default: %(default)s)")
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

    r = sub.add_parser("router", help="collect traces for the learned router and train it")
    r.add_argument("action", choices=["collect", "train"])
    r.add_argument("--local-model", default=None)
    r.add_argument("--traces", default=None, help="trace folder (default: in the cache, per local model)")
    r.add_argument("--data", default=None,
                   help="JSONL of CommonsenseQA training questions or {id, prompt} rows (default: the shared "
                        "commonsenseqa_train_2049.jsonl when found). Never the evaluation questions.")
    r.add_argument("--limit", type=int, default=400, help="prompts to collect (collect)")
    r.add_argument("--max-tokens", type=int, default=None,
                   help="answer tokens per prompt (collect; default: the format's, 6 or 100)")
    r.add_argument("--format", default="letter", choices=["letter", "explain"],
                   help="CommonsenseQA answer format of the prompts (collect; see benchmarks/csqa.py)")
    r.add_argument("--teacher", default=None,
                   help="token-exact labels from the cloud model's own weights: 'standin' or a model spec that "
                        "shares the local model's tokenizer (one forward pass per answer, no API calls)")
    r.add_argument("--continuations", type=int, default=3,
                   help="with --teacher: outcome labels at up to N disagreements per wrong answer")
    r.add_argument("--cloud-model", default=None, help="LiteLLM model string (default: the stand-in on loopback)")
    r.add_argument("--api-base", default=None)
    r.add_argument("--out", default=None, help="router folder to write (train; default: next to the traces)")
    r.add_argument("--label", choices=["outcome", "disagree"], default="outcome",
                   help="outcome: CITER's label (the cloud's token turns a wrong answer right); disagree: "
                        "the cloud would write another token")
    r.add_argument("--epochs", type=int, default=60)
    r.add_argument("--hidden", type=int, default=64)
    return parser


def _json_arg(value: str):
    import json
    from pathlib import Path

    return json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    return GenerationConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, stop=tuple(args.stop), chat=False if args.raw else None,
                            system=args.system, local_only=args.local_only, max_cloud_calls=args.max_cloud_calls,
                            deadline_s=args.deadline, max_cloud_cost_usd=args.max_cloud_cost_usd, tools=args.tools,
                            tool_choice=args.tool_choice, json_schema=args.json_schema)


def engine_from_args(args: argparse.Namespace):
    from .engine import Engine

    return Engine.from_settings(EngineSettings.from_object(args), config=generation_config(args))


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from .engine import Generation

    engine = engine_from_args(args)
    if args.json:
        gen = engine.generate(args.prompt)
        print(json.dumps(gen.as_dict(), ensure_ascii=False))
        _write_html(args, gen)
        return 0
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    seen: list = []
    final = _show(out, _kept(engine.stream(args.prompt), seen))
    err.print(Text(f"[{engine.model_name}] {final.stats.summary_line()}", style="dim"))
    for line in final.stats.cloud_errors[:3]:
        err.print(Text(f"  cloud: {line}", style="yellow"))
    _write_html(args, Generation.from_events(seen, engine.model_name))
    return 0


def _kept(events, into: list):
    """``events``, each also appended to ``into`` (for ``--html`` after the answer was shown)."""
    for ev in events:
        into.append(ev)
        yield ev


def _write_html(args: argparse.Namespace, gen) -> None:
    if args.html:
        from .server.tokenview import write_html

        path = write_html(args.html, gen.as_dict(), prompt=args.prompt)
        print(f"token view written to {path}", file=sys.stderr)


def _show(out, events):
    """Print a stream, the cloud's tokens in magenta; returns its ``FinalEvent``."""
    from rich.text import Text

    from .engine import FinalEvent

    for ev in events:
        if isinstance(ev, FinalEvent):
            out.print(Text(ev.text))
            return ev
        out.print(Text(ev.text, style="bold magenta" if ev.source == "cloud" else ""), end="")
    raise AssertionError("a stream ends with its FinalEvent")  # pragma: no cover


def cmd_demo(args: argparse.Namespace) -> int:
    """The best pair we ship, routed, beside the local model alone (see ``devtools/demo.py``)."""
    from rich.console import Console

    from .devtools.demo import run_demo

    run_demo(Console(highlight=False), local_model=args.local_model, budget=args.budget, max_tokens=args.max_tokens,
             serve_port=args.port if args.serve else None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serves until SIGINT/SIGTERM; prints the page's address once the port listens."""
    try:
        from .server.app import Limits, create_app
        from .server.serving import page_banner, serve
    except ImportError as exc:
        raise ConfigError(f"collab serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'collab-decoding[serve]'") from exc
    from .engine import Engine

    engine = Engine.from_settings(EngineSettings.from_object(args), config=GenerationConfig(max_tokens=args.max_tokens))
    app = create_app(engine, limits=Limits(max_body_bytes=args.max_body_bytes))
    serve(app, host=args.host, port=args.port, on_ready=lambda url: print(page_banner(url), flush=True))
    return 0


def cmd_standin(args: argparse.Namespace) -> int:
    """Serves until SIGINT/SIGTERM (which stop the server: see ``main``) or until the server dies."""
    from .devtools.standin import StandinCloud
    from .errors import ProcessError

    with StandinCloud(folder=args.model_folder, port=args.port) as cloud:
        print(f"stand-in cloud log: {cloud.log_path}", flush=True)
        print(f"stand-in cloud ready: --cloud-model {cloud.model} --api-base {cloud.api_base}", flush=True)
        code = cloud.wait()
    raise ProcessError(f"the stand-in cloud server exited by itself with code {code} (see {cloud.log_path})")


def cmd_bench(args: argparse.Namespace) -> int:
    """``collab bench csqa --limit 50`` runs ``benchmarks/csqa.py --limit 50`` (benchmarks ship with the source)."""
    import runpy
    from pathlib import Path

    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        script = root / "benchmarks" / f"{args.name}.py"
        if script.exists():
            sys.argv = [str(script), *args.rest]
            runpy.run_path(str(script), run_name="__main__")
            return 0
    print("collab: benchmarks/ not found: run this from a source checkout of collab-decoding", file=sys.stderr)
    return 2


def cmd_prepare(args: argparse.Namespace) -> int:
    from .local.loading import load_local_model

    lm = load_local_model(args.local_model)
    print(f"{lm.name}: ready ({lm.form}) at {lm.path or lm.spec}")
    return 0


def cmd_blas(args: argparse.Namespace) -> int:
    if args.action == "fetch":
        try:
            print(blas.fetch())
        except (RuntimeError, OSError) as exc:
            print(f"collab: could not fetch OpenBLAS ({exc}); MLX will use its reference BLAS", file=sys.stderr)
            return 1
        return 0
    st = blas.status()
    print(f"OpenBLAS: {st['loaded']}" if st["loaded"] else f"reference BLAS ({st['why']})")
    return 0


def _train_data(given: str | None):
    from pathlib import Path

    if given:
        return Path(given)
    name = Path("shared") / "data" / "commonsenseqa_train_2049.jsonl"
    for root in (Path.cwd(), Path.cwd().parent, Path(__file__).resolve().parent.parent.parent):
        if (root / name).exists():
            return root / name
    raise CollabError("no training prompts found: pass --data FILE.jsonl (CommonsenseQA training layout or "
                      "{\"id\", \"prompt\"} rows)")


def cmd_router(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .local.loading import load_local_model
    from .local.weights import cache_dir

    lm = load_local_model(args.local_model)
    traces = Path(args.traces) if args.traces else cache_dir() / "router-traces" / lm.fingerprint[7:23]
    if args.action == "train":
        from .training.train import train_router

        out = Path(args.out) if args.out else traces.parent / f"router-{traces.name}"
        report = train_router(lm, traces, out, label=args.label, epochs=args.epochs, hidden=args.hidden)
        print(report.table())
        print(f"router written to {out} (use router=\"learned:{out}\")")
        return 0
    from contextlib import ExitStack

    from .cloud.client import CloudClient, CloudConfig
    from .training.csqa import get_format
    from .training.traces import TraceCollector, jsonl_tasks

    fmt = get_format(args.format)
    max_tokens = fmt.max_tokens if args.max_tokens is None else args.max_tokens
    tasks = jsonl_tasks(lm, _train_data(args.data), args.limit, fmt=fmt.name)
    if args.teacher:
        from .training.traces import TeacherForcedCollector

        if args.teacher == "standin":
            from .devtools.standin import prepare_standin

            teacher = load_local_model(str(prepare_standin()))
        else:
            teacher = load_local_model(args.teacher)
        col = TeacherForcedCollector(lm, teacher, traces, max_tokens=max_tokens, stop=fmt.stop,
                                     continuations=args.continuations)
        written = col.run(tasks)
        print(f"{written} new traces ({col.calls} teacher passes) in {traces}")
        return 0
    with ExitStack() as stack:
        on_error = None
        if not args.cloud_model:
            from .devtools.standin import StandinCloud

            cloud = stack.enter_context(StandinCloud())
            args.cloud_model, args.api_base = cloud.model, cloud.api_base

            def on_error(exc) -> bool:  # mlx_lm.server's generation thread can die (see standin.py): restart
                if cloud.healthy():
                    return False
                cloud.restart()
                return True
        # span of max_tokens: one call labels every position up to the first disagreement
        client = CloudClient(CloudConfig(model=args.cloud_model, api_base=args.api_base,
                                         span_tokens=max(2, max_tokens), timeout_s=60))
        client.validate()
        col = TraceCollector(lm, client, traces, max_tokens=max_tokens, stop=fmt.stop, on_cloud_error=on_error)
        written = col.run(tasks)
    print(f"{written} new traces ({col.calls} cloud calls) in {traces}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
