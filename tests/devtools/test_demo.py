"""The demo end to end on a tiny model pair: a real stand-in server (serving the tiny model) and the same tiny
model local, so the token-exact path runs against a real mlx_lm server."""

from __future__ import annotations

import io
import re

from rich.console import Console

from collab_core.devtools.demo import run_demo


def test_the_demo_prints_local_and_routed_answers_and_a_summary(tiny_dir):
    buf = io.StringIO()
    tally = run_demo(Console(file=buf, width=200, highlight=False), local_model=str(tiny_dir), max_tokens=12,
                     questions=["The capital of France is", "Name a colour."], cloud_folder=str(tiny_dir),
                     router="threshold:0.0")  # every position goes to the cloud
    text = buf.getvalue()
    assert "stand-in cloud warmed up in" in text
    assert text.count("local only ") == 2 and text.count("routed ") >= 2
    assert "(same tokenizer: spans are token ids)" in text
    assert tally.failures == 0 and tally.tokens > 0
    assert tally.calls > 0 and tally.cloud_tokens == tally.calls  # one-token spans, token for token
    summary = text.strip().splitlines()[-1]
    assert re.match(r"routed \d+\.\d% of \d+ tokens in \d+ cloud calls \(0 failed\); cloud tokens in/out \d+/\d+, "
                    r"against ~\d+/\d+ for cloud-only answers \(\+2 prewarm calls\); [\d.]+ s routed against "
                    r"[\d.]+ s local only", summary), summary
