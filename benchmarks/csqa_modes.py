"""The CommonsenseQA benchmark's modes: how each answers one question (``benchmarks/csqa.py`` runs them)."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import re
import sys
import threading
import time
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core import Engine
from collab_core.cloud.client import CloudClient
from collab_core.router import BudgetRouter, ThresholdRouter
from collab_core.scoring import ConfidenceScorer, LearnedScorer, TokenSignal
from collab_core.training import calibrate_on
from collab_core.training.csqa import get_format, load_questions, prompt_text, routed_places
from collab_core.training.csqa_data import data_path

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
