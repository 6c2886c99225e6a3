"""Helpers for HBONE tests: a real server on loopback and a real client pool."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from mesh.hbone import HboneRequest, HboneSettings, HboneStream
from mesh.hbone.client import HboneClientPool, open_hbone_pool
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from tests.conftest import CLIENT_ID, SERVER_ID
from tests.pki import Pki

Handler = Callable[[HboneRequest], Awaitable[None]]
AUTHORITY = "10.0.0.2:8080"


async def echo_handler(request: HboneRequest) -> None:
    stream = await request.accept()
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.send_eof()


async def hash_handler(request: HboneRequest) -> None:
    """Read until EOF, answer with the sha256 of what arrived and the byte count."""
    stream = await request.accept()
    digest = hashlib.sha256()
    total = 0
    while data := await stream.receive_some():
        digest.update(data)
        total += len(data)
    await stream.send_all(f"{digest.hexdigest()} {total}".encode())
    await stream.send_eof()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while data := await stream.receive_some():
        out += data
    return bytes(out)


async def start_server(
    nursery: trio.Nursery,
    handler: Handler,
    cert: WorkloadCertificate,
    settings: HboneSettings | None = None,
) -> tuple[str, int]:
    async def run(task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_hbone(
            handler, certificate=lambda: cert, port=0, settings=settings, task_status=task_status
        )

    address: tuple[str, int] = await nursery.start(run)
    return address


@contextlib.asynccontextmanager
async def client_pool(
    pki: Pki, settings: HboneSettings | None = None, identity: SpiffeId = CLIENT_ID
) -> AsyncIterator[HboneClientPool]:
    cert = pki.issue(identity)
    async with open_hbone_pool(lambda _source: cert, settings=settings) as pool:
        yield pool


async def connect(
    pool: HboneClientPool,
    address: tuple[str, int],
    *,
    expected: SpiffeId = SERVER_ID,
    source: SpiffeId = CLIENT_ID,
) -> HboneStream:
    return await pool.connect(
        source=source, address=address, authority=AUTHORITY, expected=[expected]
    )
