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
import concurrent.futures as cf
import dataclasses
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core import Engine, load_local_model
from collab_core.children import run_main
from collab_core.cloud.client import CloudClient, CloudConfig
from collab_core.router import BudgetRouter, ThresholdRouter
from collab_core.scoring import ConfidenceScorer, LearnedScorer, TokenSignal
from collab_core.training import calibrate_on
from collab_core.training.csqa import FORMATS, get_format, load_questions, prompt_text, routed_places
from collab_core.training.csqa_data import data_path

ROOT = Path(__file__).resolve().parent.parent
_RESTART = threading.Lock()  # one thread restarts a dead stand-in


def seed_generate(lm, client: CloudClient, text: str, threshold: float, max_tokens: int, stop: str = "\n") -> dict:
    """The seed's transport: no KV cache, full prefix per routed token, first cloud token kept."""
    import mlx.core as mx

    from collab_core.scoring import summary_graph, unpack_summary

    scorer = ConfidenceScorer()
    scorer.bind(lm)
    tok = lm.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    out: list[int] = []
    stats = {"cloud_tokens": 0, "cloud_calls": 0, "cloud_failures": 0, "cloud_in": 0, "cloud_out": 0, "cost": 0.0}
    t0 = time.perf_counter()
    for _ in range(max_tokens):
        logits = lm.model(mx.array(ids + out)[None])[0, -1].astype(mx.float32)  # whole sequence, every token
        lp = logits - mx.logsumexp(logits)
        packed, top = summary_graph(lp, 5)
        conf = unpack_summary(packed.tolist(), top.tolist())
        nxt = conf.top_ids[0]
        if scorer(TokenSignal(conf, len(out), nxt)) >= threshold:
            from collab_core.cloud.client import SpanRequest

            stats["cloud_calls"] += 1
            try:
                span = client.continue_span(SpanRequest(messages=[], prompt_text=text, partial=tok.decode(out)))
                stats["cloud_in"] += span.input_tokens
                stats["cloud_out"] += span.output_tokens
                stats["cost"] += span.cost_usd
                first = tok.encode(span.text, add_special_tokens=False)[:1] if span.text else []
                if first:
                    nxt = first[0]
                    stats["cloud_tokens"] += 1
            except Exception:  # noqa: BLE001 - the seed ended the answer on any error; we count it
                stats["cloud_failures"] += 1
        if nxt in lm.eos_token_ids:
            break
        out.append(nxt)
        if stop and stop in tok.decode(out):
            break
    return {"text": tok.decode(out), "tokens": len(out), "time_s": time.perf_counter() - t0, **stats}


def train_data(args) -> Path:
    """The calibration questions: ``--train-data``, else CommonsenseQA's training split when ``--data`` comes from
    the hub (``ConfigError``, saying how to get them, otherwise)."""
    spec = args.train_data or ("hf:train" if str(args.data_spec).startswith("hf:") else None)
    return data_path(spec, what="calibration questions (--train-data; never the evaluation ones)")


def calibration_scores(lm, args, learned: bool) -> list[float]:
    """The router's scores over the local model's answers to ``--calibration`` training questions (never the
    evaluation ones), kept in ``OUT/calibration-KIND.json``: every budget of one scorer, and every shard, reuses
    them instead of decoding the same training answers again."""
    kind = "learned-" + re.sub(r"[^A-Za-z0-9._-]+", "_", str(args.router or "shipped")) if learned else "confidence"
    path = args.out / f"calibration-{kind}-{args.calibration}.json"
    if path.exists():
        return json.loads(path.read_text())
    router = BudgetRouter(0.07, scorer=LearnedScorer(args.router) if learned else None)
    prompts = [prompt_text(lm, q, args.format) for q in load_questions(train_data(args), args.calibration, seed=123)]
    calibrate_on(router, lm, prompts, max_tokens=args.max_tokens, stop=args.stop, batch=args.batch)
    scores = list(router.scores)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(scores))
    tmp.replace(path)
    return scores


def budget_router(lm, mode: str, args) -> BudgetRouter:
    """``budget:B`` / ``learned-budget:B``: a budget router seeded with the calibration scores."""
    learned = mode.startswith("learned")
    router = BudgetRouter(float(mode.split(":")[1]), scorer=LearnedScorer(args.router) if learned else None)
    router.bind(lm)
    router.calibrate(calibration_scores(lm, args, learned))
    return router


