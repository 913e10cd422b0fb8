"""``collab demo``: the best pair we ship, routed in the seed's regime, beside the local model alone.

The local model is Qwen2.5-Coder-0.5B-Instruct and the cloud the stand-in (Qwen2.5-Coder-1.5B-Instruct on
``mlx_lm.server``, loopback): the two share a tokenizer, so spans come back as token ids (``cloud_vocab``) and
one-token spans are spliced as they are, as in the seed. A budget router holds the cloud to a few percent of
the tokens, its threshold calibrated first on the local model's answers to other prompts. For every question (a fixed list, whatever the answers turn out to be) the local model answers
alone, then routed, the cloud's tokens in colour; while the local model answers alone, the stand-in reads the
question (``Engine.prewarm``), so the routed answer's first span pays no cold prefill. The closing line sums
up the routed share, the calls, the cloud tokens against a cloud-only answer, and the time against local only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine import Engine, FinalEvent
from ..prompts import render_prompt
from ..router import BudgetRouter
from ..scoring import ConfidenceScorer
from ..settings import EngineSettings, GenerationConfig
from ..training import calibrate_on
from ..training.csqa import get_format, prompt_text
from .standin import StandinCloud

#: The first 5 shared validation questions after the benchmark's seed-0 shuffle (``benchmarks/csqa.py``): a rule,
#: not a choice by outcome. CommonsenseQA (Talmor et al., NAACL 2019), MIT licence.
DEMO_QUESTIONS = Path(__file__).with_name("demo_questions.jsonl")
FREE_FORM = "Explain in one sentence why the sky looks blue."
#: Prompts a confidence budget router is calibrated on before the demo (a learned router brings its own).
CALIBRATION = [
    "Why do cats purr?", "Name three uses of copper.",
    "Where would you most likely find a stapler? Choices: A) office B) beach C) forest D) river E) garage. "
    'Explain briefly, then end with "Therefore, the answer is (X)."',
    "How does a refrigerator keep food cold?", "What causes tides?",
]
LOCAL_MODEL = "qwen2.5-coder-0.5b"
ROUTER = "learned"
BUDGET = 0.02


def demo_questions() -> list[dict]:
    return [json.loads(line) for line in DEMO_QUESTIONS.read_text().splitlines() if line.strip()]


@dataclass
class Tally:
    tokens: int = 0
    cloud_tokens: int = 0
    calls: int = 0
    spare: int = 0  # cloud tokens that came as a call's spare tokens (no call of their own)
    failures: int = 0
    cloud_in: int = 0
    cloud_out: int = 0
    time_s: float = 0.0
    local_time_s: float = 0.0
    up: int = 0  # answers routing turned from wrong to right
    down: int = 0  # ... and from right to wrong
    graded: int = 0
    cloud_only_in: int = 0  # what asking the cloud for the whole answers would have cost (estimated)
    cloud_only_out: int = 0


def _stream(out, label: str, events, colour: bool) -> tuple[str, FinalEvent]:
    """Print a stream; return its whole text (the final event holds only the tail) and its final event."""
    from rich.text import Text

    out.print(Text(f"{label:<11}", style="dim"), end="")
    pieces = []
    for ev in events:
        pieces.append(ev.text)
        if isinstance(ev, FinalEvent):
            out.print(Text(ev.text))
            return "".join(pieces), ev
        out.print(Text(ev.text, style="bold magenta" if colour and ev.source == "cloud" else ""), end="")
    raise AssertionError("a stream ends with its FinalEvent")  # pragma: no cover


def serve_page(out, engine: Engine, *, host: str = "127.0.0.1", port: int = 8000,
               until: threading.Event | None = None) -> None:
    """Serve the page (``collab_core.server``) for ``engine`` and print its address; blocks until Ctrl-C or
    SIGTERM (or until ``until`` is set), then stops the server."""
    from rich.text import Text

    from ..server.app import create_app
    from ..server.serving import BackgroundServer, page_banner

    with BackgroundServer(create_app(engine), host=host, port=port) as server:
        out.print(Text(page_banner(server.url), style="bold"))
        out.print(Text("open it in a browser: the routed answer streams beside the local model's; Ctrl-C stops",
                       style="dim"))
        (until or threading.Event()).wait()


def run_demo(out, *, local_model: str = LOCAL_MODEL, budget: float = BUDGET, max_tokens: int = 100,
             questions: list[dict] | None = None, free_form: str | None = FREE_FORM, cloud_folder: str | None = None,
             router: str | None = ROUTER, serve_port: int | None = None) -> Tally:
    """Print the demo to ``out`` (a rich Console); returns the totals of the routed answers.

    ``questions``: CommonsenseQA rows, asked in the explain format and graded (default: ``DEMO_QUESTIONS``);
    ``free_form``: then one free-form question (None: none); ``cloud_folder``: another mlx-lm model folder for the
    stand-in to serve; ``router``: the router spec (default: the learned router shipped for the local model, held
    to ``budget``); ``serve_port``: then serve the page with the routed engine on that port (``serve_page``) until
    Ctrl-C, the stand-in still running."""
    from rich.text import Text

    questions = demo_questions() if questions is None else questions
    fmt = get_format("explain")
    t = Tally()
    t0 = time.perf_counter()
    with StandinCloud(folder=cloud_folder, progress=False) as cloud:
        out.print(Text(f"stand-in cloud warmed up in {time.perf_counter() - t0:.1f} s (its model loaded and "
                       "one request served; not counted below)", style="dim"))
        settings = EngineSettings(local_model=local_model, cloud_model=cloud.model, api_base=cloud.api_base,
                                  budget=budget, router=router, span_tokens=1, timeout=60, cloud_vocab=cloud.vocab)
        config = GenerationConfig(max_tokens=max_tokens)
        routed = Engine.from_settings(settings, config=config)
        alone = Engine(routed.local_model, config=config)  # the same loaded model, no cloud
        alone.generate("Hi", max_tokens=1)  # the local model's first pass, not counted either
        lm = routed.local_model
        if isinstance(routed.router, BudgetRouter) and isinstance(routed.router.scorer, ConfidenceScorer):
            # a confidence budget (a learned router brings the score quantiles it was trained with)
            t1 = time.perf_counter()
            calibrate_on(routed.router, lm, [render_prompt(lm, q)[0] for q in CALIBRATION], max_tokens=40)
            out.print(Text(f"budget router calibrated on {len(CALIBRATION)} other prompts in "
                           f"{time.perf_counter() - t1:.1f} s (not counted below)", style="dim"))
        exact = routed.cloud.bind(lm.vocab_fingerprint)
        served = "Qwen2.5-Coder-1.5B-Instruct" if cloud_folder is None else str(cloud_folder)
        out.print(Text(f"local: {lm.name}   cloud: {served} @ {cloud.api_base} "
                       f"({'same tokenizer: spans are token ids' if exact else 'spans are text'})   "
                       f"router: {routed.router.describe()}", style="dim"))
        out.print(Text(f"{len(questions)} CommonsenseQA validation questions (the benchmark's first {len(questions)} "
                       "after its seed-0 shuffle), then one free-form question; cloud-written tokens in magenta",
                       style="dim"))
        asks = [(prompt_text(lm, q, fmt.name), q) for q in questions] + ([(free_form, None)] if free_form else [])
        for prompt, q in asks:
            title = f"{q['question']}  [gold: {q['answerKey']}]" if q else prompt
            out.print(Text(f"\n> {title}", style="bold"))
            chat = q is None  # a graded question's prompt is already templated, with the format's prefill
            routed.prewarm(prompt, chat=chat)  # the stand-in reads the question while the local model answers
            local_text, local = _stream(out, "local only", alone.stream(prompt, chat=chat), colour=False)
            routed_text, final = _stream(out, "routed", routed.stream(prompt, chat=chat), colour=True)
            s = final.stats
            verdict = ""
            if q is not None:
                was, now = (fmt.extract(text, q) == q["answerKey"] for text in (local_text, routed_text))
                t.graded += 1
                t.up += now and not was
                t.down += was and not now
                verdict = f"local {'right' if was else 'wrong'}, routed {'right' if now else 'wrong'}; "
            out.print(Text(f"{'':<11}{verdict}{s.cloud_tokens} of {s.total_tokens} tokens from the cloud, "
                           f"{s.cloud_calls} calls ({s.cloud_failures} failed), {s.time_total_s:.1f} s "
                           f"(alone: {local.stats.time_total_s:.1f} s)", style="dim"))
            t.tokens += s.total_tokens
            t.cloud_tokens += s.cloud_tokens
            t.calls += s.cloud_calls
            t.spare += s.cloud_spare_tokens
            t.failures += s.cloud_failures
            t.cloud_in += s.cloud_input_tokens
            t.cloud_out += s.cloud_output_tokens
            t.time_s += s.time_total_s
            t.local_time_s += local.stats.time_total_s
            t.cloud_only_in += s.prompt_tokens
            t.cloud_only_out += s.total_tokens
        _summary(out, t, len(asks))
        if serve_port is not None:
            serve_page(out, routed, port=serve_port)
    return t


def _summary(out, t: Tally, n_prompts: int) -> None:
    from rich.text import Text

    share = t.cloud_tokens / t.tokens if t.tokens else 0.0
    out.print(Text(
        f"\nrouting changed {t.up + t.down} of {t.graded} graded answers ({t.up} wrong->right, {t.down} "
        f"right->wrong); routed {share:.1%} of {t.tokens} tokens in {t.calls} cloud calls ({t.failures} failed, "
        f"{t.spare} tokens from their spares); "
        f"cloud tokens in/out {t.cloud_in}/{t.cloud_out}, against ~{t.cloud_only_in}/{t.cloud_only_out} for "
        f"cloud-only answers (+{n_prompts} prewarm calls); {t.time_s:.1f} s routed against {t.local_time_s:.1f} s "
        "local only", style="bold"))
