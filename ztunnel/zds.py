"""ztunnel's end of the node agent's socket (``ztunnel.sock``): pods handed over
with their network namespaces as file descriptors (the protocol: :mod:`mesh.zds`
and ``docs/node.md``).

:class:`ZdsServer` binds a fresh unix ``SOCK_SEQPACKET`` socket at its path
(mode 0600) and serves the agent's connections, each in its own task and each
message answered in order. The pods it is handed go to
:meth:`Ztunnel.set_pod <ztunnel.ztunnel.Ztunnel.set_pod>` keyed
``<namespace>/<name>``, with the identity
``spiffe://<trust domain>/ns/<namespace>/sa/<serviceAccount>``, the pod's first
IPv4 address and the namespace received.

- ``add`` is answered once the pod's listeners are up, or with an ``error``:
  at once if the CA refuses the pod's identity, else after ``ack_seconds``
  (:data:`ADD_ACK_SECONDS`) with the last setup failure. Either way ztunnel
  keeps the pod and keeps setting it up with backoff (its traffic fails closed
  meanwhile) until a ``remove`` or a ``snapshot_sent`` lets it go: what to do
  about a pod that cannot be captured is the agent's decision.
- A malformed message, a bad file descriptor or an unusable pod is answered
  with an ``error`` and logged once (``zds_message_refused``); the connection
  and every pod stay as they were.
- A connection that ends leaves every pod as it is.
- A draining ztunnel answers every request but ``hello`` with an error that
  starts with :data:`mesh.zds.DRAINING`: its pods are let go as it exits.
- ztunnel is not ready (``/healthz/ready``, and the ready file a hand-over waits
  for before the old ztunnel drains) until a ``snapshot_sent`` said it has every
  pod of the node.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio

from mesh.identity import IdentityError, SpiffeId
from mesh.netns import NetnsError, NetworkNamespace
from mesh.zds import (
    DRAINING,
    PROTOCOL_VERSION,
    Ack,
    Add,
    Hello,
    Remove,
    Request,
    SnapshotSent,
    ZdsProtocolError,
    encode,
    parse_request,
    receive_datagram,
    send_datagram,
)
from ztunnel.ztunnel import PodSpec, Ztunnel

log = structlog.get_logger("ztunnel.zds")

# How long an ``add`` may wait for the pod's listeners before it is answered with the
# reason they are not up: a certificate from a slow CA and three listens fit well within
# it, and an agent (and the kubelet's CNI call behind it, 20 s) hears of trouble in time.
ADD_ACK_SECONDS = 5.0
BACKLOG = 16


@dataclass
class _Session:
    """One connection's state: whether ``hello`` came, and the pods added since."""

    number: int
    hello: bool = False
    added: set[str] = field(default_factory=set)


