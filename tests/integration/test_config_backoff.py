"""The config client's reconnect backoff against a control plane that is not
there, in virtual time: attempts are spaced by growing, jittered, capped delays
(as its log line says), it resynchronises when the control plane comes back,
and after a healthy session the backoff starts afresh."""

from __future__ import annotations

import contextlib
import itertools
import socket
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from k8s.config_server import ConfigServer, node_token_authenticator
from mesh.backoff import Backoff
from mesh.config_stream import ConfigClient
from mesh.hbone.client import dial_tcp, open_hbone_pool
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable
from tests.builders import snapshot, workload
from tests.pki import Pki
from tests.waiting import wait_until

CP_ID = SpiffeId("cluster.local", "ambit-system", "ambit-controlplane")
ZTUNNEL_ID = SpiffeId("cluster.local", "ambit-system", "ztunnel")
BACKOFF = Backoff(initial=1.0, maximum=8.0, multiplier=2.0)
FAILED_ATTEMPTS = 9  # 1, 2, 4, 8 then capped: 8, 8, 8, 8
EPSILON = 0.011  # the log rounds retry_in to 0.01 s
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


def ceiling(attempt: int) -> float:
    """The most the client may wait after failed attempt number ``attempt`` (0-based)."""
    return min(BACKOFF.initial * BACKOFF.multiplier**attempt, BACKOFF.maximum)


def retry_delays(logs: Logs) -> list[float]:
    return [e["retry_in"] for e in logs if e["event"] == "config_stream_lost"]


class Dials:
    """The pool's dialer, recording when (virtual time) each attempt dials."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._waiters: list[tuple[int, trio.Event]] = []

    async def __call__(self, address: tuple[str, int]) -> trio.socket.SocketType:
        self.times.append(trio.current_time())
        for count, event in self._waiters:
            if len(self.times) >= count:
                event.set()
        return await dial_tcp(address)

    async def wait_for(self, count: int) -> None:
        event = trio.Event()
        self._waiters.append((count, event))
        if len(self.times) >= count:
            event.set()
        await event.wait()

    def gaps(self, start: int = 0) -> list[float]:
        times = self.times[start:]
        return [b - a for a, b in itertools.pairwise(times)]


async def hold_port(address: tuple[str, int]) -> trio.socket.SocketType:
    """A socket bound to ``address`` but not listening: connections to it are refused, and
    nobody else can take the port. SO_REUSEADDR (inherited by accepted connections) lets
    it be bound again while connections of an earlier listener are still closing."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(address)
    return sock


class ControlPlane:
    """The config server behind a real HBONE listener that a test can cut."""

    def __init__(
        self, server: ConfigServer, cert: WorkloadCertificate, listener: trio.socket.SocketType
    ) -> None:
        self._server = server
        self._cert = cert
        self._listener = listener
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        try:
            with self._scope:
                await serve_hbone(
                    self._server.handle,
                    certificate=lambda: self._cert,
                    listener=self._listener,
                    task_status=task_status,
                )
        finally:
            self._stopped.set()

    async def cut(self) -> None:
        """Stop listening and drop every connection, as a crashed control plane does."""
        self._scope.cancel()
        await self._stopped.wait()


async def test_reconnects_back_off_up_to_a_cap_then_resync_and_start_afresh(
    root: Pki, logs: Logs, autojump_clock: trio.testing.MockClock
) -> None:
    # The control plane's port is held (bound, not listening): dials are refused at once.
    placeholder = await hold_port(("127.0.0.1", 0))
    address: tuple[str, int] = placeholder.getsockname()[:2]
    server = ConfigServer(
        node_token_authenticator(TokenTable({"t": "node-1"}), frozenset({ZTUNNEL_ID}))
    )
    server.publish(snapshot(workload("web", ip="10.244.0.10"), version=1))
    applied: list[MeshSnapshot] = []
    got_snapshot = trio.Event()

    async def on_update(new: MeshSnapshot) -> None:
        applied.append(new)
        got_snapshot.set()

    dials = Dials()
    cert = root.issue(ZTUNNEL_ID)
    with contextlib.ExitStack() as held, trio.fail_after(300):  # virtual s; ~1 s real
        held.enter_context(placeholder)
        async with trio.open_nursery() as nursery:
            async with open_hbone_pool(lambda _s: cert, dial=dials) as pool:
                client = ConfigClient(
                    pool,
                    source=ZTUNNEL_ID,
                    address=address,
                    expected=CP_ID,
                    node="node-1",
                    token="t",
                    on_update=on_update,
                    backoff=BACKOFF,
                )
                nursery.start_soon(client.run)

                # 1. Unreachable: every gap lies in [ceiling/2, ceiling] and matches the log.
                await dials.wait_for(FAILED_ATTEMPTS)
                gaps = dials.gaps()
                logged = retry_delays(logs)
                assert len(gaps) == FAILED_ATTEMPTS - 1
                for i, gap in enumerate(gaps):
                    assert ceiling(i) / 2 - EPSILON <= gap <= ceiling(i) + EPSILON, (i, gaps)
                    assert abs(gap - logged[i]) <= EPSILON, (gaps, logged)
                growing = gaps[:4]  # before the cap: each wait at least as long as the last
                assert growing == sorted(growing), gaps
                assert max(gaps) <= BACKOFF.maximum + EPSILON
                assert min(gaps[4:]) >= BACKOFF.maximum / 2 - EPSILON  # capped, not reset
                assert (client.snapshot, client.connected) == (None, False)  # nothing yet
                lost = [e for e in logs if e["event"] == "config_stream_lost"]
                assert "could not connect" in lost[0]["reason"]
                assert lost[0]["node"] == "node-1"

                # 2. The control plane comes back at the same address. From here on there
                # is real TLS: the clock jumps only after 0.2 s (real) with every task idle.
                await wait_until(lambda: len(retry_delays(logs)) >= FAILED_ATTEMPTS)
                autojump_clock.autojump_threshold = 0.2
                placeholder.listen()
                control_plane = ControlPlane(server, root.issue(CP_ID), placeholder)
                await nursery.start(control_plane.serve)
                came_back = trio.current_time()
                await got_snapshot.wait()
                await wait_until(lambda: any(e["event"] == "config_applied" for e in logs))
                assert client.snapshot == applied[0]
                assert [s.version for s in applied] == [1]
                assert client.connected
                # One dial after the comeback, at most one capped delay after the last failure.
                assert len(dials.times) == FAILED_ATTEMPTS + 1
                assert came_back <= dials.times[-1] <= dials.times[-2] + BACKOFF.maximum + EPSILON
                kinds = [e["kind"] for e in logs if e["event"] == "config_applied"]
                assert kinds == ["snapshot"]

                # 3. Healthy, then gone again: the backoff starts afresh from `initial`.
                before = len(retry_delays(logs))
                await control_plane.cut()
                held.enter_context(await hold_port(address))  # nothing listens there again
                await dials.wait_for(FAILED_ATTEMPTS + 3)
                after = retry_delays(logs)[before:]
                assert BACKOFF.initial / 2 - EPSILON <= after[0] <= BACKOFF.initial + EPSILON, after
                # The first refused dial after the loss waits as the second attempt of a fresh
                # backoff would ([1, 2] s), not as the capped one it had reached before ([4, 8]).
                restart = dials.gaps(FAILED_ATTEMPTS + 1)
                assert ceiling(1) / 2 - EPSILON <= restart[0] <= ceiling(1) + EPSILON, restart
            nursery.cancel_scope.cancel()
