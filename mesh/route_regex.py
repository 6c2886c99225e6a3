"""The one regular-expression dialect of routes (HTTPRoute path, header and query
matches, GRPCRoute service and method matches), shared by the control plane (a route
whose pattern is refused is reported ``UnsupportedValue``) and the waypoint (which
compiles each pattern once and never accepts a route it refused).

Gateway API leaves the dialect to the implementation. Ours is Python's :mod:`re`, always
used with ``fullmatch``, restricted so that a pattern written for Envoy's RE2 means the
same here, and without the shapes that most often make a backtracking engine take
exponential time:

- at most :data:`MAX_PATTERN` characters;
- no backreferences (``\\1``, ``(?P=name)``), lookaround (``(?=``, ``(?!``, ``(?<=``,
  ``(?<!``), conditionals (``(?(``), atomic groups or possessive quantifiers: RE2 has
  none of them, and backreferences make matching exponential;
- no unbounded repetition of a group that itself repeats without bound (``(a+)+``,
  ``(a*)*``, ``(?:x|y+)*``): the classic catastrophic-backtracking shape.

Pure; no I/O.
"""

from __future__ import annotations

import re
from typing import Final

MAX_PATTERN: Final = 1024

_REFUSED_GROUPS: Final = {
    "?=": "lookahead",
    "?!": "lookahead",
    "?<=": "lookbehind",
    "?<!": "lookbehind",
    "?(": "conditional group",
    "?P=": "backreference",
    "?>": "atomic group",
}


class RouteRegexError(ValueError):
    """A pattern outside the dialect; the message says which rule it breaks."""


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, or :class:`RouteRegexError` saying why it is refused."""
    problem = pattern_problem(pattern)
    if problem is not None:
        raise RouteRegexError(problem)
    return re.compile(pattern)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is refused (a sentence naming the rule), or None if it is accepted."""
    if len(pattern) > MAX_PATTERN:
        return f"regular expression longer than {MAX_PATTERN} characters"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return _scan(pattern)


def _scan(pattern: str) -> str | None:
    """One pass over a pattern Python already compiles: the constructs the dialect refuses.

    A stack holds, per open group, whether something inside it repeats without bound; a
    group closed and then repeated without bound while it holds one is refused."""
    stack: list[bool] = [False]
    closed_unbounded = False  # the atom just before the cursor is a group with a repeat
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        atom_is_group = False
        if c == "\\":
            nxt = pattern[i + 1 : i + 2]
            if nxt.isdigit() and nxt != "0":
                return f"backreference \\{nxt} in {pattern!r}: not supported"
            i += 2
        elif c == "[":
            i = _skip_class(pattern, i)
        elif c == "(":
            for prefix, what in _REFUSED_GROUPS.items():
                if pattern.startswith(prefix, i + 1):
                    return f"{what} in {pattern!r}: not supported"
            stack.append(False)
            i += 1
        elif c == ")":
            inner = stack.pop()
            closed_unbounded = inner
            atom_is_group = True
            i += 1
            if inner:
                stack[-1] = True
        elif c in "*+?{":
            end, unbounded = _quantifier(pattern, i)
            if end is not None:
                if pattern[end : end + 1] == "+":
                    return f"possessive quantifier in {pattern!r}: not supported"
                if unbounded:
                    if closed_unbounded:
                        return (
                            f"nested unbounded repetition in {pattern!r}: a repeated group"
                            " that itself repeats can take exponential time"
                        )
                    stack[-1] = True
                i = end + (1 if pattern[end : end + 1] == "?" else 0)
            else:
                i += 1
        else:
            i += 1
        if not atom_is_group:
            closed_unbounded = False if c not in "*+?{" else closed_unbounded
    return None


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class opening at ``i``."""
    j = i + 1
    if pattern[j : j + 1] == "^":
        j += 1
    if pattern[j : j + 1] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


_BRACES: Final = re.compile(r"\{(\d*)(,?)(\d*)\}")


def _quantifier(pattern: str, i: int) -> tuple[int | None, bool]:
    """The index after the quantifier at ``i`` (None if ``{`` is a literal) and whether it
    is unbounded."""
    c = pattern[i]
    if c in "*+":
        return i + 1, True
    if c == "?":
        return i + 1, False
    m = _BRACES.match(pattern, i)
    if m is None or not (m.group(1) or m.group(3)):
        return None, False
    return m.end(), bool(m.group(2)) and not m.group(3)
