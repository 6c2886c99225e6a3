"""The results of ``ambit check`` as an operator reads them: grouped as ``linkerd check``
groups them, a line per check (a check mark, ``!!`` for a
warning, a cross for a failure), under a non-ok
line what was found and a ``hint:``; then the summary. Or as JSON (``-o json``). Pure
functions of the results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from k8s.check.base import Result

MARKS: Final = {"ok": "\u221a", "warn": "\u203c", "fail": "\u00d7"}  # linkerd's: √ ‼ x
JSON_RESULTS: Final = {"ok": "success", "warn": "warning", "fail": "error"}
INDENT: Final = "    "


def exit_code(results: Sequence[Result]) -> int:
    """0 when nothing failed (warnings allowed), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0


def _indented(text: str, first: str = "") -> list[str]:
    lines = text.splitlines() or [""]
    out = [f"{INDENT}{first}{lines[0]}"]
    out += [f"{INDENT}{' ' * len(first)}{line}" if line else "" for line in lines[1:]]
    return out


def text(results: Sequence[Result]) -> str:
    out: list[str] = []
    group = None
    for result in results:
        if result.group != group:
            if group is not None:
                out.append("")
            group = result.group
            out += [group, "-" * len(group)]
        out.append(f"{MARKS[result.status]} {result.name}")
        if result.status != "ok":
            if result.message:
                out += _indented(result.message)
            if result.hint:
                out += _indented(result.hint, "hint: ")
    failed = sum(r.status == "fail" for r in results)
    warned = sum(r.status == "warn" for r in results)
    summary = MARKS["fail"] if failed else MARKS["ok"]
    plural = "" if len(results) == 1 else "s"
    counts = f"{len(results)} check{plural}: {failed} failed, {warned} warnings"
    out += ["", f"Status check results are {summary} ({counts})"]
    return "\n".join(out) + "\n"


def to_json(results: Sequence[Result]) -> str:
    categories: list[dict[str, object]] = []
    for result in results:
        if not categories or categories[-1]["categoryName"] != result.group:
            categories.append({"categoryName": result.group, "checks": []})
        check = {"description": result.name, "result": JSON_RESULTS[result.status]}
        if result.message:
            check["message"] = result.message
        if result.hint:
            check["hint"] = result.hint
        checks = categories[-1]["checks"]
        assert isinstance(checks, list)
        checks.append(check)
    document = {"success": exit_code(results) == 0, "categories": categories}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
