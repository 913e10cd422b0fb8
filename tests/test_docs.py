"""The docs are tested: the site builds with ``mkdocs build --strict`` (a broken link, a missing page or heading, an
API reference that names nothing fails), and every code snippet of the README and the docs pages either runs here or
says why not.

Snippet markers, an HTML comment on the line before the fence:

* none -- a Python block runs, in order with the page's other blocks, in one namespace per page (on the bundled
  SmolLM2 and, where it routes, the fake cloud on loopback);
* ``<!-- needs-key -->`` (or ``<!-- needs-key: why -->``) -- a Python block that needs a provider's key or a running
  service: it is compiled and its imports are run, so a renamed module or class still fails;
* ``<!-- needs-key: run-with-fake-cloud -->`` -- written for a real provider, run here against the fake cloud: the
  test swaps its model string (``cloud=`` / ``cloud_model=``) for the fake cloud on loopback, and runs it;
* ``<!-- not-parsed: why -->`` -- a shell block whose ``collab`` lines are not parsed (flags that are landing).

Every ``collab ...`` line in a shell block is parsed by the CLI's own parser; YAML blocks are loaded.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# the pages (the benchmark's own tables that live beside them, docs/csqa_*.md, are data: not in the nav)
PAGES = [ROOT / "README.md"] + sorted(p for p in DOCS.glob("*.md") if not p.name.startswith("csqa_"))
MARKERS = ("needs-key", "needs-key: run-with-fake-cloud", "not-parsed")
FAKE_MODEL = "text-completion-openai/fake"


@dataclass
class Snippet:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # the HTML comment before the fence, without <!-- -->

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """The marker's kind: ``needs-key``, ``needs-key: run-with-fake-cloud``, ``not-parsed``, or None."""
        if self.marker is None:
            return None
        if self.marker == "needs-key: run-with-fake-cloud":
            return self.marker
        return self.marker.split(":")[0].strip()


def snippets(page: Path) -> list[Snippet]:
    lines = page.read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        c = re.match(r"^<!--\s*(.*?)\s*-->$", lines[k].strip()) if k >= 0 else None
        out.append(Snippet(page, start + 1, lang, "\n".join(lines[start + 1:j]), c.group(1) if c else None))
        i = j + 1
    return out


ALL = [s for p in PAGES for s in snippets(p)]


def test_the_snippets_are_found_and_every_marker_is_known():
    assert len(ALL) > 40
    assert {s.lang for s in ALL} >= {"python", "sh", "yaml"}
    assert len([s for s in ALL if s.lang == "python" and s.kind is None]) >= 15  # most of them run
    unknown = [(s.where, s.marker) for s in ALL if s.marker is not None and s.kind not in MARKERS]
    assert unknown == []
    misplaced = [s.where for s in ALL if s.kind == "not-parsed" and s.lang != "sh"]
    assert misplaced == []
    unfenced = [s.where for s in ALL if not s.lang]  # a block without a language is neither run nor checked
    assert unfenced == [], "give these blocks a language (text for output)"


def test_the_parser_reads_a_marker_and_a_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("x\n\n<!-- needs-key -->\n\n```python\nimport os\n```\n\n```sh\ncollab run hi\n```\n")
    a, b = snippets(page)
    assert (a.lang, a.code, a.kind, a.line) == ("python", "import os", "needs-key", 5)
    assert (b.lang, b.code, b.kind) == ("sh", "collab run hi", None)


# -- the site -------------------------------------------------------------------------------------------------------
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(site)], cwd=ROOT, capture_output=True, text=True,
                       env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    reference = (site / "reference" / "index.html").read_text()
    for ident in ("collab_core.Engine", "collab_core.Engine.stream", "collab_core.EngineSettings",
                  "collab_core.GenerationStats", "langchain_collab.CollabLLM", "llamaindex_collab.CollabLLM"):
        assert f'id="{ident}"' in reference, ident  # mkdocstrings read the docstrings
    for page in ("getting-started", "concepts", "langchain", "llamaindex", "tools", "serving", "cloud", "training",
                 "results", "development"):
        assert (site / page / "index.html").exists(), page


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The check above would pass on a site with no link checks at all: show that a dead link fails it."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md) and [a heading](#nowhere).\n")
    cfg = (ROOT / "mkdocs.yml").read_text()
    cfg = re.sub(r"(?ms)^nav:.*?(?=^\S)", "", cfg)  # no nav: the one page
    cfg = re.sub(r"(?ms)^  - mkdocstrings:.*", "", cfg)  # no API reference needed here
    (tmp_path / "mkdocs.yml").write_text(cfg)
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "missing.md" in r.stderr and "#nowhere" in r.stderr


