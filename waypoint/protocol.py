"""Which protocol a waypoint speaks on a connection, decided as Istio decides it.

First what the Service port declares (:func:`declared`): its ``appProtocol``, else its
name (``http``, ``http-web``, ``grpc-api``...: Istio's prefix rule). A port that
declares nothing is sniffed (:func:`sniff`): the first bytes are an HTTP/1.x request
line, the HTTP/2 connection preface, or anything else (relayed as TCP). Pure.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

from mesh.model import ServicePort

Declared: TypeAlias = Literal["http", "http2", "grpc", "tcp"]
Sniffed: TypeAlias = Literal["http1", "h2", "tcp"]

H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Enough to tell: the longest method token plus a space, or the whole preface.
SNIFF_BYTES: Final = len(H2_PREFACE)

_APP_PROTOCOLS: Final[dict[str, Declared]] = {
    "http": "http",
    "http2": "http2",
    "h2c": "http2",
    "kubernetes.io/h2c": "http2",
    "grpc": "grpc",
    "grpc-web": "http",
    "tcp": "tcp",
    "tls": "tcp",
    "https": "tcp",  # TLS from the app: the waypoint cannot read it
    "kubernetes.io/ws": "http",
    "kubernetes.io/wss": "tcp",
    "mongo": "tcp",
    "mysql": "tcp",
    "redis": "tcp",
}
_NAME_PREFIXES: Final[tuple[tuple[str, Declared], ...]] = (
    ("http2", "http2"),
    ("grpc-web", "http"),
    ("grpc", "grpc"),
    ("http", "http"),
    ("tcp", "tcp"),
    ("https", "tcp"),
    ("tls", "tcp"),
)
# An HTTP/1.x request line begins with a method and a space. Only methods HTTP defines
# count (RFC 9110, 5789, WebDAV, as Envoy's HTTP inspector): "SSH-2.0-x " is no request.
METHODS: Final = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY"
    b" MOVE LOCK UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE"
    b" UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
_LONGEST: Final = max(len(m) for m in METHODS)


def declared(port: ServicePort | None) -> Declared | None:
    """The protocol ``port`` declares, or None when it must be sniffed."""
    if port is None:
        return None
    app = port.app_protocol.lower()
    if app:
        return _APP_PROTOCOLS.get(app, "tcp")  # an unknown appProtocol is opaque bytes
    name = port.name.lower()
    for prefix, protocol in _NAME_PREFIXES:
        if name == prefix or name.startswith(prefix + "-"):
            return protocol
    return None


def sniff(first: bytes) -> Sniffed | None:
    """What ``first`` (the first bytes a client sent) begins; None while it cannot tell
    yet (fewer than :data:`SNIFF_BYTES` bytes that could still be either)."""
    if H2_PREFACE.startswith(first[: len(H2_PREFACE)]):
        if len(first) >= len(H2_PREFACE):
            return "h2"
        return None
    method, space, _ = first[: _LONGEST + 1].partition(b" ")
    if space:
        return "http1" if method in METHODS else "tcp"
    if len(first) > _LONGEST or not any(m.startswith(first) for m in METHODS):
        return "tcp"
    return None
