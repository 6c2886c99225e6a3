"""``ambit why``'s answer in plain words, one step per paragraph, in the order the proxies
take them; ``-o json`` is :meth:`~explain.steps.Explanation.to_json`."""

from __future__ import annotations

from explain.steps import Explanation, Verdict


def verdict_words(v: Verdict) -> str:
    head = "ALLOWED" if v.allowed else "REFUSED"
    if v.status is not None:
        head += f": {v.status}"
    if v.flag != "-":
        head += f" (response flag {v.flag})"
    return f"{head}: {v.summary}"


def render(e: Explanation) -> str:
    lines = [f"{e.source} -> {e.destination}"]
    if e.request is not None:
        r = e.request
        extra = "".join(f", {name}: {value}" for name, value in r["headers"])
        lines.append(f"request: {r['method']} {r['path']}, host {r['host']}{extra}")
    else:
        lines.append("connection: plain TCP")
    lines.append("")
    for n, step in enumerate(e.steps, start=1):
        lines.append(f"{n}. {step.at}: {step.what}: {step.outcome}")
        lines.append(f"   {step.detail}")
        for check in step.checks:
            mark = "matched" if check.matched else "no match"
            lines.append(f"     - {check.name}: {mark}: {check.words}")
        for other in step.shadowed:
            lines.append(f"       also matches, ranks after: {other.words()}")
    lines.append("")
    lines.append("verdict: " + verdict_words(e.verdict))
    for note in e.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
