"""A request carried across HTTP versions: the waypoint speaks to the app what its Service
port declares (``http2``/``grpc``: h2c; ``http``: HTTP/1.1), whatever the client spoke.

- :func:`h1_over_h2`: an HTTP/1.1 request sent to an h2c app: its head becomes HTTP/2
  headers, its body DATA; the app's answer comes back as HTTP/1.1 (chunked when it gave
  no length; its trailers are dropped, as HTTP/1.1 clients rarely read them).
- :func:`h2_over_h1`: an HTTP/2 request sent to an HTTP/1.1 app over a pooled connection:
  its headers become a request head (``:authority`` the ``host``), its body sent with its
  ``content-length`` or chunked; the answer comes back as HTTP/2 headers and DATA.

Both stream bodies with backpressure both ways; what fails before the answer began is
the caller's to answer (:class:`BridgeFailed`), what fails after cuts the exchange: the
HTTP/2 side is reset (:func:`cut`), never ended with END_STREAM as if it were whole. An
answer to HEAD has no body, whatever length it announces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence

import trio
from h2.errors import ErrorCodes

from mesh.hbone import H2Stream, Http2Connection
from mesh.hbone.settings import HboneError
from waypoint.body_copy import BodyCopy
from waypoint.http1 import (
    HOP_BY_HOP,
    LAST_CHUNK,
    READ_SIZE,
    Head,
    Http1Error,
    MessageReader,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    latin1,
)
from waypoint.http_request import HttpRequest
from waypoint.upstream import Connection

Headers = list[tuple[str, str]]
Again = Callable[[int], bool]  # an answer's status -> send the request again?
_SKIP_TEXT = frozenset(n.decode() for n in HOP_BY_HOP) | {"host"}


class BridgeFailed(Exception):
    """The app closed or broke before its answer began; ``connected``: the connection
    itself had been made."""

    def __init__(self, detail: str, *, connected: bool = True) -> None:
        super().__init__(detail)
        self.connected = connected


def cut(stream: H2Stream, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
    """Reset ``stream`` if it is still open: the peer must not take what it got as whole."""
    if not stream.is_done():
        stream.connection.reset_stream(stream, code)


def h2_headers(request: HttpRequest, extra: Sequence[tuple[str, str]]) -> Headers:
    """``request`` as HTTP/2 request headers."""
    out = [(":method", request.method), (":scheme", request.scheme), (":path", request.path)]
    if request.authority:
        out.append((":authority", request.authority))
    out += [(n, v) for n, v in request.headers if n not in _SKIP_TEXT and n != "te"]
    return out + list(extra)


async def h1_over_h2(
    conn: Http2Connection,
    request: HttpRequest,
    extra: Sequence[tuple[str, str]],
    reader: MessageReader,
    has_body: bool,
    send_down: Callable[[bytes], Awaitable[None]],
    *,
    version: str,
    counted: list[int],
    copy: BodyCopy | None = None,
    again: Again | None = None,
) -> int | None:
    """Send an HTTP/1.1 request (head in ``request``, body from ``reader``, or from
    ``copy`` once it is complete: a retry) over ``conn`` and relay the answer with
    ``send_down``; its status, or None when ``again`` says its status sends the request
    again (nothing of it was sent down). ``counted`` gets the bytes added."""
    try:
        up = conn.start_request(h2_headers(request, extra), end_stream=not has_body)
    except HboneError as exc:
        raise BridgeFailed(str(exc), connected=False) from None
    failed: BaseException | None = None
    async with trio.open_nursery() as nursery:
        if has_body:
            nursery.start_soon(_h1_body_up, reader, up, counted, copy)
        try:
            await up.wait_response()
        except HboneError as exc:
            failed = BridgeFailed(str(exc))
            nursery.cancel_scope.cancel()
        else:
            if again is not None and again(up.status or 0):
                cut(up, ErrorCodes.CANCEL)
                nursery.cancel_scope.cancel()
                return None
            try:
                await _h2_answer_down(up, send_down, version, counted,
                                      is_head=request.method == "HEAD")  # fmt: skip
            except BaseException as exc:  # raised outside the nursery: no exception group
                failed = exc
            nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return up.status or 0


async def _h1_body_up(
    reader: MessageReader, up: H2Stream, counted: list[int], copy: BodyCopy | None
) -> None:
    try:
        if copy is not None and copy.complete:  # a retry: the body from its copy
            await up.send_all(bytes(copy.data))
            await up.send_eof()
            return
        while data := await reader.read_body():
            counted[0] += len(data)
            if copy is not None:
                copy.add(data)
            await up.send_all(data)
        if copy is not None:
            copy.complete = True
        await up.send_eof()
    except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError):
        cut(up, ErrorCodes.CANCEL)  # the request broke off: the app must not see it end


async def _h2_answer_down(
    up: H2Stream,
    send_down: Callable[[bytes], Awaitable[None]],
    version: str,
    counted: list[int],
    *,
    is_head: bool,
) -> None:
    status = up.status or 0
    headers = [(n.encode(), v.encode()) for n, v in up.response_headers
               if not n.startswith(":") and n not in _SKIP_TEXT]  # fmt: skip
    length = next((v for n, v in up.response_headers if n == "content-length"), None)
    chunked = length is None and version == "1.1" and status not in (204, 304) and not is_head
    if length is not None:
        headers.append((b"content-length", length.encode()))
    elif chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    head = encode_response_head(status, headers, version)
    counted[1] += len(head)
    await send_down(head)
    while data := await up.receive_some():
        counted[1] += len(data)
        await send_down(encode_chunk(data) if chunked else data)
    if chunked:
        await send_down(LAST_CHUNK)


async def h2_over_h1(
    conn: Connection,
    request: HttpRequest,
    extra: Sequence[tuple[bytes, bytes]],
    down: H2Stream,
    counted: list[int],
    active: Callable[[], None] = lambda: None,
    *,
    copy: BodyCopy | None = None,
    again: Again | None = None,
) -> tuple[int | None, bool]:
    """Send an HTTP/2 request (headers in ``request``, body from ``down``, or from ``copy``
    once it is complete: a retry) on the HTTP/1.1 connection ``conn`` and answer ``down``
    with the app's response: its status (None when ``again`` says it sends the request
    again: nothing was sent down, ``conn`` is not reusable), and whether ``conn`` may
    carry another request. ``active`` hears each body chunk that moved either way (the
    stream idle timeout starts again)."""
    replay = copy is not None and copy.complete
    ended = not replay and not down.accepts_data() and not down.buffered
    length = next((v for n, v in request.headers if n == "content-length"), None)
    chunked = not ended and length is None
    headers = [(b"host", latin1(request.authority))]
    headers += [(latin1(n), latin1(v))
                for n, v in request.headers if n not in _SKIP_TEXT and n != "te"]  # fmt: skip
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif length is not None:
        headers.append((b"content-length", length.encode()))
    headers += list(extra)
    head = encode_request_head(latin1(request.method), latin1(request.path), headers)
    try:
        await conn.stream.send_all(head)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise BridgeFailed(str(exc)) from None
    failed: BaseException | None = None
    reusable = False
    status = 0
    async with trio.open_nursery() as nursery:
        if not ended:
            nursery.start_soon(_h2_body_up, down, conn, chunked, counted, active, copy)
        try:
            answer = await conn.reader.read_head()
            while answer is not None and 100 <= answer.status < 200:
                answer = await conn.reader.read_head()
            if answer is None:
                raise BridgeFailed("the app closed the connection before answering")
            if again is not None and again(answer.status):
                nursery.cancel_scope.cancel()
                return None, False
            status = answer.status
            is_head = request.method == "HEAD"
            active()
            reusable = await _h1_answer_down(
                conn.reader, answer, down, counted, active, is_head=is_head
            )
        except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failed = BridgeFailed(str(exc)) if status == 0 else exc
        except BridgeFailed as exc:
            failed = exc
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return status, reusable


async def _h2_body_up(
    down: H2Stream,
    conn: Connection,
    chunked: bool,
    counted: list[int],
    active: Callable[[], None],
    copy: BodyCopy | None,
) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        if copy is not None and copy.complete:  # a retry: the body from its copy
            data = bytes(copy.data)
            await conn.stream.send_all(
                ((encode_chunk(data) if data else b"") + LAST_CHUNK) if chunked else data
            )
            return
        while data := await down.receive_some(READ_SIZE):
            active()
            counted[0] += len(data)
            if copy is not None:
                copy.add(data)
            await conn.stream.send_all(encode_chunk(data) if chunked else data)
        if copy is not None:
            copy.complete = True
        if chunked:
            await conn.stream.send_all(LAST_CHUNK)


async def _h1_answer_down(
    reader: MessageReader,
    answer: Head,
    down: H2Stream,
    counted: list[int],
    active: Callable[[], None],
    *,
    is_head: bool,
) -> bool:
    headers = [(":status", str(answer.status))]
    headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in answer.headers
                if n not in HOP_BY_HOP or n == b"content-length"]  # fmt: skip
    bodyless = answer.status in (204, 304) or not (answer.has_body or _until_close(answer))
    down.send_headers(headers, end_stream=bodyless or is_head)
    if is_head:  # the reader expects the body the length announces: the connection is done
        return False
    if bodyless:
        return answer.keep_alive
    try:
        while data := await reader.read_body():
            active()
            counted[1] += len(data)
            await down.send_all(data)
    except (Http1Error, trio.BrokenResourceError, trio.ClosedResourceError):
        cut(down)  # the app's answer broke off: the client must not take it as whole
        raise
    await down.send_eof()
    return answer.keep_alive and answer.has_body


def _until_close(answer: Head) -> bool:
    """A response whose body ends with the connection (no length, not chunked)."""
    return answer.content_length is None and not answer.chunked
