"""HTTP/1.x messages over any Trio stream, parsed by httptools (llhttp).

:class:`MessageReader` reads requests (a server's side) or responses (a client's side)
one message at a time: :meth:`~MessageReader.read_head`, then
:meth:`~MessageReader.read_body` until it returns ``b""``. Bodies are never held
whole: at most one read of the stream (:data:`READ_SIZE`) is parsed ahead of the
consumer, so a slow consumer slows the sender. Limits (head size, header count, URL
length) are checked while parsing and raise :class:`Http1Error` with the status to
answer. The ``encode_*`` functions write heads and chunks.

Header names are lowercased when read (HTTP/1.1 names are case-insensitive, as in
HTTP/2); hop-by-hop headers are the caller's to drop (:data:`HOP_BY_HOP`).

A request is checked beyond what llhttp checks, so that the waypoint, its policies and
the app all read it the same way (:mod:`waypoint.http_target` says how its target is
read): HTTP/1.0 or 1.1 only (505), exactly one valid ``Host`` in HTTP/1.1 (400), no
transfer coding but ``chunked`` (501), no CONNECT (501), a target in origin form
(normalized), absolute form (its authority becomes the ``Host``) or ``*`` for OPTIONS.
An ``Upgrade: h2c`` is ignored, as Envoy does: the connection goes on in HTTP/1.1. A
request head must be whole within :data:`HEAD_SECONDS` of its first byte (408).
Trailers of a chunked body are read and dropped, never added to the head.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn

import httptools
import trio

from waypoint.http_request import HttpRequest
from waypoint.http_target import TargetError, host_is_valid, read_target

READ_SIZE: Final = 64 * 1024
# The body of a request answered locally is read and dropped up to this much, this long,
# so that its connection goes on; a bigger or slower one closes the connection.
DRAIN_BYTES: Final = 64 * 1024
DRAIN_SECONDS: Final = 1.0
HEAD_SECONDS = 30.0  # from a request's first byte to the end of its head
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",  # re-written from the framing the proxy chooses
    }
)
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Limits:
    """What one message may hold; Envoy's defaults where Istio keeps them."""

    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # Envoy has no limit of its own on the target (the head's 60 KiB bounds it, as the
    # header list does over HTTP/2): a longer one gets 414 rather than 431.
    max_url_bytes: int = 60 * 1024


