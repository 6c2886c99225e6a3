"""One captured pod: its three listeners inside the pod's network namespace.

- 15001 outbound: :class:`ztunnel.outbound.Outbound`;
- 15008 inbound HBONE and 15006 inbound plaintext: :class:`ztunnel.inbound.Inbound`.

Every socket ztunnel makes here carries ``SO_MARK 0x539``, so the capture
rules never catch ztunnel itself. Each connection runs behind
:func:`mesh.net.serve_listeners`' boundary: one that fails is logged and
closed alone, and the pod's listeners keep serving. Connections that wait
(a dial, a handshake) or linger half-closed are bounded per source by the
process's :class:`~ztunnel.admission.Admission`, shared by every pod.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import trio

from mesh.constants import HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_CAPTURE_PORT
from mesh.hbone import HboneSettings
from mesh.hbone.client import HboneClientPool
from mesh.hbone.server import ServerConnections, serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.model import MeshSnapshot
from mesh.net import serve_listeners
from mesh.netns import NetworkNamespace
from mesh.reason import Failure, Reason
from mesh.record import Telemetry
from ztunnel.admission import Admission
from ztunnel.inbound import Inbound
from ztunnel.outbound import Outbound


class CapturedPod:
    """Listeners and connection handling for one meshed pod (``uid``) on this node."""

    def __init__(
        self,
        uid: str,
        identity: SpiffeId,
        netns: NetworkNamespace,
        *,
        snapshot: Callable[[], MeshSnapshot],
        certificate: Callable[[SpiffeId], WorkloadCertificate],
        pool: HboneClientPool,
        telemetry: Telemetry,
        admission: Admission,
        settings: HboneSettings,
        dial_timeout: float,
        listen_ip: str = "0.0.0.0",
    ) -> None:
        self.uid = uid
        self.identity = identity
        self.netns = netns
        self._certificate = certificate
        self._settings = settings
        self._listen_ip = listen_ip
        self._accepting = trio.CancelScope()
        self._hbone_connections = ServerConnections()
        self._admission = admission
        self.inbound = Inbound(
            uid, netns, snapshot=snapshot, telemetry=telemetry, admission=admission,
            dial_timeout=dial_timeout, pool=pool,
        )  # fmt: skip
        self.outbound = Outbound(
            uid, netns, snapshot=snapshot, pool=pool, telemetry=telemetry, admission=admission,
            dial_timeout=dial_timeout,
        )  # fmt: skip

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the three listeners in the pod's netns (on every address, unless a
        ``listen_ip`` was given); ``started`` once all listen."""
        listeners: list[trio.socket.SocketType] = []
        try:
            for port in (OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT):
                # SO_REUSEPORT: a new ztunnel listens beside this one before it stops.
                listeners.append(
                    await self.netns.listen(port, host=self._listen_ip, reuse_port=True)
                )
        except BaseException:
            for sock in listeners:
                sock.close()
            raise
        outbound, plaintext, hbone = listeners
        async with trio.open_nursery() as handlers:
            # The accept loops run under their own scope: a drain stops them while the
            # connections they accepted (in ``handlers``) finish.
            await handlers.start(self._accept, handlers, outbound, plaintext, hbone)
            task_status.started()

    async def _accept(
        self,
        handlers: trio.Nursery,
        outbound: trio.socket.SocketType,
        plaintext: trio.socket.SocketType,
        hbone: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        identity = self.identity
        uid = self.uid
        with self._accepting:
            async with trio.open_nursery() as accepting:
                for handler, listener, name in (
                    (self.outbound.handle, outbound, f"{uid} outbound"),
                    (self.inbound.plaintext, plaintext, f"{uid} inbound"),
                ):
                    await accepting.start(
                        partial(
                            serve_listeners, handler, [listener], handler_nursery=handlers,
                            name=name,
                        )
                    )  # fmt: skip
                await accepting.start(
                    partial(
                        serve_hbone,
                        self.inbound.hbone,
                        certificate=lambda: self._certificate(identity),
                        listener=hbone,
                        settings=self._settings,
                        handler_nursery=handlers,
                        connections=self._hbone_connections,
                        pending=self._admission,
                    )
                )
                task_status.started()

    async def drain(self) -> None:
        """Stop accepting (the listeners close) and say GOAWAY to every HBONE connection:
        the streams open on them finish, no new one starts. :meth:`serve` returns once
        every connection has ended."""
        self._accepting.cancel()
        await self._hbone_connections.drain()

    def cut_at_deadline(self, seconds: float) -> None:
        """What is still open is about to be cut because a drain's deadline passed: each
        connection's access log line and metrics say so (``drain_deadline``)."""
        cut = Failure(Reason.DRAIN_DEADLINE, f"cut: the drain deadline ({seconds:g}s) passed")
        self.inbound.cut = self.outbound.cut = cut

    def open_connections(self) -> int:
        """Connections being relayed now, both ways."""
        return self.inbound.open_connections() + self.outbound.open_connections()

    def recheck_policies(self) -> None:
        """Close inbound connections the current policies no longer allow."""
        self.inbound.recheck_policies()