def run_mode(mode: str, lm, questions, args, cloud_cfg, done: set, rows_file, standin=None) -> None:
    from tqdm import tqdm

    todo = [q for q in questions if (mode, q["id"]) not in done]
    if not todo:
        return
    engine = client = None
    batch = dict(max_batch=args.batch)
    if mode == "small":
        engine = Engine(lm, router="never", **batch)
    elif mode == "cloud" or mode.startswith("seed:"):
        # the cloud alone writes whole answers, concurrently: a whole answer gets the long timeout
        client = CloudClient(dataclasses.replace(cloud_cfg, span_tokens=args.max_tokens if mode == "cloud" else 1,
                                                 spare_tokens=0,
                                                 timeout_s=args.answer_timeout if mode == "cloud" else 120))
    elif mode.startswith("threshold:"):
        engine = Engine(lm, cloud=cloud_cfg, router=mode, pipeline=args.pipeline, cache=False, **batch)
    elif mode.startswith(("budget:", "learned-budget:")):
        engine = Engine(lm, cloud=cloud_cfg, router=budget_router(lm, mode, args), pipeline=args.pipeline,
                        cache=False, **batch)
    elif mode.startswith("learned:"):
        router = ThresholdRouter(float(mode.split(":")[1]), scorer=LearnedScorer(args.router))
        engine = Engine(lm, cloud=cloud_cfg, router=router, pipeline=args.pipeline, cache=False, **batch)

    def one(q):
        child = standin.child if standin is not None else None
        row = answer_one(mode, lm, q, args, engine, client)
        if row["cloud_failures"] and standin is not None:
            # mlx_lm.server 0.32.2 kills its generation thread on an exact repeat of a cached prompt ("Sequence N
            # has an empty prompt"), then answers 404 "generation thread died": restart it (one thread does, even
            # when several questions in flight saw it fail) and redo the question
            with _RESTART:
                if standin.child is child and not standin.healthy():
                    print(f"\nstand-in cloud unhealthy during {mode}; restarting it", file=sys.stderr)
                    standin.restart()
            if standin.child is not child:
                row = answer_one(mode, lm, q, args, engine, client)
        return row

    bar = tqdm(total=len(todo), desc=mode + (f" [shard {args.shard}]" if args.shard else ""), file=sys.stderr)
    concurrent = args.cloud_workers if mode == "cloud" else args.batch if engine is not None else 1
    if concurrent > 1:
        # the cloud alone is only HTTP: concurrent questions, which the server decodes as one batch; the engine
        # modes answer --batch questions at once, which the engine decodes as one batch (local/batch.py)
        with cf.ThreadPoolExecutor(concurrent) as ex:
            rows = (f.result() for f in cf.as_completed([ex.submit(one, q) for q in todo]))
            for row in rows:
                _keep(rows_file, row, mode)
                bar.update()
    else:
        for q in todo:
            _keep(rows_file, one(q), mode)
            bar.update()
    bar.close()


def _keep(rows_file, row: dict, mode: str) -> None:
    """Write the row, unless the cloud-alone answer failed: that is no answer of the cloud model (a timeout on a
    busy loopback server), so the question is left for the next run to redo."""
    if mode == "cloud" and row["cloud_failures"]:
        print(f"\ncloud-alone answer to {row['id']} failed ({row.get('errors')}); left for a later run",
              file=sys.stderr)
        return
    _write(rows_file, row)


def _write(rows_file, row: dict) -> None:
    rows_file.write(json.dumps(row) + "\n")  # one write per line: shards append to one file
    rows_file.flush()


def answer_one(mode: str, lm, q: dict, args, engine, client) -> dict:
    text = prompt_text(lm, q, args.format)
    if engine is not None:
        g = engine.generate(text, chat=False, max_tokens=args.max_tokens, stop=[args.stop] if args.stop else [])
        s = g.stats
        row = {"answer": g.text, "tokens": s.total_tokens, "cloud_tokens": s.cloud_tokens,
               "cloud_calls": s.cloud_calls, "spare_tokens": s.cloud_spare_tokens, "cloud_failures": s.cloud_failures,
               "errors": s.cloud_errors,
               "cloud_in": s.cloud_input_tokens, "cloud_out": s.cloud_output_tokens, "cost": s.cost_usd,
               "time_s": s.time_total_s, "cloud_ranks": s.cloud_token_ranks, "prompt_tokens": s.prompt_tokens,
               "routed_places": routed_places([(e.text, e.source) for e in g.events
                                               if getattr(e, "source", None) is not None])}
    elif mode == "cloud":
        from collab_core.cloud.client import SpanRequest
        from collab_core.errors import CloudError

        t0 = time.perf_counter()
        try:
            span = client.continue_span(SpanRequest(messages=[], prompt_text=text, partial=""))
        except CloudError as exc:
            return {"answer": "", "tokens": 0, "cloud_tokens": 0, "cloud_calls": 1, "cloud_failures": 1,
                    "errors": [str(exc)], "cloud_in": 0, "cloud_out": 0, "cost": 0.0,
                    "time_s": time.perf_counter() - t0, "mode": mode, "id": q["id"], "pred": None,
                    "gold": q["answerKey"], "correct": False, "format": args.format}
        answer = span.text.split(args.stop)[0] if args.stop else span.text
        n = len(lm.tokenizer.encode(answer, add_special_tokens=False))
        row = {"answer": answer, "tokens": n, "cloud_tokens": n, "cloud_calls": 1, "cloud_failures": 0,
               "cloud_in": span.input_tokens, "cloud_out": span.output_tokens, "cost": span.cost_usd,
               "time_s": time.perf_counter() - t0, "prompt_tokens": span.input_tokens}
    else:
        r = seed_generate(lm, client, text, float(mode.split(":")[1]), args.max_tokens, args.stop)
        row = {"answer": r["text"], "tokens": r["tokens"], "cloud_tokens": r["cloud_tokens"],
               "cloud_calls": r["cloud_calls"], "cloud_failures": r["cloud_failures"],
               "cloud_in": r["cloud_in"], "cloud_out": r["cloud_out"], "cost": r["cost"], "time_s": r["time_s"]}
    pred = get_format(args.format).extract(row["answer"], q)
    row.update(mode=mode, id=q["id"], pred=pred, gold=q["answerKey"], correct=pred == q["answerKey"],
               format=args.format)
    return row


