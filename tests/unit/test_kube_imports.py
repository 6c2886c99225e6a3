"""asyncio stays in one module: only k8s/sources/kubernetes.py imports kubernetes-asyncio,
trio-asyncio, aiohttp or asyncio; the rest of ambit is Trio."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ambit", "mesh", "ca", "ztunnel", "waypoint", "k8s", "node", "explain")
ASYNCIO_WORLD = ("kubernetes_asyncio", "trio_asyncio", "aiohttp", "asyncio")
THE_ONE = Path("k8s/sources/kubernetes.py")


_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\b|import\s+([\w., ]+))", re.M)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    text = path.read_text()
    try:
        tree = ast.parse(text, str(path))
    except SystemError:  # CPython 3.11's "AST constructor recursion depth mismatch"
        return _imported_by_lines(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _imported_by_lines(text: str) -> set[str]:
    """The top-level modules of ``import x`` and ``from x import`` lines (absolute ones),
    read line by line: what the ast walk finds, when ast.parse fails on a CPython bug."""
    names: set[str] = set()
    for found in _IMPORT.finditer(text):
        if found.group(1):
            names.add(found.group(1).split(".")[0])
        else:
            names.update(part.strip().split(".")[0] for part in found.group(2).split(","))
    return names


def test_only_the_kubernetes_source_imports_the_asyncio_world() -> None:
    importers = {
        path.relative_to(REPO)
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if imported(path) & set(ASYNCIO_WORLD)
    }
    assert importers == {THE_ONE}


def test_the_line_reading_finds_what_the_ast_walk_finds() -> None:
    path = REPO / "k8s/sources/kubernetes.py"
    lines = _imported_by_lines(path.read_text())
    assert imported(path) <= lines | {""}
    assert {"aiohttp", "asyncio", "trio_asyncio", "kubernetes_asyncio"} <= lines
