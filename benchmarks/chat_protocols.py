"""Chat-only clouds: which continuation protocol a small instruction follower gets right.

    python benchmarks/chat_protocols.py --data hf:validation|FILE.jsonl [--limit 80] [--threshold 0.5]
                                        [--protocols anchor,echo,instruct] [--end-to-end restate] [--out DIR]

``--data``: CommonsenseQA questions: ``hf:validation`` (from the hub, where one is reachable) or a JSONL file in the
Hugging Face ``commonsense_qa`` layout (see benchmarks/csqa.py); ``--limit 0``: every question in the file.

All on the stand-in cloud (Qwen2.5-Coder-1.5B-Instruct on ``mlx_lm.server``, 127.0.0.1), reached through LiteLLM
like any provider; local model SmolLM2-135M; CommonsenseQA validation questions (shuffled, seed 0) in the letter
format, the assistant turn prefilled with "The answer is"; threshold router; cloud spans of 2 tokens.

1. ``completion``: the routed run through the server's text-completion endpoint
   (``text-completion-openai/default_model``); every routed position is recorded with completion's span.
2. replay: each chat protocol is asked at exactly those positions through the chat endpoint
   (``openai/default_model``, ``strategy=PROTOCOL``): how often the first word of its span agrees with
   completion's, how often the reply cannot be aligned (a failed call: the engine keeps its local token), and
   the cloud tokens in/out per call.
3. end to end: for the protocols given to ``--end-to-end`` (default: the one ``auto`` picks, ``restate``), the
   same routed run through the chat endpoint: accuracy, invalid answers, routed share, calls (failed, and of
   those the replies that were no continuation of the answer), cloud tokens per call, time per question -- the
   same figures as completion's, side by side.

Rows are resumable (``OUT/positions.jsonl``, ``OUT/replay.jsonl``, ``OUT/rows.jsonl``); ``OUT/summary.json``;
the last line is the ``name=value`` headline: per path its accuracy, invalid share and cloud input tokens per
call, and per chat protocol its accuracy as a share of completion's and its invalid share's excess over
completion's in points.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core import Engine, load_local_model
from collab_core.children import run_main
from collab_core.cloud.client import CHAT_PROTOCOL, CloudClient, CloudConfig, SpanRequest
from collab_core.errors import CloudError
from collab_core.router import ThresholdRouter
from collab_core.training.csqa import PREFILL, extract, load_questions, user_message
from collab_core.training.csqa_data import data_path

ROOT = Path(__file__).resolve().parent.parent
COMPLETION = "text-completion-openai/default_model"
CHAT = "openai/default_model"


class RecordingClient(CloudClient):
    """A cloud client that keeps every (request, span) it answered."""

    def __init__(self, config: CloudConfig):
        super().__init__(config)
        self.calls: list[tuple[SpanRequest, object]] = []

    def continue_span(self, req, deadline=None):
        span = super().continue_span(req, deadline=deadline)
        self.calls.append((req, span))
        return span


def first_word(text: str) -> str:
    m = re.search(r"\w+", text)
    return m.group(0) if m else text.strip()[:1]


def prompt_for(q: dict) -> list[dict]:
    return [{"role": "user", "content": user_message(q)}, {"role": "assistant", "content": PREFILL}]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def routed_run(mode: str, lm, questions, args, standin, out_rows: Path, positions: Path | None) -> None:
    """Answer every question not done yet for ``mode`` (``completion`` or ``chat:PROTOCOL``)."""
    done = {r["id"] for r in _jsonl(out_rows) if r["mode"] == mode}
    strategy = "completion" if mode == "completion" else mode.split(":", 1)[1]
    cfg = CloudConfig(model=COMPLETION if mode == "completion" else CHAT, api_base=args.api_base,
                      strategy=strategy, span_tokens=2, timeout_s=120)
    with out_rows.open("a") as rows_f, (positions.open("a") if positions else open("/dev/null", "w")) as pos_f:
        for q in questions:
            if q["id"] in done:
                continue
            for _attempt in range(4):
                engine = Engine(lm, cloud=cfg, router=ThresholdRouter(args.threshold), pipeline="sync")
                client = engine.cloud = RecordingClient(cfg)
                gen = engine.generate(prompt_for(q), max_tokens=6, stop=["\n"])
                if not any("generation thread died" in e or "Connection" in e for e in gen.stats.cloud_errors):
                    break
                # the server died (an unpatched mlx_lm.server: see devtools/standin_server.py): redo the question
                if standin is not None and not standin.healthy():
                    standin.restart()
                else:
                    time.sleep(60)  # a server shared with another run: its owner restarts it
            s = gen.stats
            pred = extract(gen.text, q)
            rows_f.write(json.dumps({
                "mode": mode, "id": q["id"], "answer": gen.text, "pred": pred, "gold": q["answerKey"],
                "correct": pred == q["answerKey"], "tokens": s.total_tokens, "cloud_tokens": s.cloud_tokens,
                "cloud_calls": s.cloud_calls, "cloud_failures": s.cloud_failures, "errors": s.cloud_errors,
                "cloud_in": s.cloud_input_tokens, "cloud_out": s.cloud_output_tokens, "time_s": s.time_total_s,
            }) + "\n")
            rows_f.flush()
            for i, (req, span) in enumerate(client.calls):
                pos_f.write(json.dumps({"id": q["id"], "i": i, "messages": req.messages, "prefix": req.prefix,
                                        "partial": req.partial, "prompt_text": req.prompt_text,
                                        "word_start": req.word_start, "completion": span.text}) + "\n")
            pos_f.flush()


def replay(protocols: list[str], positions: list[dict], args, standin, out: Path) -> None:
    """Ask every protocol at every recorded position, position by position (the server's prompt cache then
    holds the conversation the protocols share)."""
    done = {(r["protocol"], r["id"], r["i"]) for r in _jsonl(out)}
    clients = {p: CloudClient(CloudConfig(model=CHAT, api_base=args.api_base, strategy=p, span_tokens=2,
                                          timeout_s=120, max_retries=0)) for p in protocols}
    with out.open("a") as f:
        for pos in positions:
            req = SpanRequest(messages=pos["messages"], prompt_text=pos["prompt_text"], partial=pos["partial"],
                              word_start=pos["word_start"], prefix=pos["prefix"])
            for protocol, client in clients.items():
                if (protocol, pos["id"], pos["i"]) in done:
                    continue
                row = {"protocol": protocol, "id": pos["id"], "i": pos["i"], "completion": pos["completion"]}
                for _attempt in range(2):
                    t0 = time.perf_counter()
                    try:
                        span = client.continue_span(req)
                        row.update(text=span.text, error=None, cloud_in=span.input_tokens,
                                   cloud_out=span.output_tokens)
                        break
                    except CloudError as exc:
                        row.update(text=None, error=f"{exc.kind}: {exc}"[:300], cloud_in=0, cloud_out=0)
                        if exc.kind == "UnalignedSpan" or standin is None or standin.healthy():
                            break
                        standin.restart()
                row["time_s"] = time.perf_counter() - t0
                row["agree"] = row["text"] is not None and first_word(row["text"]) == first_word(pos["completion"])
                f.write(json.dumps(row) + "\n")
                f.flush()


def summarize(rows: list[dict], replays: list[dict], modes: list[str], protocols: list[str]) -> dict:
    out: dict = {"end_to_end": {}, "replay": {}}
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        if not rs:
            continue
        calls = sum(r["cloud_calls"] for r in rs)
        toks = sum(r["tokens"] for r in rs)
        out["end_to_end"][m] = {
            "questions": len(rs), "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "invalid_rate": sum(r["pred"] is None for r in rs) / len(rs),
            "routed_share": sum(r["cloud_tokens"] for r in rs) / toks if toks else 0.0,
            "cloud_calls": calls, "cloud_failures": sum(r["cloud_failures"] for r in rs),
            "not_continuations": sum(e.startswith("UnalignedSpan") for r in rs for e in r["errors"]),
            "cloud_in_per_call": sum(r["cloud_in"] for r in rs) / calls if calls else 0.0,
            "cloud_out_per_call": sum(r["cloud_out"] for r in rs) / calls if calls else 0.0,
            "time_per_question_s": sum(r["time_s"] for r in rs) / len(rs)}
    for p in protocols:
        rs = [r for r in replays if r["protocol"] == p]
        if not rs:
            continue
        ok = [r for r in rs if r["error"] is None]
        out["replay"][p] = {
            "positions": len(rs), "first_word_agreement": sum(r["agree"] for r in rs) / len(rs),
            "unaligned": sum(bool(r["error"]) and r["error"].startswith("UnalignedSpan") for r in rs) / len(rs),
            "failed": sum(r["error"] is not None for r in rs) / len(rs),
            "cloud_in_per_call": statistics.mean(r["cloud_in"] for r in ok) if ok else 0.0,
            "cloud_out_per_call": statistics.mean(r["cloud_out"] for r in ok) if ok else 0.0,
            "time_per_call_s": statistics.mean(r["time_s"] for r in rs)}
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="questions: hf:validation or a JSONL file (see benchmarks/csqa.py)")
    ap.add_argument("--limit", type=int, default=80, help="questions (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--protocols", default="anchor,echo,instruct", help="chat protocols to replay")
    ap.add_argument("--end-to-end", default=CHAT_PROTOCOL,
                    help="chat protocols to run end to end beside completion (comma-separated; '' for none)")
    ap.add_argument("--api-base", default=None, help="an OpenAI-compatible server serving both endpoints "
                                                     "(default: start the stand-in)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chat-protocols")
    return ap


def main() -> None:
    args = parser().parse_args()
    args.data = data_path(args.data, what="CommonsenseQA questions (--data)")

    lm = load_local_model("smollm2-135m")
    questions = load_questions(args.data, args.limit, args.seed)
    protocols = [p for p in args.protocols.split(",") if p]
    modes = ["completion"] + [f"chat:{p}" for p in args.end_to_end.split(",") if p]
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path, pos_path, replay_path = (args.out / n for n in ("rows.jsonl", "positions.jsonl", "replay.jsonl"))
    standin = None
    if not args.api_base:
        from collab_core.devtools.standin import StandinCloud

        standin = StandinCloud().start()
        args.api_base = standin.api_base
    try:
        routed_run("completion", lm, questions, args, standin, rows_path, pos_path)
        ids = {q["id"] for q in questions}
        positions = [p for p in _jsonl(pos_path) if p["id"] in ids]
        replay(protocols, positions, args, standin, replay_path)
        for m in modes[1:]:
            routed_run(m, lm, questions, args, standin, rows_path, None)
    finally:
        if standin is not None:
            standin.stop("benchmark finished")
    latest = {(r["mode"], r["id"]): r for r in _jsonl(rows_path) if r["id"] in ids}
    keys = {(p["id"], p["i"]) for p in positions}
    replays = list({(r["protocol"], r["id"], r["i"]): r for r in _jsonl(replay_path)
                    if (r["id"], r["i"]) in keys}.values())
    summary = summarize(list(latest.values()), replays, modes, protocols)
    summary["meta"] = {"questions": len(questions), "seed": args.seed, "threshold": args.threshold,
                       "local": lm.name, "span_tokens": 2, "positions": len(positions)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(" ".join(f"{k}={v:.4f}" for k, v in headline(summary).items()))


def headline(summary: dict) -> dict[str, float]:
    """The ``name=value`` figures: replay agreement per protocol; per end-to-end path its accuracy, invalid share
    and cloud input tokens per call; per chat protocol, its accuracy over completion's and its invalid share
    minus completion's, in points."""
    head = {f"first_word_agreement_{p}": s["first_word_agreement"] for p, s in summary["replay"].items()}
    runs = summary["end_to_end"]
    for m, s in runs.items():
        name = m.split(":")[-1]
        head |= {f"accuracy_{name}": s["accuracy"], f"invalid_{name}": s["invalid_rate"],
                 f"cloud_in_per_call_{name}": s["cloud_in_per_call"]}
    comp = runs.get("completion")
    for m, s in runs.items():
        if comp and m != "completion":
            name = m.split(":")[-1]
            if comp["accuracy"]:
                head[f"accuracy_ratio_{name}"] = s["accuracy"] / comp["accuracy"]
            head[f"invalid_excess_points_{name}"] = 100 * (s["invalid_rate"] - comp["invalid_rate"])
    return head


if __name__ == "__main__":
    run_main(main)
