"""What ``collab run``, ``serve``, ``demo``, ``standin``, ``bench``, ``prepare`` and ``blas`` do, once their
flags are parsed (``collab_core.cli`` parses them)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import ConfigError
from ..local import blas
from .flags import engine_from_args


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    from ..engine import Generation

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
        from ..server.tokenview import write_html

        path = write_html(args.html, gen.as_dict(), prompt=args.prompt)
        print(f"token view written to {path}", file=sys.stderr)


def _show(out, events):
    """Print a stream, the cloud's tokens in magenta; returns its ``FinalEvent``."""
    from rich.text import Text

    from ..engine import FinalEvent

    for ev in events:
        if isinstance(ev, FinalEvent):
            out.print(Text(ev.text))
            return ev
        out.print(Text(ev.text, style="bold magenta" if ev.source == "cloud" else ""), end="")
    raise AssertionError("a stream ends with its FinalEvent")  # pragma: no cover


def cmd_demo(args: argparse.Namespace) -> int:
    """The best pair we ship, routed, beside the local model alone (see ``devtools/demo.py``)."""
    from rich.console import Console

    from ..devtools.demo import run_demo

    run_demo(Console(highlight=False), local_model=args.local_model, budget=args.budget, max_tokens=args.max_tokens,
             serve_port=args.port if args.serve else None)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serves until SIGINT/SIGTERM; prints the page's address once the port listens."""
    try:
        from ..server.app import Limits, create_app
        from ..server.serving import page_banner, serve
    except ImportError as exc:
        raise ConfigError(f"collab serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'collab-decoding[serve]'") from exc
    engine = engine_from_args(args)
    app = create_app(engine, limits=Limits(max_body_bytes=args.max_body_bytes))
    serve(app, host=args.host, port=args.port, on_ready=lambda url: print(page_banner(url), flush=True))
    return 0


def cmd_standin(args: argparse.Namespace) -> int:
    """Serves until SIGINT/SIGTERM (which stop the server: see ``main``) or until the server dies."""
    from ..devtools.standin import StandinCloud
    from ..errors import ProcessError

    with StandinCloud(folder=args.model_folder, port=args.port) as cloud:
        print(f"stand-in cloud log: {cloud.log_path}", flush=True)
        print(f"stand-in cloud ready: --cloud-model {cloud.model} --api-base {cloud.api_base}", flush=True)
        code = cloud.wait()
    raise ProcessError(f"the stand-in cloud server exited by itself with code {code} (see {cloud.log_path})")


def cmd_bench(args: argparse.Namespace) -> int:
    """``collab bench csqa --limit 50`` runs ``benchmarks/csqa.py --limit 50`` (benchmarks ship with the source)."""
    import runpy
    from pathlib import Path

    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        script = root / "benchmarks" / f"{args.name}.py"
        if script.exists():
            sys.argv = [str(script), *args.rest]
            runpy.run_path(str(script), run_name="__main__")
            return 0
    print("collab: benchmarks/ not found: run this from a source checkout of collab-decoding", file=sys.stderr)
    return 2


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..local.loading import load_local_model

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