def answers_by_place(rows: list[dict], small: dict[str, dict]) -> dict:
    """Where a routed mode spent its cloud tokens, answer by answer: answers whose final letter's slot was routed,
    answers routed only elsewhere, and answers not routed; per group the cloud tokens spent and the answers that
    went wrong -> right (up) and right -> wrong (down) against the local model alone on the same question."""
    out = {g: {"answers": 0, "cloud_tokens": 0, "up": 0, "down": 0} for g in ("slot", "elsewhere only", "none")}
    for r in rows:
        places = r.get("routed_places") or {}
        g = out["slot" if places.get("answer slot") else "elsewhere only" if r["cloud_tokens"] else "none"]
        g["answers"] += 1
        g["cloud_tokens"] += r["cloud_tokens"]
        alone = small.get(r["id"])
        if alone is not None:
            g["up"] += int(r["correct"] and not alone["correct"])
            g["down"] += int(alone["correct"] and not r["correct"])
    return out


def summarize(rows: list[dict], modes: list[str]) -> dict:
    out = {}
    small = {r["id"]: r for r in rows if r["mode"] == "small"}
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        if not rs:
            continue
        n = len(rs)
        toks = sum(r["tokens"] for r in rs)
        out[m] = {
            "questions": n,
            "accuracy": sum(r["correct"] for r in rs) / n,
            "invalid_rate": sum(r["pred"] is None for r in rs) / n,
            "routed_share": sum(r["cloud_tokens"] for r in rs) / toks if toks else 0.0,
            "cloud_calls": sum(r["cloud_calls"] for r in rs),
            "spare_tokens_used": sum(r.get("spare_tokens", 0) for r in rs),  # cloud tokens that needed no call
            "cloud_failures": sum(r["cloud_failures"] for r in rs),
            "cloud_tokens_in": sum(r["cloud_in"] for r in rs),
            "cloud_tokens_out": sum(r["cloud_out"] for r in rs),
            "cost_usd": sum(r["cost"] for r in rs),
            "time_per_question_s": sum(r["time_s"] for r in rs) / n,
            "median_answer_tokens": statistics.median(r["tokens"] for r in rs),
            **money(rs),
            "routed_places": {k: sum(r.get("routed_places", {}).get(k, 0) for r in rs)
                              for k in ("answer slot", "first sentence", "elsewhere")},
        }
        if m not in ("small", "cloud"):
            out[m]["answers_by_place"] = answers_by_place(rs, small)
    return out


def money(rows: list[dict]) -> dict:
    """The rows' cloud tokens at the list prices of ``REFERENCE_MODELS`` (LiteLLM's cost map), with no cache hits
    and with every cacheable input token a hit (``collab_core.cloud.pricing``). An answer's last call sent at
    most its prompt and its whole answer: that bounds the input that no cache can serve."""
    from collab_core.cloud.pricing import REFERENCE_MODELS, answer_cost, list_price

    out = {}
    for model in REFERENCE_MODELS:
        price = list_price(model)
        tot = {"no_cache": 0.0, "all_hits": 0.0}
        for r in rows:
            if not r["cloud_calls"]:
                continue
            last = min(r["cloud_in"], r.get("prompt_tokens", r["cloud_in"]) + r["tokens"])
            for k, v in answer_cost(price, input_tokens=r["cloud_in"], output_tokens=r["cloud_out"],
                                    last_call_input=last).items():
                tot[k] += v
        out[f"usd_{model}_no_cache"] = tot["no_cache"]
        out[f"usd_{model}_all_hits"] = tot["all_hits"]
    return out


