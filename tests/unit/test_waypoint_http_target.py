"""How the waypoint reads a request target: what routes, policy and the app all see."""

from __future__ import annotations

import pytest

from waypoint.http_target import TargetError, host_is_valid, read_target


@pytest.mark.parametrize(
    ("target", "path", "authority"),
    [
        (b"/a/b?x=/../y", b"/a/b?x=/../y", None),  # the query is left as sent
        (b"/a/./b/../c", b"/a/c", None),
        (b"/a/%2e%2E/admin", b"/admin", None),  # encoded dots are dots
        (b"/../../etc", b"/etc", None),
        (b"/a/..", b"/", None),
        (b"/%41%7e%2f%3f", b"/A~%2F%3F", None),  # unreserved decoded, the rest upper-cased
        (b"//admin", b"//admin", None),  # BASE keeps double slashes
        (b"/a#frag", b"/a", None),
        (b"http://Shop.example:8080/a/../b?q", b"/b?q", b"Shop.example:8080"),
        (b"HTTP://x?q=1", b"/?q=1", b"x"),
        (b"*", b"*", None),
    ],
)
def test_targets_are_read_as_paths(target: bytes, path: bytes, authority: bytes | None) -> None:
    method = b"OPTIONS" if target == b"*" else b"GET"
    assert read_target(method, target) == (path, authority)


@pytest.mark.parametrize(
    ("method", "target"),
    [(b"GET", b"*"), (b"GET", b"web:80"), (b"GET", b"http://u@evil/"), (b"GET", b"ftp://x/")],
)
def test_other_targets_are_refused(method: bytes, target: bytes) -> None:
    with pytest.raises(TargetError):
        read_target(method, target)


def test_hosts() -> None:
    assert host_is_valid(b"web.default.svc:80")
    assert host_is_valid(b"[fd00::1]:8080")
    assert not host_is_valid(b"a/b")
    assert not host_is_valid(b"a b")
    assert not host_is_valid(b"")