# -- Python snippets ---------------------------------------------------------------------------------------------------
def _imports_only(code: str) -> str:
    tree = ast.parse(code)
    return ast.unparse([n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)])


def _with_fake_cloud(code: str) -> str:
    swapped, n = re.subn(r'\b(cloud|cloud_model)="[^"]+"', rf'\1="{FAKE_MODEL}", api_base=__fake_cloud_url__', code)
    assert n >= 1, "a run-with-fake-cloud block names no cloud model string"
    return swapped


@pytest.mark.parametrize("snippet", [s for s in ALL if s.lang == "python" and s.kind == "needs-key"],
                         ids=lambda s: s.where)
def test_needs_key_snippets_compile_and_their_imports_run(snippet):
    compile(snippet.code, snippet.where, "exec")
    exec(compile(_imports_only(snippet.code), snippet.where, "exec"), {})


RUN_PAGES = sorted({s.page for s in ALL if s.lang == "python" and s.kind in (None, "needs-key: run-with-fake-cloud")})


@pytest.fixture
def llamaindex_settings_restored():
    from llama_index.core import Settings

    saved = (Settings._llm, Settings._embed_model)
    yield
    Settings._llm, Settings._embed_model = saved


@pytest.mark.smollm
@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(page, smollm, tmp_path, monkeypatch, llamaindex_settings_restored):
    """Every runnable block of the page, in order, in one namespace (a later block may use an earlier one's names)."""
    from collab_core.devtools.fakecloud import FakeCloud

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLLAB_LOCAL_MODEL", "smollm2-135m")  # the default model's code path, on the fast model
    blocks = [s for s in snippets(page) if s.lang == "python" and s.kind in (None, "needs-key: run-with-fake-cloud")]
    ns: dict = {"__name__": "__snippet__"}
    with FakeCloud(reply=" blue") as fake:
        for s in blocks:
            code = s.code
            if s.kind == "needs-key: run-with-fake-cloud":
                code = _with_fake_cloud(code)
                ns["__fake_cloud_url__"] = fake.url
            try:
                exec(compile(code, s.where, "exec"), ns)
            except Exception as e:  # pragma: no cover - the failure message names the block
                raise AssertionError(f"the snippet at {s.where} failed: {e!r}") from e
    if any(s.kind == "needs-key: run-with-fake-cloud" for s in blocks):
        # the swapped model string was honoured: the page's engines and models route to the fake cloud
        names = [getattr(v, "model_name", None) for v in ns.values()]
        assert any(isinstance(n, str) and n.endswith("+" + FAKE_MODEL) for n in names), names


def test_the_fake_cloud_swap_keeps_the_rest_of_the_code():
    code = 'llm = CollabLLM(cloud_model="gpt-4o-mini", budget=0.07)\ne = Engine(cloud="anthropic/x", budget=0.1)'
    assert _with_fake_cloud(code) == (
        f'llm = CollabLLM(cloud_model="{FAKE_MODEL}", api_base=__fake_cloud_url__, budget=0.07)\n'
        f'e = Engine(cloud="{FAKE_MODEL}", api_base=__fake_cloud_url__, budget=0.1)')
    with pytest.raises(AssertionError):
        _with_fake_cloud("Engine()")


# -- shell and YAML snippets -------------------------------------------------------------------------------------------
def _commands(code: str) -> list[list[str]]:
    """The ``collab`` command lines of a shell block, as argument lists (comments, continuations and ``&`` off)."""
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        args = shlex.split(line, comments=True)
        if args and args[-1] == "&":
            args = args[:-1]
        if args and args[0] == "collab":
            out.append(args[1:])
    return out


CLI_LINES = [(s, args) for s in ALL if s.lang == "sh" and s.kind != "not-parsed" for args in _commands(s.code)]


def test_collab_lines_are_found():
    assert len(CLI_LINES) >= 15
    assert {args[0] for _, args in CLI_LINES} >= {"run", "serve", "standin", "router", "blas", "prepare"}


@pytest.mark.parametrize("snippet,args", CLI_LINES, ids=[f"{s.where}:{' '.join(a)[:40]}" for s, a in CLI_LINES])
def test_collab_command_lines_parse(snippet, args):
    from collab_core.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        raise AssertionError(f"{snippet.where}: `collab {' '.join(args)}` does not parse") from e


@pytest.mark.parametrize("snippet", [s for s in ALL if s.lang == "yaml"], ids=lambda s: s.where)
def test_yaml_snippets_load(snippet):
    import yaml

    assert isinstance(yaml.safe_load(snippet.code), dict)
