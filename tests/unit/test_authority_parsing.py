"""HBONE's CONNECT authority read strictly: one spelling per address and port, so a
peer cannot reach a port by a form that policy evaluation does not see."""

from __future__ import annotations

import pytest

from mesh.hbone.request import parse_authority


@pytest.mark.parametrize(
    ("authority", "parsed"),
    [
        ("10.244.1.7:8080", ("10.244.1.7", 8080)),
        ("10.244.1.7:1", ("10.244.1.7", 1)),
        ("10.244.1.7:65535", ("10.244.1.7", 65535)),
        ("[fd00::7]:443", ("fd00::7", 443)),
        ("[fd00:0:0::7]:443", ("fd00::7", 443)),  # one form: compressed
    ],
)
def test_good_authorities(authority: str, parsed: tuple[str, int]) -> None:
    assert parse_authority(authority) == parsed


@pytest.mark.parametrize(
    "authority",
    [
        "10.244.1.7:\uff18\uff10\uff18\uff10",  # full-width digits: int() reads 8080
        "10.244.1.7:08080",  # a leading zero
        "10.244.1.7:0",
        "10.244.1.7:65536",
        "10.244.1.7:+80",
        "10.244.1.7: 80",
        "10.244.1.7:",
        "10.244.1.7",
        "web.shop:80",  # a name, not an IP
        "010.244.1.7:80",  # an octet with a leading zero
        "fd00::7:443",  # IPv6 without brackets
        "[10.244.1.7]:80",  # IPv4 in brackets
        "[fe80::1%eth0]:80",  # a zone
        "[fd00::7]",
        ":80",
        "",
    ],
)
def test_bad_authorities_are_refused(authority: str) -> None:
    with pytest.raises(ValueError, match=":authority"):
        parse_authority(authority)
