"""asyncio stays in one module: only k8s/sources/kubernetes.py imports kubernetes-asyncio,
trio-asyncio, aiohttp or asyncio; the rest of ambit is Trio."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ambit", "mesh", "ca", "ztunnel", "waypoint", "k8s")
ASYNCIO_WORLD = ("kubernetes_asyncio", "trio_asyncio", "aiohttp", "asyncio")
THE_ONE = Path("k8s/sources/kubernetes.py")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_kubernetes_source_imports_the_asyncio_world() -> None:
    importers = {
        path.relative_to(REPO)
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if imported(path) & set(ASYNCIO_WORLD)
    }
    assert importers == {THE_ONE}
