"""The waypoint's side towards the apps: which endpoint takes a request, and the
HTTP/1.1 connections to endpoints, each an HBONE CONNECT stream to the endpoint pod's
15008 presenting the waypoint's own certificate (the destination ztunnel sees the
waypoint's identity and dials the app). An endpoint outside the mesh (a pod not
enrolled, an EndpointSlice's address that is no pod) is dialled directly, plain TCP, as
Istio's waypoint and ambit's ztunnel do.

- :class:`Balancer`: least request, as Istio's default: of two endpoints drawn at
  random, the one with fewer requests in flight (Envoy's power of two choices).
- :class:`Upstreams`: idle HTTP/1.1 connections kept per endpoint (at most
  ``max_idle`` each, closed after ``idle_seconds``) and reused for the next request; a
  connection is reused only when its last response ended cleanly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog
import trio

from mesh.constants import HBONE_PORT
from mesh.hbone import HboneError, HboneSettings, Http2Connection
from mesh.hbone.client import HboneClientPool, failure_reason
from mesh.hbone.transport import StreamTransport
from mesh.identity import SpiffeId
from mesh.model import Endpoint
from mesh.reason import Reason, reason_for_dial_error
from waypoint.http1 import MessageReader

log = structlog.get_logger("waypoint")

DIAL_TIMEOUT: Final = 10.0  # to an endpoint outside the mesh (a dropped SYN waits ~2 min)


@dataclass(frozen=True)
class Target:
    """One endpoint of a Service on one port: where a request goes."""

    ip: str
    port: int  # the target port on the pod
    identity: SpiffeId | None  # the pod's, its ztunnel answers for it; None: out of the mesh
    uid: str

    @property
    def authority(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


class Balancer:
    """Least request over power of two choices; counts requests in flight per endpoint."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.active: dict[tuple[str, int], int] = defaultdict(int)

    def pick(self, targets: Sequence[Target], avoid: Sequence[Target] = ()) -> Target | None:
        """One of ``targets``, not one of ``avoid`` when another is left (a retry goes
        elsewhere); None when there is none."""
        pool = [t for t in targets if t not in avoid] or list(targets)
        if not pool:
            return None
        if len(pool) == 1:
            return pool[0]
        a, b = self._rng.sample(pool, 2)
        return a if self.active[(a.ip, a.port)] <= self.active[(b.ip, b.port)] else b

    def started(self, target: Target) -> None:
        self.active[(target.ip, target.port)] += 1

    def finished(self, target: Target) -> None:
        key = (target.ip, target.port)
        self.active[key] -= 1
        if self.active[key] <= 0:
            del self.active[key]


