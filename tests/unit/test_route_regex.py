"""The routes' regular-expression dialect: Python's re restricted to what RE2 also reads,
without backreferences, lookaround or nested unbounded repetition, bounded in length."""

from __future__ import annotations

import pytest

from mesh.route_regex import MAX_PATTERN, RouteRegexError, compile_pattern, pattern_problem

ACCEPTED = [
    r"/v[0-9]+/.*",
    r"/api/(users|orders)/\d{1,8}",
    r"(ab)+",
    r"(a+){2}",
    r"a{3}",
    r"x{",  # a literal brace
    r"(?i)abc",
    r"(?P<id>[a-z]+)-\d*",
    r"[(]*[)+]+",  # brackets and quantifiers inside a class are literals
    r"\(a+\)+",  # escaped parentheses are literals
    r"[a-z]*(foo)+",
]
REFUSED = [
    (r"(a+)+", "nested unbounded repetition"),
    (r"(a*)*b", "nested unbounded repetition"),
    (r"(?:x|y+)*", "nested unbounded repetition"),
    (r"((a+){2})*", "nested unbounded repetition"),
    (r"(a{2,})+", "nested unbounded repetition"),
    (r"(a)\1", "backreference"),
    (r"(?P<x>a)(?P=x)", "backreference"),
    (r"foo(?=bar)", "lookahead"),
    (r"(?<!a)b", "lookbehind"),
    (r"(?>a+)b", "atomic group"),
    (r"a++", "possessive quantifier"),
    (r"(a)(?(1)b|c)", "conditional"),
    (r"(", "invalid regular expression"),
    (r"[z-a]", "invalid regular expression"),
    ("a" * (MAX_PATTERN + 1), f"longer than {MAX_PATTERN}"),
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_patterns_in_the_dialect_compile(pattern: str) -> None:
    assert pattern_problem(pattern) is None
    assert compile_pattern(pattern).pattern == pattern


@pytest.mark.parametrize(("pattern", "why"), REFUSED, ids=[r[1] for r in REFUSED])
def test_patterns_outside_the_dialect_are_refused_with_a_reason(pattern: str, why: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None
    assert why in problem
    with pytest.raises(RouteRegexError, match=why):
        compile_pattern(pattern)


def test_a_pattern_at_the_length_bound_is_accepted() -> None:
    assert pattern_problem("a" * MAX_PATTERN) is None