class ZdsServer:
    def __init__(
        self,
        ztunnel: Ztunnel,
        path: Path,
        *,
        trust_domain: str,
        ack_seconds: float = ADD_ACK_SECONDS,
    ) -> None:
        self._zt = ztunnel
        self.path = path
        self._trust_domain = trust_domain
        self._ack_seconds = ack_seconds
        self._connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen at the path and serve every connection until cancelled; ``started`` with
        the path once a connection to it reaches this ztunnel."""
        listener = await self._bind()
        with listener:
            log.info("zds_listening", path=str(self.path))
            async with trio.open_nursery() as nursery:
                task_status.started(self.path)
                while True:
                    sock, _ = await listener.accept()
                    self._connections += 1
                    nursery.start_soon(self._serve_connection, sock, self._connections)

    async def _bind(self) -> trio.socket.SocketType:
        """A fresh socket, bound under a temporary name, made 0600, then renamed over the
        path: whatever was there (an old ztunnel's socket, which keeps its connections) is
        replaced at once, and the path never names a socket others may connect to."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            await sock.bind(str(temporary))
            try:
                os.chmod(temporary, 0o600)
                sock.listen(BACKLOG)
                os.rename(temporary, self.path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except BaseException:
            sock.close()
            raise
        return sock

    async def _serve_connection(self, sock: trio.socket.SocketType, number: int) -> None:
        session = _Session(number)
        log.info("zds_connected", connection=number)
        with sock:
            try:
                while (datagram := await receive_datagram(sock)) is not None:
                    fds = list(datagram.fds)
                    try:
                        if datagram.truncated:
                            raise ZdsProtocolError("a message is one datagram of at most 64 KiB")
                        request = parse_request(datagram.data, len(fds))
                    except ZdsProtocolError as exc:
                        ack = Ack(exc.uid, str(exc))
                    else:
                        ack = await self._answer(session, request, fds)
                    finally:
                        for fd in fds:  # whatever was not taken (any extra, any refused)
                            os.close(fd)
                    if ack.error is not None:
                        log.warning("zds_message_refused", connection=number, uid=ack.uid,
                                    reason=ack.error)  # fmt: skip
                    await send_datagram(sock, encode(ack))
            except OSError as exc:  # the agent went away mid-message
                log.info("zds_connection_failed", connection=number, reason=str(exc))
        log.info("zds_disconnected", connection=number, pods=len(self._zt.pods()))

    async def _answer(self, session: _Session, request: Request, fds: list[int]) -> Ack:
        """Carry out one request; the fd of an ``add`` is taken out of ``fds`` if used."""
        if isinstance(request, Hello):
            if request.version != PROTOCOL_VERSION:
                return Ack(error=f"unsupported version {request.version}: this ztunnel speaks"
                                 f" {PROTOCOL_VERSION}")  # fmt: skip
            session.hello, session.added = True, set()
            return Ack()
        uid = request.pod.uid if isinstance(request, Add) else getattr(request, "uid", None)
        if not session.hello:
            return Ack(uid, "expected hello first")
        if self._zt.draining:  # its pods are being let go: the new ztunnel is the agent's
            return Ack(uid, f"{DRAINING}: hand the pods to the new one")
        if isinstance(request, Add):
            return await self._add(session, request, fds.pop())
        if isinstance(request, Remove):
            return await self._remove(session, request)
        assert isinstance(request, SnapshotSent)
        return await self._reconcile(session)

    async def _add(self, session: _Session, request: Add, fd: int) -> Ack:
        pod = request.pod
        try:
            ip = pod.ipv4()
            if ip is None:
                raise ValueError(f"no IPv4 address in {list(pod.ips)}: ambit captures IPv4")
            identity = SpiffeId(self._trust_domain, pod.namespace, pod.service_account)
        except (ValueError, IdentityError) as exc:
            os.close(fd)
            return Ack(pod.uid, str(exc))
        try:
            netns = NetworkNamespace.from_fd(f"pod {pod.key}", fd)  # now the netns's to close
        except NetnsError as exc:
            return Ack(pod.uid, str(exc))
        spec = PodSpec(pod.key, ip, identity, netns.key, pod.uid)
        slot = self._zt.set_pod(spec, netns)
        session.added.add(pod.key)
        why_not = await slot.wait_captured(self._ack_seconds)
        return Ack(pod.uid, why_not)

    async def _remove(self, session: _Session, request: Remove) -> Ack:
        for key, spec in self._zt.pods().items():
            if spec.pod_uid == request.uid:
                session.added.discard(key)
                slot = self._zt.release(key, request.uid)
                if slot is not None:
                    await slot.done.wait()
                    log.info("zds_pod_removed", connection=session.number, pod=key,
                             pod_uid=request.uid)  # fmt: skip
        return Ack(request.uid)  # a pod this ztunnel does not have is as good as removed

    async def _reconcile(self, session: _Session) -> Ack:
        released = [
            slot
            for key in self._zt.pods()
            if key not in session.added and (slot := self._zt.release(key)) is not None
        ]
        for slot in released:
            await slot.done.wait()
        self._zt.pods_complete()
        log.info(
            "zds_snapshot_reconciled",
            connection=session.number,
            kept=len(self._zt.pods()),
            released=sorted(s.spec.uid for s in released),
        )
        return Ack()