class Http1Error(Exception):
    """A message that cannot be read; ``status`` is the answer a server gives it."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MessageCut(Http1Error):
    """The connection ended in the middle of a message: no malformed request, a client (or
    app) gone; a proxy answers nobody and logs a disconnect (Envoy's ``DC``)."""


@dataclass
class Head:
    """A request head (``method``, ``target``) or a response head (``status``)."""

    version: str
    headers: Headers
    method: bytes = b""
    target: bytes = b""
    status: int = 0
    keep_alive: bool = True
    upgrade: bool = False
    chunked: bool = False
    content_length: int | None = None
    hop_by_hop: bool = True  # it may carry hop-by-hop headers (False: it has none)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head in the message's framing."""
        return self.chunked or bool(self.content_length)

    def end_to_end(self) -> Headers:
        """:func:`end_to_end` of its headers (a copy: its own list when it has no
        hop-by-hop header)."""
        return end_to_end(self.headers) if self.hop_by_hop else list(self.headers)


class MessageReader:
    """Reads HTTP/1.x messages from ``stream``: requests, or responses when ``response``."""

    def __init__(
        self,
        stream: trio.abc.ReceiveStream,
        *,
        response: bool = False,
        limits: Limits | None = None,
        initial: bytes = b"",
        default_host: bytes = b"",
    ) -> None:
        """``initial``: bytes already taken from ``stream`` (sniffed), read first;
        ``default_host``: the ``Host`` of an HTTP/1.0 request that has none."""
        self._stream = stream
        self._default_host = default_host
        self._initial = initial
        self._limits = limits or Limits()
        self._response = response
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
            httptools.HttpResponseParser(self) if response else httptools.HttpRequestParser(self)
        )
        self._events: deque[Head | bytes | None] = deque()  # head, body chunk, None = end
        # What the callbacks collect of the message being read: its target, its headers
        # (after the head: its trailers, dropped), the head's bytes so far.
        self._url = b""
        self._headers: Headers = []
        self._head_bytes = 0
        self._until_eof = False  # a response body delimited by the connection's close
        self._eof = False
        self._problem: Http1Error | None = None
        # The head asked Upgrade: h2c, which is not done: after it, a new parser goes on,
        # first fed this much to be where the old one was (in the body, if one follows).
        self._ignore_upgrade: bytes | None = None
        self._skip_head = False
        self.upgraded: bytes | None = None  # after an upgrade: the bytes past the head
        self.bytes_read = 0
        self.started = False  # the first byte of a message has arrived

    # -- the consumer's side --------------------------------------------------------

    async def read_head(self) -> Head | None:
        """The next message's head; None when the peer closed between messages. A
        request's head must be whole :data:`HEAD_SECONDS` after its first byte (408)."""
        deadline = math.inf
        while True:
            if self._events:
                event = self._events.popleft()
                if isinstance(event, Head):
                    return event
                continue  # the rest of a body nobody read: skipped
            if self._eof or self.upgraded is not None:
                if self.started:
                    raise Http1Error(400, "the connection closed in the middle of a message")
                return None
            if self.started and deadline == math.inf and not self._response:
                deadline = trio.current_time() + HEAD_SECONDS
            if deadline == math.inf:  # no head begun (or a response): no cancel scope
                await self._fill()
                continue
            with trio.move_on_at(deadline):
                await self._fill()
                continue
            raise Http1Error(408, f"request head not complete within {HEAD_SECONDS:g}s")

    async def read_body(self) -> bytes:
        """The next piece of the current message's body; ``b""`` at its end."""
        while True:
            if self._events:
                event = self._events[0]
                if isinstance(event, Head):
                    return b""
                self._events.popleft()
                return b"" if event is None else event
            if self._eof or self.upgraded is not None:
                if self._until_eof:
                    self._until_eof = False
                    return b""
                raise MessageCut(400, "the connection closed in the middle of a body")
            await self._fill()

    async def drain_body(self, count: Callable[[int], None]) -> bool:
        """Read and drop the body of a request answered locally (``count`` hears its
        bytes), when it is small and comes at once (:data:`DRAIN_BYTES` within
        :data:`DRAIN_SECONDS`), so the connection can carry the next request; False when
        it cannot."""
        left = DRAIN_BYTES
        with trio.move_on_after(DRAIN_SECONDS):
            try:
                while data := await self.read_body():
                    count(len(data))
                    left -= len(data)
                    if left < 0:
                        return False
                return True
            except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return False

    def between_messages(self) -> bool:
        """Nothing of a next message was received (an app that sent more than its
        Content-Length has: its connection must not carry another request)."""
        return not self._events and not self.started and not self._initial

    def take_body_nowait(self) -> tuple[bytes, bool]:
        """The current message's body already parsed, joined, and whether its end was in it;
        never waits (a response that arrived whole leaves with its head, in one write)."""
        pieces: list[bytes] = []
        events = self._events
        while events:
            event = events[0]
            if isinstance(event, Head):
                return b"".join(pieces), True
            events.popleft()
            if event is None:
                return b"".join(pieces), True
            pieces.append(event)
        return b"".join(pieces), False

    async def _fill(self) -> None:
        data, self._initial = self._initial, b""
        data = data or bytes(await self._stream.receive_some(READ_SIZE))
        if not data:
            self._eof = True
            return
        self.bytes_read += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            if self._ignore_upgrade is not None:  # HTTP/1.1 goes on: a new parser
                self._parser = httptools.HttpRequestParser(self)
                if self._ignore_upgrade:  # llhttp ended the message at its head: not so
                    if self._events and self._events[-1] is None:
                        self._events.pop()
                    self._skip_head = True
                    self._parser.feed_data(self._ignore_upgrade)
                self._ignore_upgrade = None
                self._initial = bytes(data[offset:])
                return
            self.upgraded = bytes(data[offset:])
        except httptools.HttpParserError as exc:
            if self._problem is not None:
                raise self._problem from None
            if str(exc) == "Invalid HTTP version" and not self._response:  # llhttp's words
                raise Http1Error(505, "only HTTP/1.0 and HTTP/1.1 are served") from None
            raise Http1Error(400, f"malformed HTTP/1.x message: {exc}") from None

    # -- httptools callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._skip_head:
            self._url, self._headers, self._head_bytes = b"", [], 0
        self.started = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url_bytes:
            self._fail(414, f"request target over {self._limits.max_url_bytes} bytes")
        self._count(len(url))

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name.lower(), value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_head_bytes:
            self._fail(431, f"headers over {self._limits.max_head_bytes} bytes")
        if len(headers) > self._limits.max_headers:
            self._fail(431, f"more than {self._limits.max_headers} headers")

    def on_headers_complete(self) -> None:
        if self._skip_head:  # the head that puts a new parser in the body of the last one
            self._skip_head = False
            return
        parser = self._parser
        headers = self._headers
        self._headers = []  # trailers, if any, go there and no further
        # One pass for what framing and checks need: the first Transfer-Encoding and
        # Content-Length, the Hosts, whether any hop-by-hop header is there.
        coding = length = None
        hosts: list[bytes] = []
        hop = False
        for name, value in headers:
            if name in _NOTED:
                if name == b"host":
                    hosts.append(value)
                    continue
                hop = True
                if name == b"transfer-encoding":
                    coding = value if coding is None else coding
                elif name == b"content-length":
                    length = value if length is None else length
        head = Head(
            version=parser.get_http_version(),
            headers=headers,
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
            hop_by_hop=hop,
        )
        if isinstance(parser, httptools.HttpRequestParser):
            head.method = parser.get_method()
            head.target = self._url
            self._check_request(head, coding, length, hosts)
        else:
            head.status = parser.get_status_code()
        head.chunked = coding is not None and coding.lower().endswith(b"chunked")
        if length is not None and not head.chunked:
            head.content_length = int(length)  # llhttp has checked it is one number
        if self._response and not head.chunked and length is None:
            self._until_eof = not (100 <= head.status < 200 or head.status in (204, 304))
        self._events.append(head)

    def _check_request(
        self, head: Head, coding: bytes | None, length: bytes | None, hosts: list[bytes]
    ) -> None:
        """What llhttp lets through but a proxy must not (see the module's docstring);
        ``coding``, ``length``: the head's first Transfer-Encoding and Content-Length."""
        if head.version not in ("1.0", "1.1"):
            self._fail(505, f"HTTP/{head.version} is not HTTP/1.x")
        if head.method == b"CONNECT":
            self._fail(501, "CONNECT is not proxied by the waypoint")
        if coding is not None and coding.strip().lower() != b"chunked":
            self._fail(501, "no transfer coding but chunked is supported")
        if len(hosts) > 1:
            self._fail(400, "more than one Host header")
        if (hosts and not host_is_valid(hosts[0])) or (not hosts and head.version == "1.1"):
            self._fail(400, "an HTTP/1.1 request needs one valid Host header")
        if not hosts and self._default_host:
            head.headers.insert(0, (b"host", self._default_host))
        try:
            head.target, authority = read_target(head.method, head.target)
        except TargetError as exc:
            self._fail(400, str(exc))
        if authority is not None:
            head.headers = [(n, v) for n, v in head.headers if n != b"host"]
            head.headers.insert(0, (b"host", authority))
        if head.upgrade and _tokens(head.header(b"upgrade")) == {b"h2c"}:
            head.upgrade = False  # a server may ignore it: HTTP/1.1 goes on
            head.keep_alive = b"close" not in _tokens(head.header(b"connection"))
            head.headers = [(n, v) for n, v in head.headers if n != b"http2-settings"]
            chunked = coding is not None
            self._ignore_upgrade = (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n" if chunked
                else b"POST / HTTP/1.1\r\ncontent-length: %s\r\n\r\n" % length if length
                else b""
            )  # fmt: skip

    def on_body(self, body: bytes) -> None:
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._until_eof = False
        self.started = False
        self._events.append(None)

    def on_chunk_header(self) -> None:
        pass

    def on_chunk_complete(self) -> None:
        pass

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._limits.max_head_bytes:
            self._fail(431, f"headers over {self._limits.max_head_bytes} bytes")

    def _fail(self, status: int, reason: str) -> NoReturn:
        self._problem = Http1Error(status, reason)
        raise self._problem


# The headers a head's one pass notes: Host, and the hop-by-hop ones.
_NOTED: Final = HOP_BY_HOP | {b"host"}


def _tokens(value: bytes | None) -> set[bytes]:
    return {token.strip().lower() for token in (value or b"").split(b",")}


# -- writing ---------------------------------------------------------------------------

_REASONS: Final = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    204: b"No Content", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}  # fmt: skip


def encode_request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def encode_response_head(status: int, headers: Headers, version: str = "1.1") -> bytes:
    reason = _REASONS.get(status, b"")
    lines = [b"HTTP/%s %d %s" % (version.encode(), status, reason)]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones, including those ``Connection`` names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def latin1(text: str) -> bytes:
    """``text`` as HTTP/1.x bytes (what latin-1 cannot say becomes ``?``)."""
    return text.encode("latin-1", "replace")


def request_of(head: Head) -> HttpRequest:
    """The request as routes and policies read it (header names are lower-case already)."""
    host = b""
    headers = []
    for name, value in head.end_to_end():
        if name == b"host":
            host = value
        else:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return HttpRequest(
        head.method.decode("latin-1"), head.target.decode("latin-1"), host.decode("latin-1"),
        tuple(headers),
    )  # fmt: skip
