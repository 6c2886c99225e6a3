"""A RequestAuthentication whose keys come from ``jwksUri``, at a real waypoint over HBONE:
the first request with a valid token after the rule arrives is served (the waypoint fetches
the key set when its config arrives, and a request that comes first waits for that fetch),
and a token the keys do not verify is still refused. Before, the first such request got
401 ``Jwks remote fetch is failed``: the fetch began with it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import h11
import jwt as pyjwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.test_waypoint_l7 import get, jwk_of, jwt_rule, pods, world
from tests.integration.waypoint_support import Client, open_mesh
from tests.pki import Pki
from waypoint.gate import Gate
from waypoint.jwks import JwksCache
from waypoint.request import WaypointScope

ISSUER = "https://issuer.example"


@asynccontextmanager
async def jwks_server(key: ec.EllipticCurvePrivateKey, delay: float) -> AsyncIterator[str]:
    """A loopback HTTP server answering its key set after ``delay`` seconds (a JWKS
    endpoint a little slow to answer); yields its URL and counts nothing else."""
    body = json.dumps({"keys": [jwk_of(key)]}).encode()

    async def handle(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while not isinstance(event := conn.next_event(), h11.Request):
                if event is not h11.NEED_DATA:
                    return
                conn.receive_data(bytes(await stream.receive_some(65536)))
            await trio.sleep(delay)
            headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
            head = h11.Response(status_code=200, headers=headers)
            await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        host, port = listeners[0].socket.getsockname()[:2]
        yield f"http://{host}:{port}/jwks.json"
        nursery.cancel_scope.cancel()


def rule(uri: str) -> str:
    return jwt_rule(f"jwksUri: {uri}")


def token(key: ec.EllipticCurvePrivateKey) -> str:
    body = {"iss": ISSUER, "sub": "alice", "exp": time.time() + 300}
    return pyjwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})


async def test_the_first_request_after_a_jwks_uri_rule_is_checked_against_its_keys(
    root: Pki,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    with trio.fail_after(60):
        async with jwks_server(key, delay=0.3) as uri:
            jwks = JwksCache()
            gate = Gate(WaypointScope("default/waypoint"), jwks)
            async with (
                open_mesh(root, pods(), snapshot=world(rule(uri)), gate=gate) as mesh,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(jwks.serve)
                # POST needs a request principal (POLICY): the first one that comes
                # waits for the key set the rule names, then passes.
                client = Client(await mesh.connect())
                bearer = [("authorization", f"Bearer {token(key)}")]
                status, _h, body = await client.request("POST", "/orders", body=b"{}",
                                                        headers=bearer)  # fmt: skip
                assert status == 200, body
                forged = [("authorization", f"Bearer {token(other)}")]
                status, _h, body = await get(mesh, "/orders", headers=forged)
                assert (status, body) == (401, b"Jwt verification fails")
                await client.stream.aclose()
                assert jwks.statistics()[uri]["keys"] == 1
                nursery.cancel_scope.cancel()
