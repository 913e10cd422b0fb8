"""``collab router collect|train``: traces for the learned router, and training it (the offline packages)."""

from __future__ import annotations

import argparse


def add_router_parser(sub) -> None:
    r = sub.add_parser("router", help="collect traces for the learned router and train it")
    r.add_argument("action", choices=["collect", "train"])
    r.add_argument("--local-model", default=None)
    r.add_argument("--traces", default=None, help="trace folder (default: in the cache, per local model)")
    r.add_argument("--data", default=None,
                   help="collect: training prompts, hf:train (CommonsenseQA's training split from the Hugging Face "
                        "hub) or a JSONL file of CommonsenseQA questions or {id, prompt} rows. Never the "
                        "evaluation questions.")
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
    r.add_argument("--epochs", type=int, default=None, help="training epochs (default: 60; 20 with --values)")
    r.add_argument("--hidden", type=int, default=64)
    v = r.add_argument_group("value labels (--values): what a cloud token is worth, by rollout")
    v.add_argument("--values", action="store_true",
                   help="collect: value labels (needs --teacher, default 'standin'); train: a router on them, its "
                        "loss chosen by cross-validation")
    v.add_argument("--check", default=None,
                   help="answer check for {id, prompt, answer} rows: contains (default), regex:PATTERN (the last "
                        "match against the gold answer) or module:function (f(answer, row) -> bool)")
    v.add_argument("--near", type=int, default=12, help="roll out every disagreement in the answer's last N tokens")
    v.add_argument("--sample", type=int, default=3, help="... and N more drawn at random from the rest")
    v.add_argument("--max-batch", type=int, default=8, help="rollouts (and answers) decoded as one batch")
    v.add_argument("--span", type=int, default=None,
                   help="cloud tokens written at a routed position before the local model goes on (the engine's "
                        "--span-tokens). collect: label every span length up to N (default 2: a token, and a second "
                        "one chained after it); train: learn the value of N-token spans (default 1, the engine's: "
                        "with traces collected at 2 or more, the router also learns where to chain a second)")
    v.add_argument("--losses", default="weighted,regression,ranking", help="train: losses to cross-validate")
    v.add_argument("--ensemble", type=int, default=5,
                   help="train: networks trained from different seeds whose mean score is the router's (default 5)")


def cmd_router(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..local.loading import load_local_model
    from ..local.weights import cache_dir
    from ..training.csqa_data import data_path

    data = data_path(args.data, what="training prompts") if args.action == "collect" else None  # before loading
    lm = load_local_model(args.local_model)
    traces = Path(args.traces) if args.traces else cache_dir() / "router-traces" / lm.fingerprint[7:23]
    if args.values:
        return _values(args, lm, data, traces.with_name(traces.name + "-values") if not args.traces else traces)
    if args.action == "train":
        from ..training.train import train_router

        out = Path(args.out) if args.out else traces.parent / f"router-{traces.name}"
        report = train_router(lm, traces, out, label=args.label, epochs=args.epochs or 60, hidden=args.hidden)
        print(report.table())
        print(f"router written to {out} (use router=\"learned:{out}\")")
        return 0
    from contextlib import ExitStack

    from ..cloud.client import CloudClient, CloudConfig
    from ..training.csqa import get_format
    from ..training.tasks import load_tasks
    from ..training.traces import TraceCollector

    fmt = get_format(args.format)
    max_tokens = fmt.max_tokens if args.max_tokens is None else args.max_tokens
    tasks = load_tasks(lm, data, limit=args.limit, fmt=fmt.name, need_answer=False)
    if args.teacher:
        from ..training.traces import TeacherForcedCollector

        if args.teacher == "standin":
            from ..devtools.standin import prepare_standin

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
            from ..devtools.standin import StandinCloud

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


def _values(args: argparse.Namespace, lm, data, traces) -> int:
    """``--values``: collect value-labelled traces (``training.values``) or train a router on them."""
    from pathlib import Path

    from ..local.loading import load_local_model
    from ..training.csqa import get_format, piece_places

    fmt = get_format(args.format)
    if args.action == "train":
        from ..training.value_router import train_value_router

        out = Path(args.out) if args.out else traces.parent / f"router-{traces.name}"
        report = train_value_router(lm, traces, out, losses=tuple(args.losses.split(",")), hidden=args.hidden,
                                    epochs=args.epochs or 20, places=piece_places if fmt.name == "explain" else None,
                                    span=args.span or 1, ensemble=args.ensemble)
        print(report.table())
        print(f"router written to {out} (use router=\"learned:{out}\")")
        return 0
    from ..training.tasks import load_tasks
    from ..training.values import ValueCollector

    if args.teacher in (None, "standin"):
        from ..devtools.standin import prepare_standin

        teacher = load_local_model(str(prepare_standin()))
    else:
        teacher = load_local_model(args.teacher)
    tasks = load_tasks(lm, data, limit=args.limit, fmt=fmt.name, check=args.check)
    csqa_rows = args.check is None and '"choices"' in Path(data).read_text().split("\n", 1)[0]
    stop = fmt.stop if csqa_rows else ""  # a user's task: no stop of CommonsenseQA's formats
    max_tokens = args.max_tokens or (fmt.max_tokens if csqa_rows else 256)
    col = ValueCollector(lm, teacher, traces, max_tokens=max_tokens, stop=stop, near=args.near,
                         sample=args.sample, max_batch=args.max_batch, chunk=2 * args.max_batch, span=args.span or 2)
    written = col.run(tasks)
    print(f"{written} new value traces ({col.rollouts} rollouts, {col.teacher_passes} teacher passes) in {traces}")
    return 0
