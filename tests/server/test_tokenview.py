"""``collab run --html``: one self-contained file, drawn by the page's own renderer."""

from __future__ import annotations

import json
import re

from collab_core.cli import main
from collab_core.server import assets
from collab_core.server.tokenview import render_html

RECORD = {"text": "Hi </script><b>x</b>!", "finish_reason": "length", "model": "m",
          "tokens": [{"token": 1, "text": "Hi", "source": "local", "confidence": 0.9, "score": 0.1},
                     {"token": 2, "text": " </script><b>x</b>", "source": "cloud"}],
          "stats": {"total_tokens": 2, "cloud_tokens": 1, "routed_share": 0.5, "cloud_calls": 1, "cost_usd": 0,
                    "time_total_s": 0.2}}


def data_of(page: str) -> dict:
    found = re.search(r'<script id="tv-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_the_file_carries_the_record_and_the_pages_renderer_and_loads_nothing():
    page = render_html(RECORD, prompt="Say <hi>")
    assert data_of(page) == RECORD  # the token text cannot close the script element early
    assert assets.read("tokenview.js") in page and assets.read("tokenview.css") in page
    assert not re.search(r"\b(src|href)=", page)  # nothing fetched from anywhere
    assert "Say &lt;hi&gt;" in page and "<noscript>Hi &lt;/script&gt;&lt;b&gt;x&lt;/b&gt;!</noscript>" in page


def test_collab_run_html_writes_the_answer_it_printed(tiny_dir, tmp_path, capsys):
    out = tmp_path / "view.html"
    assert main(["run", "The capital of France is", "--local-model", str(tiny_dir), "--max-tokens", "8", "--json",
                 "--html", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = data_of(out.read_text())
    assert record["text"] == printed["text"] and record["tokens"] == printed["tokens"]
    assert len(record["tokens"]) == 8 and record["stats"]["total_tokens"] == 8
    plain = tmp_path / "plain.html"
    assert main(["run", "The capital of France is", "--local-model", str(tiny_dir), "--max-tokens", "8",
                 "--html", str(plain)]) == 0
    assert capsys.readouterr().out.startswith(printed["text"])
    assert data_of(plain.read_text())["text"] == printed["text"]
