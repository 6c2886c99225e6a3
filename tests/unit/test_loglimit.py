"""LogLimiter: the first line of a kind at once, the rest counted and reported once."""

from __future__ import annotations

from mesh.loglimit import LogLimiter


def test_first_line_at_once_then_counted_until_the_window_ends() -> None:
    limiter = LogLimiter(window=10.0)
    assert limiter.admit("no_client_cert", 0.0, src="a") == {"src": "a"}
    assert all(limiter.admit("no_client_cert", 1.0 + i / 100, src=f"b{i}") is None
               for i in range(99))  # fmt: skip
    assert limiter.admit("bad_trust_domain", 2.0, src="c") == {"src": "c"}  # another rule
    assert limiter.due(9.9) == []
    assert limiter.due(10.0) == [("no_client_cert", 99, {"src": "b98"})]
    assert limiter.due(20.0) == []  # reported once; the other rule held nothing back
    assert limiter.admit("no_client_cert", 20.0, src="d") == {"src": "d"}


def test_the_next_line_after_the_window_carries_the_count() -> None:
    limiter = LogLimiter(window=10.0)
    limiter.admit("timeout", 0.0)
    limiter.admit("timeout", 5.0)
    limiter.admit("timeout", 6.0)
    assert limiter.admit("timeout", 12.0, src="e") == {"src": "e", "suppressed": 2}
    assert limiter.due(30.0) == []  # already counted in that line
