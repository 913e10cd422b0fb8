"""CommonsenseQA: accuracy against routed share, latency and cost.

    python benchmarks/csqa.py --data hf:validation|FILE.jsonl [--train-data hf:train|FILE.jsonl]
                              [--limit N] [--seed S] [--thresholds 0.3,0.5,0.7]
                              [--budgets 0.07] [--cloud-model M --api-base URL] [--out DIR]
                              [--format letter|explain] [--local-model SPEC] [--modes small,cloud,...]

Data (``collab_core.training.csqa_data``): ``--data`` is the evaluation questions, ``hf:validation`` (CommonsenseQA's
validation split from the Hugging Face hub, converted once into the cache) or a JSONL file in the same layout;
``--train-data`` the questions a budget router is calibrated on (default: ``hf:train`` when ``--data`` comes from
the hub), never the evaluation ones. Without them it says how to get the data.

Without ``--cloud-model`` it starts the stand-in cloud (mlx_lm.server + Qwen2.5-Coder-1.5B-Instruct on
127.0.0.1) when a mode needs a cloud, and stops it afterwards. Modes, all on the same questions, prompt and
answer extraction (``--modes`` names them explicitly, replacing the lists below):

* ``small``: the local model alone;  ``cloud``: the cloud model alone (same prompt, via LiteLLM);
* ``threshold:T``: routed, threshold router;  ``budget:B``: routed, budget router calibrated on
  training questions (never the evaluation ones);
* ``learned-budget:B`` / ``learned:T``: routed by the learned router (``--router PATH``, default the one
  shipped for the local model), budget-calibrated the same way / thresholded on its probability;
* ``seed:T`` (one question at a time): the seed system's transport at threshold T -- no local KV cache (the whole sequence is
  re-run for every token), the full detokenized prefix sent for each routed token, first returned token
  kept.

Answer formats (``--format``, from ``collab_core.training.csqa``):

* ``letter`` (default): the question and its five lettered choices, "Answer with the letter of the correct
  choice."; the assistant turn is prefilled with "The answer is"; up to 6 tokens, stopped at a newline.
  Extraction: the first standalone letter A-E in the answer, else a choice text it contains.
* ``explain`` (the seed's format): the same question and choices, then a request for a short explanation ending
  with "Therefore, the answer is (X)."; the assistant turn is prefilled with "Let's think briefly." (so that a
  0.5B model explains before it answers); up to 100 tokens, no newline stop. Extraction from the end:
  the last "answer is (X)" / "answer is X", else the last standalone letter A-E.

``--max-tokens`` / ``--stop`` override the format's defaults. An answer with no letter is invalid (counted wrong).

Batching: the engine modes answer ``--batch`` questions at once (default 8), which the engine decodes as one batch
(``collab_core/local/batch.py``; greedy answers are the same as one at a time), and the budget calibration is
batched the same way; the cloud mode sends ``--cloud-workers`` questions at once. ``time_per_question_s`` is then
each question's own latency with the others beside it, not the run's throughput. A budget router's running share
is the engine's, so with ``--batch`` > 1 which positions it routes can depend on the questions' interleaving.
A cloud-alone answer that fails (e.g. a timeout on a busy loopback server) is not written: a later run redoes it.

Results: ``OUT/rows.jsonl`` (one line per question and mode; re-running resumes), ``OUT/run.json`` (the
settings the rows were made with: a resume with other settings is refused), ``OUT/summary.json`` (with the
median answer length in tokens per mode), ``OUT/table.md`` and ``OUT/accuracy_vs_share.png``. The last line is
``name=value`` headline figures. ``OUT`` defaults to ``benchmarks/results/csqa``, with ``-MODEL`` appended for a
``--local-model`` and ``-FORMAT`` for a format other than ``letter``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core import load_local_model
from collab_core.children import run_main
from collab_core.cloud.client import CloudConfig
from collab_core.training.csqa import FORMATS, get_format, load_questions
from collab_core.training.csqa_data import data_path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its two halves, beside it
from csqa_modes import calibration_scores, run_mode  # noqa: E402
from csqa_report import fill_prompt_tokens, headline, latest_rows, summarize, write_reports  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


_MODE = re.compile(r"^(small|cloud|(threshold|budget|learned-budget|learned|seed):[0-9.]+)$")


def build_modes(args) -> list[str]:
    """The modes to run: ``--modes`` if given, else the lists of thresholds and budgets; less ``--skip``."""
    if args.modes:
        modes = [m for m in args.modes.split(",") if m]
        bad = [m for m in modes if not _MODE.match(m)]
        if bad:
            raise SystemExit(f"unknown mode(s) {', '.join(bad)}: small, cloud, threshold:T, budget:B, "
                             "learned-budget:B, learned:T, seed:T")
    else:
        modes = ["small", "cloud"] + [f"threshold:{t}" for t in args.thresholds.split(",") if t] + \
                [f"budget:{b}" for b in args.budgets.split(",") if b] + \
                [f"learned-budget:{b}" for b in args.learned_budgets.split(",") if b] + \
                [f"learned:{t}" for t in args.learned_thresholds.split(",") if t] + \
                [f"seed:{t}" for t in args.seed_thresholds.split(",") if t]
    return [m for m in modes if m not in args.skip.split(",")]


def _report(args, modes: list[str], ids: set, lm, rows_path: Path) -> None:
    """``--report``: the table of every mode as far as its rows go (each with its own question count), and the
    headline on the questions every reported mode has answered, so partial modes are compared like for like."""
    rows = latest_rows(rows_path, ids)
    fill_prompt_tokens(rows, lm, load_questions(args.data, args.limit, args.seed), args.format)
    summary = summarize(rows, modes)
    meta = {"questions": len(ids), "data": str(args.data), "seed": args.seed, "local": lm.name,
            "format": args.format, "max_tokens": args.max_tokens, "stop": args.stop, "report": True}
    lines = write_reports(summary, args.out, meta)
    print("\n".join(lines))
    present = [m for m in modes if m in summary]
    common = set.intersection(*({r["id"] for r in rows if r["mode"] == m} for m in present)) if present else set()
    h = headline(summarize([r for r in rows if r["id"] in common], present))
    print(json.dumps({"common_questions": len(common), **h}))
    print(" ".join([f"common_questions={len(common)}"] +
                   [f"{k}={v:.4f}" for k, v in h.items() if isinstance(v, float)]))


def default_out(local_model: str | None, fmt: str) -> Path:
    """``benchmarks/results/csqa``, then ``-MODEL`` for a named local model and ``-FORMAT`` unless ``letter``."""
    name = "csqa"
    if local_model:
        name += "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(local_model).name if "/" in local_model else local_model)
    if fmt != "letter":
        name += "-" + fmt
    return ROOT / "benchmarks" / "results" / name


def check_run_settings(out: Path, settings: dict) -> None:
    """Rows in ``out`` must come from the same settings; the first run writes them to ``run.json``."""
    path = out / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if diff:
            raise SystemExit(f"{out} holds rows made with other settings ({diff}); pass another --out")
    else:
        path.write_text(json.dumps(settings, indent=2))


_RUN_SELF = (f"import runpy, sys; sys.argv[0] = {str(Path(__file__).resolve())!r}; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_workers(args, modes: list[str], lm) -> None:
    """Run each mode over ``--workers`` shard processes (``--shard K/N``) sharing this process's cloud; the
    budget calibrations are made here first, once, so that the shards read them."""
    from collab_core.children import spawn_python

    for m in modes:
        if m.startswith(("budget:", "learned-budget:")):
            calibration_scores(lm, args, m.startswith("learned"))
    argv, skip = [], False
    for a in sys.argv[1:]:  # the same command, less --workers / --shard
        if skip:
            skip = False
            continue
        if a in ("--workers", "--shard", "--cloud-model", "--api-base"):
            skip = True
            continue
        if a.startswith(("--workers=", "--shard=", "--cloud-model=", "--api-base=")):
            continue
        argv.append(a)
    if args.cloud_model:
        argv += ["--cloud-model", args.cloud_model, "--api-base", args.api_base or ""]
    for m in modes:
        if m == "cloud":  # HTTP only: concurrent in this process (--cloud-workers)
            subset = ["--modes", "cloud", "--shard", "0/1"]
        else:
            subset = ["--modes", m]
        n = 1 if m == "cloud" else args.workers
        kids = [spawn_python(["-c", _RUN_SELF, *argv, *subset] +
                             ([] if m == "cloud" else ["--shard", f"{k}/{n}"]),
                             name=f"csqa {m} shard {k}/{n}", stdout=None, stderr=None) for k in range(n)]
        for kid in kids:
            if kid.proc.wait() != 0:
                raise SystemExit(f"{kid.name} failed (exit {kid.proc.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None,
                    help="evaluation questions: hf:validation (CommonsenseQA from the Hugging Face hub) or a JSONL "
                         "file in its layout")
    ap.add_argument("--train-data", default=None,
                    help="calibration questions for the budget modes: hf:train or a JSONL file (default: hf:train "
                         "when --data comes from the hub)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", default="0.5,0.7,0.85")
    ap.add_argument("--budgets", default="0.07")
    ap.add_argument("--seed-thresholds", default="0.7")
    ap.add_argument("--learned-budgets", default="", help="budgets for the learned router (beside --budgets)")
    ap.add_argument("--learned-thresholds", default="", help="thresholds on the learned router's probability")
    ap.add_argument("--router", default=None, help="learned router folder (default: the one shipped for the model)")
    ap.add_argument("--format", default="letter", choices=list(FORMATS),
                    help="letter: prefilled 'The answer is', a few tokens; explain: the seed's format, a short "
                         "explanation ending 'Therefore, the answer is (X).'")
    ap.add_argument("--max-tokens", type=int, default=None, help="answer tokens (default: the format's, 6 or 100)")
    ap.add_argument("--stop", default=None,
                    help='stop sequence ("" for free-form answers up to --max-tokens; default: the format\'s)')
    ap.add_argument("--modes", default="", help="the modes to run, e.g. small or small,cloud,budget:0.07 "
                                                "(replaces --thresholds, --budgets, ...)")
    ap.add_argument("--skip", default="", help="modes to leave out, e.g. cloud")
    ap.add_argument("--calibration", type=int, default=40, help="training questions for budget calibration")
    ap.add_argument("--pipeline", default="async")
    ap.add_argument("--span-tokens", type=int, default=2, help="cloud tokens per routed span")
    ap.add_argument("--spare-tokens", type=int, default=1,
                    help="token-exact clouds: tokens each call asks for beyond its span, used without a call where the "
                         "router routes the next position (0: one call per routed span, as the runs before it)")
    ap.add_argument("--cloud-vocab", default=None,
                    help="the cloud's vocabulary fingerprint, 'local', or 'standin' (the stand-in's): token-exact "
                         "spans when it matches the local model's (default: text spans)")
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--cloud-model", default=None)
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--workers", type=int, default=1,
                    help="split the questions over N worker processes (each with its own copy of the local model "
                         "and its own routers, sharing one cloud); rows are the same as N separate shard runs")
    ap.add_argument("--shard", default=None, help="K/N: run only questions K, K+N, K+2N, ... (what --workers runs)")
    ap.add_argument("--answer-timeout", type=float, default=900,
                    help="seconds for one whole cloud-alone answer (the cloud mode)")
    ap.add_argument("--batch", type=int, default=8,
                    help="questions answered at once by the engine modes, decoded as one batch (1: one at a time; "
                         "the rows are the same, except that a budget router's running share then interleaves "
                         "the questions)")
    ap.add_argument("--cloud-workers", type=int, default=8,
                    help="concurrent questions in the cloud-only mode (the stand-in decodes them as one batch)")
    ap.add_argument("--report", action="store_true",
                    help="only summarize the rows in OUT for --modes (partial modes included; the headline on the "
                         "questions every mode has answered)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: benchmarks/results/csqa[-MODEL][-FORMAT])")
    args = ap.parse_args()
    args.data_spec, args.data = args.data, data_path(args.data, what="evaluation questions (--data)")
    fmt = get_format(args.format)
    args.max_tokens = fmt.max_tokens if args.max_tokens is None else args.max_tokens
    args.stop = fmt.stop if args.stop is None else args.stop
    args.out = args.out or default_out(args.local_model, args.format)
    modes = build_modes(args)

    lm = load_local_model(args.local_model)
    questions = load_questions(args.data, args.limit, args.seed)
    ids = {q["id"] for q in questions}
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        questions = questions[k::n]
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"local": lm.name, "fingerprint": lm.fingerprint, "format": args.format,
                "max_tokens": args.max_tokens, "stop": args.stop, "data": str(args.data), "seed": args.seed,
                "span_tokens": args.span_tokens, "cloud_vocab": args.cloud_vocab}
    if args.spare_tokens:  # (folders made before spare tokens existed hold rows made with none)
        settings["spare_tokens"] = args.spare_tokens
    check_run_settings(args.out, settings)
    rows_path = args.out / "rows.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["mode"], r["id"]) for r in rows}

    if args.report:  # summarize the rows there are; run nothing
        _report(args, modes, ids, lm, rows_path)
        return
    standin = None
    if not args.cloud_model and any(m != "small" for m in modes):
        from collab_core.devtools.standin import StandinCloud

        standin = StandinCloud().start()
        args.cloud_model, args.api_base = standin.model, standin.api_base
    vocab = args.cloud_vocab
    if vocab == "standin":  # the stand-in's fingerprint (also in a shard, whose stand-in the parent started)
        from collab_core.devtools.standin import StandinCloud

        vocab = (standin or StandinCloud(progress=False)).vocab
    cloud_cfg = CloudConfig(model=args.cloud_model, api_base=args.api_base, span_tokens=args.span_tokens,
                            spare_tokens=args.spare_tokens,
                            timeout_s=120, vocab=vocab) if args.cloud_model else None  # small only: no cloud
    try:
        if args.workers > 1 and not args.shard:
            run_workers(args, modes, lm)
        else:
            with rows_path.open("a") as f:
                for m in modes:
                    run_mode(m, lm, questions, args, cloud_cfg, done, f, standin)
    finally:
        if standin is not None:
            standin.stop()
    if args.shard:
        return  # the parent summarizes
    rows = latest_rows(rows_path, ids)
    fill_prompt_tokens(rows, lm, load_questions(args.data, args.limit, args.seed), args.format)
    summary = summarize(rows, modes)
    meta = {"questions": len(questions), "data": str(args.data), "seed": args.seed, "local": lm.name,
            "cloud": args.cloud_model, "format": args.format, "max_tokens": args.max_tokens, "stop": args.stop,
            "pipeline": args.pipeline}
    lines = write_reports(summary, args.out, meta)
    print("\n".join(lines))
    h = headline(summary)
    print(json.dumps(h))
    print(" ".join(f"{k}={v:.4f}" for k, v in h.items() if isinstance(v, float)))


if __name__ == "__main__":
    run_main(main)
