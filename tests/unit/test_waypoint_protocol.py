"""Which protocol the waypoint speaks: declared by the Service port, else sniffed."""

from __future__ import annotations

import pytest

from mesh.model import ServicePort
from waypoint.protocol import H2_PREFACE, declared, sniff


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("", "", None),
        ("web", "", None),
        ("http", "", "http"),
        ("http-web", "", "http"),
        ("HTTP-web", "", "http"),
        ("httpbin", "", None),  # a prefix counts only before a dash
        ("http2", "", "http2"),
        ("http2-api", "", "http2"),
        ("grpc", "", "grpc"),
        ("grpc-api", "", "grpc"),
        ("grpc-web", "", "http"),
        ("tcp-db", "", "tcp"),
        ("https", "", "tcp"),
        ("tls-x", "", "tcp"),
        ("http", "tcp", "tcp"),  # appProtocol wins over the name
        ("tcp", "http", "http"),
        ("", "kubernetes.io/h2c", "http2"),
        ("", "grpc", "grpc"),
        ("", "HTTP", "http"),
        ("", "example.com/custom", "tcp"),  # unknown: opaque bytes
    ],
)
def test_declared_follows_istio(name: str, app_protocol: str, expected: str | None) -> None:
    port = ServicePort(80, 8080, name=name, app_protocol=app_protocol)
    assert declared(port) == expected


def test_no_port_must_be_sniffed() -> None:
    assert declared(None) is None


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"", None),
        (b"GE", None),
        (b"GET ", "http1"),
        (b"GET / HTTP/1.1\r\n", "http1"),
        (b"M-SEARCH * HTTP/1.1", "http1"),
        (b"PR", None),  # could be the HTTP/2 preface or a PROPFIND
        (b"PRI * HTTP/2.0\r\n", None),
        (H2_PREFACE, "h2"),
        (H2_PREFACE + b"\x00\x00", "h2"),
        (b"PROPFIND /x HTTP/1.1", "http1"),
        (b"\x16\x03\x01\x02\x00", "tcp"),  # a TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n", "tcp"),
        (b"HELO mail.example\r\n", "tcp"),
        (b"get / HTTP/1.1", "tcp"),  # methods are case-sensitive
        (b"*1\r\n$4\r\nPING\r\n", "tcp"),  # redis
        (b"A" * 40, "tcp"),  # no space where a method would end
    ],
)
def test_sniff(first: bytes, expected: str | None) -> None:
    assert sniff(first) == expected
