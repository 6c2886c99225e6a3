"""Fetching a JWKS over loopback HTTP with ``http_get``, through the cache, into a verified
token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import pytest
import trio

from mesh.model_l7 import JwtRule
from tests.jwt_support import ISSUER, claims, jwks, rsa_key
from waypoint.jwks import JwksCache, JwksFetchError, http_get
from waypoint.jwt import Provider, authenticate

RSA = rsa_key()


async def _handle(stream: trio.SocketStream) -> None:
    """One request: ``/jwks`` is the key set, ``/big`` two MiB, anything else 404."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                target = event.target.decode()
                break
            else:
                return
        body = {"/jwks": jwks(RSA).encode(), "/big": b"x" * (2 << 20)}.get(target, b"")
        status = 200 if target in ("/jwks", "/big") else 404
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


@asynccontextmanager
async def issuer() -> AsyncIterator[str]:
    """A loopback HTTP server; yields its base URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _handle, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        yield f"http://{host}:{port}"
        nursery.cancel_scope.cancel()


async def test_http_get_fetches_a_jwks() -> None:
    with trio.fail_after(10):
        async with issuer() as base:
            assert await http_get(f"{base}/jwks") == jwks(RSA).encode()
            with pytest.raises(JwksFetchError, match="answered 404"):
                await http_get(f"{base}/nothing")
            with pytest.raises(JwksFetchError, match="larger than"):
                await http_get(f"{base}/big")
    with pytest.raises(JwksFetchError, match="not an http or https URL"):
        await http_get("file:///etc/passwd")


async def test_a_refused_connection_is_a_fetch_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there now
    with trio.fail_after(10), pytest.raises(JwksFetchError):
        await http_get(f"http://127.0.0.1:{port}/jwks")


async def test_a_token_verified_with_keys_fetched_from_the_issuer() -> None:
    with trio.fail_after(10):
        async with issuer() as base:
            rule = JwtRule(issuer=ISSUER, jwks_uri=f"{base}/jwks")
            cache = JwksCache()
            assert await cache.fetch(rule.jwks_uri) is not None
    result = authenticate(
        (Provider(rule, "default/ra"),),
        [("authorization", f"Bearer {RSA.sign(claims())}")],
        "/",
        cache.keys_for,
    )
    assert result.auth is not None
    assert result.auth.principal == f"{ISSUER}/alice"
