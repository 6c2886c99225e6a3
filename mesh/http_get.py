"""One HTTP/1.1 GET over a stream the caller opened (h11), read whole but bounded: what the
small clients share (the observer's scrapes, a waypoint's JWKS fetch, local mode's reads
of each ztunnel's ``/config_dump``). The caller bounds the time and maps the errors."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import trio


class BodyTooLarge(Exception):
    """The answer's body passed the caller's limit."""


async def get(
    stream: trio.abc.Stream,
    host: str,
    target: str,
    *,
    limit: int,
    headers: Sequence[tuple[str, str]] = (),
) -> tuple[int, bytes]:
    """The status and body of ``GET target`` (``connection: close``). Raises
    :class:`BodyTooLarge` past ``limit`` bytes; a broken or garbled answer raises what the
    stream or h11 raise (``OSError``, ``trio.BrokenResourceError``, ``h11.ProtocolError``)."""
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target,
                          headers=[("host", host), *headers, ("connection", "close")])  # fmt: skip
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    status, body = 0, bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise BodyTooLarge(f"answer over {limit} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, bytes(body)
