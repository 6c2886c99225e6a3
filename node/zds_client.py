"""The node agent's end of ztunnel's pod socket (``ztunnel.sock``; the protocol:
:mod:`mesh.zds` and ``docs/node.md``).

:class:`ZdsClient` keeps the set of pods the agent wants captured (Kubernetes
uid to the pod and its network namespace's path) and a connection to whichever
ztunnel listens at the socket's path:

- :meth:`ZdsClient.run` connects (again with backoff while no ztunnel listens),
  and on every new connection sends ``hello``, every wanted pod, and
  ``snapshot_sent`` once the agent said its set is complete
  (:meth:`ZdsClient.synced`): a restarted agent, which starts empty, never makes
  ztunnel let go of pods it has not handed again yet.
- A new ztunnel (a hitless restart) binds a fresh socket at the same path:
  ``run`` sees the path's (inode, device) change (polled every
  ``poll_seconds``), connects to the new one and sends it the full set; the old
  connection is left open until the old ztunnel closes it as it drains.
- :meth:`ZdsClient.add` returns once the current ztunnel acknowledged the pod
  (its listeners are up) and raises :class:`ZdsError` with ztunnel's reason, or
  when no ztunnel answered within ``seconds`` (a caller's own cancel scope
  bounds it as well). While none is connected, or the current one is draining,
  it waits for the next (within the same bound); the pod is wanted from the call
  on, whatever the outcome, and is sent to every later ztunnel until
  :meth:`ZdsClient.remove`. An add that waited may reach the new ztunnel twice
  (it is in the connection's first exchange too): the same pod again changes
  nothing there.
- :meth:`ZdsClient.remove` returns once the current ztunnel released the pod
  (at once if none is connected: the next one is never handed it).

Each connection's messages go out under one lock and its acks are read by one
task that matches them to the requests in order.
"""

from __future__ import annotations

import os
import socket
import stat
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from mesh.backoff import Backoff
from mesh.netns import NamespaceKey
from mesh.zds import (
    DRAINING,
    Ack,
    Add,
    Hello,
    PodInfo,
    Remove,
    Request,
    SnapshotSent,
    ZdsProtocolError,
    encode,
    parse_ack,
    receive_datagram,
    send_datagram,
)

log = structlog.get_logger("node.zds")

DEFAULT_SOCKET = Path("/var/run/ambit/ztunnel.sock")
POLL_SECONDS = 0.2
RECONNECT = Backoff(initial=0.1, maximum=2.0)
# One request's bound during a connection's first exchange: longer than ztunnel's own
# bound for an add (5 s); past it the ztunnel is taken as stuck and the connection closed.
REQUEST_SECONDS = 15.0


class ZdsError(RuntimeError):
    """ztunnel refused a request (its reason in the message), or none answered in time."""


class _Lost(Exception):
    """The connection ended before the request was answered."""


