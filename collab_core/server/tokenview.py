"""One generation's token view as a single self-contained HTML file (``collab run --html out.html``).

The page at ``/`` and this file draw tokens with the same code: ``static/tokenview.js`` and ``tokenview.css``,
inlined here with the generation's record (``Generation.as_dict()``, the shape ``collab run --json`` prints) as
JSON. The file loads nothing from anywhere; without JavaScript it still shows the answer's plain text.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from . import assets


def _script_json(obj: Any) -> str:
    """JSON that cannot end the ``<script>`` element it sits in."""
    return json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")


def render_html(record: dict[str, Any], *, prompt: str = "", title: str = "collab-decoding") -> str:
    """The page for ``record`` (``Generation.as_dict()``): the prompt, the answer with the cloud's tokens
    highlighted (hover: confidence and score), and the stats line."""
    model = record.get("model") or ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
{assets.read("tokenview.css")}
</style>
</head>
<body>
<main class="tv-file">
<h1>{html.escape(title)}{" · " + html.escape(model) if model else ""}</h1>
<p class="tv-prompt">{html.escape(prompt)}</p>
<p class="tv-legend"><span class="tok cloud">highlighted</span> tokens were written by the cloud model; hover any
token for its confidence and routing score.</p>
<div id="answer" class="tv-answer"><noscript>{html.escape(record.get("text", ""))}</noscript></div>
<p id="stats" class="tv-stats"></p>
</main>
<script>
{assets.read("tokenview.js")}
</script>
<script id="tv-data" type="application/json">{_script_json(record)}</script>
<script>
CollabTokenView.render(document.getElementById("answer"), document.getElementById("stats"),
                       JSON.parse(document.getElementById("tv-data").textContent));
</script>
</body>
</html>
"""


def write_html(path: str | Path, record: dict[str, Any], *, prompt: str = "") -> Path:
    path = Path(path)
    path.write_text(render_html(record, prompt=prompt), encoding="utf-8")
    return path