class UpstreamError(Exception):
    """No connection to the endpoint; ``retryable`` when no byte of the request left."""

    def __init__(self, reason: Reason, detail: str, *, retryable: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retryable = retryable


@dataclass(eq=False)
class Connection:
    """An HTTP/1.1 connection to one endpoint (an HBONE stream to its pod)."""

    target: Target
    stream: trio.abc.HalfCloseableStream
    reader: MessageReader
    idle_since: float = field(default_factory=trio.current_time)
    requests: int = 0

    async def aclose(self) -> None:
        await self.stream.aclose()


class Upstreams:
    """HTTP/1.1 connections to endpoints, opened through ``pool`` as ``identity``."""

    def __init__(
        self,
        pool: HboneClientPool,
        identity: Callable[[], SpiffeId],
        *,
        max_idle: int = 32,
        idle_seconds: float = 60.0,
    ) -> None:
        self._pool = pool
        self._identity = identity
        self._idle: dict[tuple[str, int], list[Connection]] = defaultdict(list)
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.opened = 0

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def take_idle(self, target: Target) -> Connection | None:
        """An idle connection to ``target`` that is fresh enough, if one is kept (never
        waits: the common case of :meth:`checkout` without its coroutine); the stale ones
        are left for :meth:`checkout` to close."""
        idle = self._idle.get((target.ip, target.port))
        if idle and trio.current_time() - idle[-1].idle_since < self.idle_seconds:
            return idle.pop()
        return None

    async def checkout(self, target: Target, headers: Sequence[tuple[str, str]]) -> Connection:
        """An idle connection to ``target``, or a new one (``headers`` go on its CONNECT)."""
        idle = self._idle.get((target.ip, target.port))
        now = trio.current_time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.idle_seconds:
                return conn
            await conn.aclose()
        stream = await self.open_stream(target, headers)
        self.opened += 1
        return Connection(target, stream, MessageReader(stream, response=True))

    async def open_stream(
        self, target: Target, headers: Sequence[tuple[str, str]]
    ) -> trio.abc.HalfCloseableStream:
        """A new HBONE stream to ``target`` as the waypoint (a plain TCP connection to one
        outside the mesh); :class:`UpstreamError` if none."""
        if target.identity is None:
            return await _dial_plain(target)
        try:
            return await self._pool.connect(
                source=self._identity(),
                address=(target.ip, HBONE_PORT),
                authority=target.authority,
                expected=[target.identity],
                headers=headers,
            )
        except HboneError as exc:
            raise UpstreamError(failure_reason(exc), str(exc), retryable=True) from None

    async def release(self, conn: Connection, *, reusable: bool) -> None:
        """Keep ``conn`` for the next request to its endpoint, or close it."""
        if not self.keep(conn, reusable=reusable):
            await conn.aclose()

    def keep(self, conn: Connection, *, reusable: bool) -> bool:
        """Keep ``conn`` for the next request to its endpoint if it may carry one: whether
        it was kept (else the caller closes it)."""
        idle = self._idle[(conn.target.ip, conn.target.port)]
        if reusable and len(idle) < self.max_idle and conn.reader.between_messages():
            conn.idle_since = trio.current_time()
            idle.append(conn)
            return True
        return False

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await conn.aclose()
        self._idle.clear()


async def _dial_plain(target: Target) -> trio.SocketStream:
    try:
        with trio.fail_after(DIAL_TIMEOUT):
            return await trio.open_tcp_stream(target.ip, target.port)
    except (OSError, trio.TooSlowError) as exc:
        error = exc if isinstance(exc, OSError) else TimeoutError("dial timed out")
        raise UpstreamError(
            reason_for_dial_error(error), f"{target.authority}: {error}", retryable=True
        ) from None


def targets_of(
    endpoints: Sequence[Endpoint], port: int, identity_of: Callable[[str], SpiffeId | None]
) -> list[Target]:
    """The endpoints serving service port ``port``, with the identity each pod in the mesh
    proves (None for one outside it: dialled plain)."""
    out = []
    for e in endpoints:
        target = e.target_for(port)
        if target is not None:
            out.append(Target(e.ip, target, identity_of(e.workload_uid), e.workload_uid))
    return out


# Downstream and upstream HTTP/2: Envoy's defaults for streams per connection and for the
# headers of a request or a response (60 KiB: HTTP/1.1's limit, waypoint.http1.Limits).
H2_SETTINGS: Final = HboneSettings(
    max_concurrent_streams=100, stream_window=1024 * 1024, max_header_list_size=60 * 1024
)


class H2Upstreams:
    """Multiplexed h2c connections to endpoints, each over an HBONE stream opened through
    ``upstreams``' pool as the waypoint; their tasks live in ``nursery``."""

    def __init__(self, upstreams: Upstreams, nursery: trio.Nursery) -> None:
        self._upstreams = upstreams
        self.nursery = nursery  # the connections' tasks; the waypoint's other background work too
        self._conns: dict[tuple[str, int], list[Http2Connection]] = defaultdict(list)
        self._locks: dict[tuple[str, int], trio.Lock] = defaultdict(trio.Lock)
        self.opened = 0

    async def connection(self, target: Target, headers: list[tuple[str, str]]) -> Http2Connection:
        key = (target.ip, target.port)
        async with self._locks[key]:
            for conn in self._conns[key]:
                if conn.is_available():
                    return conn
            stream = await self._upstreams.open_stream(target, headers)
            conn = Http2Connection(
                StreamTransport(stream), peer=target.identity, settings=H2_SETTINGS,
                client_side=True, idle_timeout=self._upstreams.idle_seconds,
            )  # fmt: skip
            self._conns[key].append(conn)
            self.opened += 1
            self.nursery.start_soon(self._run, key, conn)
            return conn

    async def _run(self, key: tuple[str, int], conn: Http2Connection) -> None:
        try:
            await conn.serve()
        except Exception:  # a bug must end this connection, not the waypoint with it
            log.exception("upstream_h2_connection_failed", dst=f"{key[0]}:{key[1]}")
            conn.close("failed")
        finally:
            if conn in self._conns.get(key, ()):
                self._conns[key].remove(conn)

    def close(self) -> None:
        for conns in self._conns.values():
            for conn in conns:
                conn.close("waypoint closing")