def socket_key(path: Path) -> NamespaceKey | None:
    """(inode, device) of the unix socket at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev) if stat.S_ISSOCK(st.st_mode) else None


@dataclass
class _Reply:
    done: trio.Event
    ack: Ack | None = None  # None once done: the connection was lost


class _Connection:
    """One connection to one ztunnel."""

    def __init__(self, sock: trio.socket.SocketType, key: NamespaceKey, number: int) -> None:
        self.sock = sock
        self.key = key
        self.number = number
        self.closed = trio.Event()
        self._send_lock = trio.Lock()  # fair: requests go out in the order they were made
        self._waiting: deque[_Reply] = deque()

    @property
    def open(self) -> bool:
        return not self.closed.is_set()

    async def read_acks(self) -> None:
        """Match each ack to the oldest request waiting; end with the connection."""
        reason = "closed by ztunnel"
        try:
            while (datagram := await receive_datagram(self.sock)) is not None:
                for fd in datagram.fds:
                    os.close(fd)
                if not self._waiting:
                    raise ZdsProtocolError("an ack for no request")
                ack = parse_ack(datagram.data)
                reply = self._waiting.popleft()
                reply.ack = ack
                reply.done.set()
        except (OSError, ZdsProtocolError) as exc:
            reason = str(exc)
        finally:
            self.close()
        log.info("zds_client_disconnected", connection=self.number, reason=reason)

    def close(self) -> None:
        if self.open:
            self.closed.set()
            self.sock.close()
            while self._waiting:
                self._waiting.popleft().done.set()

    async def request(self, message: Request, netns: str | None = None) -> Ack:
        """Send ``message`` (with the namespace at path ``netns`` opened and passed beside
        it) and wait for its ack; :class:`_Lost` if the connection ends first. Raises
        OSError if ``netns`` cannot be opened."""
        reply = _Reply(trio.Event())
        async with self._send_lock:
            if not self.open:
                raise _Lost()
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC) if netns is not None else None
            self._waiting.append(reply)
            try:
                await send_datagram(self.sock, encode(message), fd)
            except BaseException as exc:  # not sent: nothing will answer it
                # The reader may have seen the connection end meanwhile and let every
                # waiting request go already (a reset while this one was being sent).
                if reply in self._waiting:
                    self._waiting.remove(reply)
                if isinstance(exc, OSError):
                    self.close()
                    raise _Lost() from exc
                raise
            finally:
                if fd is not None:
                    os.close(fd)
        await reply.done.wait()
        if reply.ack is None:
            raise _Lost()
        return reply.ack


@dataclass(frozen=True)
class _Wanted:
    pod: PodInfo
    netns: str


class ZdsClient:
    def __init__(
        self,
        path: Path = DEFAULT_SOCKET,
        *,
        poll_seconds: float = POLL_SECONDS,
        backoff: Backoff = RECONNECT,
        request_seconds: float = REQUEST_SECONDS,
    ) -> None:
        self.path = path
        self._poll = poll_seconds
        self._backoff = backoff
        self._request_seconds = request_seconds
        self._wanted: dict[str, _Wanted] = {}
        self._complete = False  # the agent's set is complete: snapshot_sent may go
        self._current: _Connection | None = None
        self._changed = trio.Event()  # a new current connection, or the set completed
        self._connections = 0

    # ---- the agent's calls ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a ztunnel is connected (it may still be being handed the set)."""
        return self._current is not None and self._current.open

    def pods(self) -> dict[str, PodInfo]:
        """The pods wanted now, by Kubernetes uid."""
        return {uid: wanted.pod for uid, wanted in self._wanted.items()}

    def synced(self) -> None:
        """The agent has handed every pod it wants: ztunnel may let go of the rest (the
        ``snapshot_sent`` of this and every later connection)."""
        self._complete = True
        self._wake()

    async def add(
        self, pod: PodInfo | Mapping[str, Any], netns: str, *, seconds: float = REQUEST_SECONDS
    ) -> None:
        """Want ``pod`` (a :class:`PodInfo` or its JSON form) captured in the namespace
        at path ``netns``; return once the current ztunnel has its listeners up."""
        try:
            info = pod if isinstance(pod, PodInfo) else PodInfo.from_json(dict(pod))
        except ZdsProtocolError as exc:
            raise ZdsError(f"not a pod ztunnel can take: {exc}") from None
        wanted = _Wanted(info, netns)
        self._wanted[info.uid] = wanted
        with trio.move_on_after(seconds):
            conn: _Connection | None = None
            while True:
                conn = await self._wait_connected(other_than=conn)
                try:
                    ack = await self._send_add(conn, info.uid)
                except _Lost:
                    continue  # the next ztunnel is handed the pod: wait for its answer
                except OSError as exc:
                    raise ZdsError(f"cannot open the pod's network namespace: {exc}") from exc
                if ack is None:
                    raise ZdsError(f"pod {info.key} was removed while it was being added")
                if ack.error is not None and ack.error.startswith(DRAINING):
                    continue  # the new ztunnel is handed the pod: wait for its answer
                if ack.error is not None:
                    raise ZdsError(f"ztunnel refused pod {info.key}: {ack.error}")
                return
        raise ZdsError(f"no ztunnel took pod {info.key} within {seconds:g}s ({self.path})")

    async def remove(self, uid: str, *, seconds: float = REQUEST_SECONDS) -> None:
        """Want the pod ``uid`` no more; return once the current ztunnel released it."""
        self._wanted.pop(uid, None)
        conn = self._current
        if conn is None or not conn.open:
            return  # the next ztunnel's snapshot_sent lets it go
        with trio.move_on_after(seconds):
            try:
                ack = await conn.request(Remove(uid))
            except _Lost:
                return
            if ack.error is not None and not ack.error.startswith(DRAINING):
                raise ZdsError(f"ztunnel did not release pod {uid}: {ack.error}")
            return  # released (a draining ztunnel lets every pod go as it exits)
        raise ZdsError(f"ztunnel did not release pod {uid} within {seconds:g}s")

    # ---- connections ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection to the newest ztunnel at the path until cancelled."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            next_delay = self._backoff.delays()
            while True:
                key = socket_key(self.path)
                conn = self._current
                if conn is not None and conn.open and conn.key == key:
                    with trio.move_on_after(self._poll):
                        await conn.closed.wait()
                    continue
                if key is not None:
                    try:
                        await self._connect(nursery, key)
                        next_delay = self._backoff.delays()
                        continue
                    except (OSError, ZdsError) as exc:
                        delay = next_delay()
                        log.info("zds_client_connect_failed", path=str(self.path),
                                 reason=str(exc), retry_in=round(delay, 3))  # fmt: skip
                else:
                    delay = self._poll
                with trio.move_on_after(delay):  # sooner if another ztunnel binds the path
                    while socket_key(self.path) == key:  # noqa: ASYNC110 - a file to poll
                        await trio.sleep(self._poll)

    async def _connect(self, nursery: trio.Nursery, key: NamespaceKey) -> None:
        """Connect, say hello, become the current connection, hand every wanted pod, and
        say snapshot_sent if the set is complete. Raises OSError or ZdsError."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            await sock.connect(str(self.path))
        except BaseException:
            sock.close()
            raise
        self._connections += 1
        conn = _Connection(sock, key, self._connections)
        nursery.start_soon(conn.read_acks)
        try:
            with trio.fail_after(self._request_seconds):
                ack = await conn.request(Hello())
            if ack.error is not None:
                raise ZdsError(f"ztunnel refused hello: {ack.error}")
            previous, self._current = self._current, conn
            self._wake()
            log.info("zds_client_connected", connection=conn.number, path=str(self.path),
                     replaces=previous.number if previous else None)  # fmt: skip
            failed = 0
            for uid in list(self._wanted):
                with trio.fail_after(self._request_seconds):
                    try:
                        ack_or_none = await self._send_add(conn, uid)
                    except OSError as exc:  # its namespace is gone: not handed, let go
                        log.info("zds_client_pod_gone", uid=uid, reason=str(exc))
                        continue
                if ack_or_none is not None and ack_or_none.error is not None:
                    failed += 1
                    log.warning("zds_client_pod_refused", uid=uid, reason=ack_or_none.error)
            if self._complete:
                await self._snapshot_sent(conn)
            log.info("zds_client_synced", connection=conn.number, pods=len(self._wanted),
                     refused=failed, complete=self._complete)  # fmt: skip
        except (_Lost, trio.TooSlowError) as exc:
            conn.close()
            raise ZdsError(f"ztunnel went away or stopped answering: {exc!r}") from None
        except BaseException:
            conn.close()
            raise
        if not self._complete:
            nursery.start_soon(self._snapshot_sent_when_complete, conn)

    async def _snapshot_sent_when_complete(self, conn: _Connection) -> None:
        while not self._complete:
            await self._changed.wait()
        if conn is self._current and conn.open:
            await self._snapshot_sent(conn)

    async def _snapshot_sent(self, conn: _Connection) -> None:
        with trio.fail_after(self._request_seconds):
            try:
                ack = await conn.request(SnapshotSent())
            except _Lost:
                return
        if ack.error is not None:
            log.warning("zds_client_snapshot_refused", reason=ack.error)

    async def _send_add(self, conn: _Connection, uid: str) -> Ack | None:
        """Hand the pod ``uid`` as wanted now to ``conn``; None if it is not wanted."""
        wanted = self._wanted.get(uid)
        if wanted is None:
            return None
        return await conn.request(Add(wanted.pod), wanted.netns)

    async def _wait_connected(self, other_than: _Connection | None = None) -> _Connection:
        """The current connection, once there is an open one (not ``other_than``)."""
        while self._current is None or not self._current.open or self._current is other_than:
            await self._changed.wait()
        return self._current

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
