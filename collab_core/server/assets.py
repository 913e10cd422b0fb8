"""The page's files (``static/``, package data): plain HTML, CSS and JavaScript, no build step.

``tokenview.js`` and ``tokenview.css`` are the one token renderer: the page streams into it, and
``collab run --html`` inlines the same two files into a self-contained page (``tokenview.py``).
"""

from __future__ import annotations

from importlib import resources

PAGE_ASSETS = ("index.html", "page.js", "tokenview.js", "tokenview.css")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}


def read(name: str) -> str:
    """The text of one of ``PAGE_ASSETS``."""
    if name not in PAGE_ASSETS:
        raise KeyError(name)
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


def media_type(name: str) -> str:
    return _TYPES[name[name.rfind("."):]]