def fill_prompt_tokens(rows: list[dict], lm, questions: list[dict], fmt: str) -> None:
    """Rows written before ``prompt_tokens`` was recorded: count it with the local tokenizer (the pair's)."""
    by_id = {q["id"]: q for q in questions}
    for r in rows:
        if "prompt_tokens" not in r and r["id"] in by_id:
            r["prompt_tokens"] = len(lm.tokenizer.encode(prompt_text(lm, by_id[r["id"]], fmt), add_special_tokens=False))


def write_reports(summary: dict, out: Path, meta: dict) -> list[str]:
    lines = ["| mode | questions | accuracy | invalid | median answer tokens | routed share | cloud calls (failed) | "
             "cloud tokens in/out | time/question (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['questions']} | {s['accuracy']:.3f} | {s['invalid_rate']:.3f} | "
                     f"{s['median_answer_tokens']:g} | {s['routed_share']:.3f} | "
                     f"{s['cloud_calls']} ({s['cloud_failures']}) | "
                     f"{s['cloud_tokens_in']}/{s['cloud_tokens_out']} | {s['time_per_question_s']:.2f} |")
    placed = {m: s["answers_by_place"] for m, s in summary.items() if "answers_by_place" in s}
    if placed:
        lines += ["", "| mode | answers: slot routed | elsewhere only | not routed |", "|---|---|---|---|"]
        for m, g in placed.items():
            lines.append(f"| {m} | " + " | ".join(f"{v['answers']} ({v['cloud_tokens']} tokens, +{v['up']}/-{v['down']})"
                                                for v in g.values()) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"meta": meta, "modes": summary}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        routed = {m: s for m, s in summary.items() if m not in ("small", "cloud")}
        for m, s in routed.items():
            ax.scatter(s["routed_share"] * 100, s["accuracy"], label=m, marker="s" if m.startswith("seed") else "^" if m.startswith("learned") else "o")
        if "small" in summary:
            ax.axhline(summary["small"]["accuracy"], ls="--", color="gray", label="small only")
        if "cloud" in summary:
            ax.axhline(summary["cloud"]["accuracy"], ls=":", color="black", label="cloud only")
        ax.set_xlabel("tokens routed to the cloud (%)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"CommonsenseQA ({meta['questions']} questions)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_share.png", dpi=120)
    except ImportError:
        pass
    return lines


def headline(summary: dict) -> dict:
    small = summary.get("small", {}).get("accuracy")
    cloud = summary.get("cloud", {}).get("accuracy")
    h = {"small_accuracy": small, "cloud_accuracy": cloud}
    for cap in (0.02, 0.07):  # the best routed mode whose measured share is within the cap
        tag = f"{round(cap * 100)}pct"
        routed = [s for m, s in summary.items() if m.startswith(("threshold", "budget", "learned"))
                  and s["routed_share"] <= cap]
        top = max(routed, key=lambda s: s["accuracy"], default=None)
        if top is None:
            continue
        h[f"best_routed_accuracy_at_{tag}"] = top["accuracy"]
        if small:
            h[f"relative_gain_at_{tag}"] = (top["accuracy"] - small) / small
        if small is not None and cloud is not None and cloud != small:
            h[f"gap_closed_at_{tag}"] = (top["accuracy"] - small) / (cloud - small)
        if "cloud" in summary:  # money: that mode's cloud tokens against cloud-only answers, at list price
            for k in [k for k in top if k.startswith("usd_")]:
                if summary["cloud"][k]:
                    h[f"cost_vs_cloud_at_{tag}_{k[4:]}"] = top[k] / summary["cloud"][k]
    for m, s in summary.items():
        if m.startswith("learned-budget:") and "budget:" + m.split(":")[1] in summary:
            conf = summary["budget:" + m.split(":")[1]]  # same budget, confidence score: accuracy difference
            h[f"learned_minus_confidence_at_budget_{m.split(':')[1]}"] = s["accuracy"] - conf["accuracy"]
        if m.startswith("seed:"):
            ours = summary.get("threshold:" + m.split(":")[1])
            if ours:
                h[f"time_vs_seed_{m.split(':')[1]}"] = ours["time_per_question_s"] / s["time_per_question_s"]
                if ours["time_per_question_s"] > s["time_per_question_s"]:
                    print(f"WARNING: routed threshold {m.split(':')[1]} is slower per question than the seed "
                          "baseline", file=sys.stderr)
    return h


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


def latest_rows(rows_path: Path, ids: set) -> list[dict]:
    """One row per (mode, question) of ``ids``: the latest written."""
    latest = {(r["mode"], r["id"]): r for r in (json.loads(x) for x in rows_path.read_text().splitlines())}
    return [r for r in latest.values() if r["id"] in ids]


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
