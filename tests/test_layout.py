"""The structure stays as documented: no import cycles in collab_core, the runtime never imports the offline
packages, the core knows nothing of LangChain or LlamaIndex, and the layout table of the docs (docs/development.md)
names every package and module of the tree, read at test time, and nothing that is not there."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "collab_core"
OFFLINE = ("collab_core.training", "collab_core.devtools")
ENTRY_POINTS = ("collab_core.cli",)  # commands (the package and its modules) may reach the offline packages


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        anchor = parts if is_pkg else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    # `from . import x` and `from .pkg import mod` may name submodules
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Every collab_core module -> the collab_core modules it imports (at any depth in the file)."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _resolve(mod, path.name == "__init__.py", node)
            else:
                continue
            deps |= {n for n in names if n in files and n != mod}
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _edges_ignoring_package_inits(graph):
    """A package's ``__init__`` re-exporting its modules is not a cycle of the modules it re-exports."""
    return {m: {d for d in deps if not (m.startswith(d + ".") and d in graph)} for m, deps in graph.items()}


def test_the_graph_sees_the_imports():
    g = import_graph()
    assert "collab_core.training.csqa_data" in g["collab_core.cli.train"]  # an entry point's module
    assert "collab_core.engine.run" in g["collab_core.engine.core"]
    assert "collab_core.cloud.client" in g["collab_core.cloud.cache"]
    assert "collab_core.errors" in g["collab_core.local.loading"]  # a relative import two levels up


def test_no_import_cycles():
    assert _cycles(_edges_ignoring_package_inits(import_graph())) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _is_entry_point(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENTRY_POINTS)


def test_the_runtime_never_imports_the_offline_packages():
    g = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith(OFFLINE))
                 for m, deps in g.items() if not m.startswith(OFFLINE) and not _is_entry_point(m)}
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize("framework", ["langchain", "llama_index", "langchain_collab", "llamaindex_collab"])
def test_the_core_knows_no_framework(framework):
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == framework for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != framework, path


# -- the layout table of the docs ------------------------------------------------------------------------------------
ROOT = PKG.parent
LAYOUT_PAGE = ROOT / "docs" / "development.md"
CODE_DIRS = ("collab_core", "langchain_collab", "llamaindex_collab", "benchmarks", "examples")
DATA_DIRS = ("collab_core/routers/", "collab_core/server/static/")  # package data, named as folders


def layout_rows() -> dict[str, str]:
    """The layout table's rows: the backticked path of the first column -> the description."""
    text = LAYOUT_PAGE.read_text()
    section = text[text.index("## Layout"):]
    rows = {}
    for line in section.split("\n"):
        m = re.match(r"^\| `([^`]+)` \| (.+) \|$", line.strip())
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def tree_entries() -> set[str]:
    """What the table must name, read from the tree now: every module (``.py``) and package (``dir/``) under the
    code folders, the package-data folders, and every top-level folder git tracks."""
    want: set[str] = set(DATA_DIRS)
    for top in CODE_DIRS:
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(ROOT)
            want.add(str(rel))
            for parent in rel.parents:
                if str(parent) != ".":
                    want.add(f"{parent}/")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    want |= {f"{line.split('/')[0]}/" for line in tracked.split("\n") if "/" in line and not line.startswith(".")}
    return want


def test_the_layout_table_is_found():
    rows = layout_rows()
    assert len(rows) > 60 and rows["collab_core/engine/core.py"].startswith("`Engine`")
    assert all(len(d) > 10 for d in rows.values()), "every row says what it holds"


def test_the_layout_table_names_every_package_and_module():
    missing = sorted(tree_entries() - set(layout_rows()))
    assert missing == [], f"add rows to the layout table in {LAYOUT_PAGE.relative_to(ROOT)}: {missing}"


def test_the_layout_table_names_nothing_that_is_gone():
    gone = sorted(p for p in layout_rows() if not (ROOT / p.rstrip("/")).exists())
    assert gone == [], f"rows for paths that no longer exist in {LAYOUT_PAGE.relative_to(ROOT)}: {gone}"


def test_the_tree_reader_sees_modules_packages_and_folders():
    want = tree_entries()
    assert {"collab_core/", "collab_core/cloud/", "collab_core/cloud/client.py", "langchain_collab/chat_models.py",
            "benchmarks/csqa.py", "examples/", "tests/", "docs/"} <= want
    assert not any("__pycache__" in w for w in want)
