"""The config stream's server: pushes the mesh model to every proxy.

The control plane calls :meth:`ConfigServer.publish` with each new
:class:`~mesh.model.MeshSnapshot`; every subscribed proxy gets the
:class:`~mesh.model.Delta` from its version, or the whole snapshot when it is
new, too far behind, or asked for it. :meth:`ConfigServer.handle` is an HBONE
request handler (see :mod:`mesh.config_stream` for the messages).

A proxy that reads too slowly (its queue of updates is full) is disconnected;
it reconnects and resynchronises, so a stuck proxy never holds memory here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog
import trio

from mesh.config_stream import ConfigStreamError, Message, MessageStream
from mesh.hbone import HboneRequest
from mesh.identity import SpiffeId
from mesh.model import Delta, MeshSnapshot, diff
from mesh.reason import Reason
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.config_server")

HELLO_TIMEOUT: Final = 10.0
QUEUE_LIMIT: Final = 32
HISTORY: Final = 64

ProxyAuthenticator = Callable[[str | None, str, SpiffeId], str | None]
"""(bearer token, node name, peer identity) -> None if allowed, else why not."""


def node_token_authenticator(
    tokens: TokenTable, allowed_identities: frozenset[SpiffeId]
) -> ProxyAuthenticator:
    """Allow a proxy whose certificate is one of ``allowed_identities`` and whose
    bearer token is the one issued to the node it names."""

    def check(token: str | None, node: str, peer: SpiffeId) -> str | None:
        if peer not in allowed_identities:
            return f"{peer} is not a proxy identity"
        if token is None or tokens.caller_for(token) != node:
            return f"no valid token for node {node!r}"
        return None

    return check


@dataclass(eq=False)
class _Subscriber:
    node: str
    peer: SpiffeId
    channel: trio.MemorySendChannel[Message]
    version: int | None = None  # last version sent
    acked: int | None = None


@dataclass
class NodeStatus:
    node: str
    connected: bool
    acked_version: int | None
    peer: str


class ConfigServer:
    def __init__(self, authenticate: ProxyAuthenticator, *, queue_limit: int = QUEUE_LIMIT) -> None:
        self._authenticate = authenticate
        self._queue_limit = queue_limit
        self._snapshot: MeshSnapshot | None = None
        self._history: deque[Delta] = deque(maxlen=HISTORY)
        self._subscribers: set[_Subscriber] = set()
        self._last_seen: dict[str, NodeStatus] = {}
        self._published = trio.Event()

    @property
    def snapshot(self) -> MeshSnapshot | None:
        return self._snapshot

    def nodes(self) -> list[NodeStatus]:
        """Every node that ever subscribed: connected now, and what it acknowledged."""
        return sorted(self._last_seen.values(), key=lambda s: s.node)

    def publish(self, snapshot: MeshSnapshot) -> None:
        """Make ``snapshot`` current and push the change to every subscriber."""
        old = self._snapshot
        if old is not None and snapshot.version <= old.version:
            raise ValueError(f"version {snapshot.version} is not after {old.version}")
        if old is not None:
            self._history.append(diff(old, snapshot))
        self._snapshot = snapshot
        self._published.set()
        for sub in list(self._subscribers):
            self._push(sub, self._catch_up(sub.version))

    def _catch_up(self, version: int | None) -> list[Message]:
        """Messages that bring a proxy at ``version`` to the current snapshot."""
        current = self._snapshot
        if current is None or version == current.version:
            return []
        if version is not None:
            deltas = [d for d in self._history if d.from_version >= version]
            # Far behind, one snapshot is cheaper than many deltas and fits the queue.
            if deltas and deltas[0].from_version == version and len(deltas) < self._queue_limit:
                return [{"type": "delta", "delta": d.to_json()} for d in deltas]
        return [{"type": "snapshot", "snapshot": current.to_json()}]

    def _push(self, sub: _Subscriber, messages: list[Message]) -> None:
        try:
            for message in messages:
                sub.channel.send_nowait(message)
        except trio.WouldBlock:
            log.warning(
                "config_subscriber_lagging", node=sub.node, reason="update queue full; resync"
            )
            self._subscribers.discard(sub)
            sub.channel.close()
            return
        if self._snapshot is not None and messages:
            sub.version = self._snapshot.version

    async def handle(self, request: HboneRequest) -> None:
        """HBONE handler for one proxy's config stream."""
        node = request.header("ambit-node") or ""
        auth = request.header("authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else None
        refusal = self._authenticate(token, node, request.peer)
        if refusal is not None:
            log.warning(
                "config_stream_refused", node=node, src_identity=str(request.peer), reason=refusal
            )
            await request.reject(Reason.NOT_AUTHORIZED if token else Reason.UNAUTHENTICATED)
            return
        stream = await request.accept()
        messages = MessageStream(stream)
        hello: Message | None = None
        with trio.move_on_after(HELLO_TIMEOUT):
            hello = await messages.receive()
        if hello is None or hello.get("type") != "hello" or hello.get("node") != node:
            log.warning("config_stream_refused", node=node, reason=f"bad or no hello: {hello!r}")
            return
        await self._serve(node, request.peer, hello.get("version"), messages)

    async def _serve(
        self, node: str, peer: SpiffeId, version: object, messages: MessageStream
    ) -> None:
        send, receive = trio.open_memory_channel[Message](self._queue_limit)
        sub = _Subscriber(node, peer, send, version if isinstance(version, int) else None)
        # Register and catch up in one synchronous step: no publish can slip between.
        self._subscribers.add(sub)
        self._push(sub, self._catch_up(sub.version))
        status = NodeStatus(node, True, None, str(peer))
        self._last_seen[node] = status
        log.info("config_subscriber_joined", node=node, src_identity=str(peer), version=version)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, sub, status, messages, nursery.cancel_scope)
                async with receive:
                    async for message in receive:
                        await messages.send(message)
                nursery.cancel_scope.cancel()  # lagging: channel closed, end the stream
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConfigStreamError) as group:
            log.info("config_subscriber_left", node=node, reason=str(group.exceptions[0]))
        finally:
            self._subscribers.discard(sub)
            status.connected = False

    async def _read_acks(
        self,
        sub: _Subscriber,
        status: NodeStatus,
        messages: MessageStream,
        scope: trio.CancelScope,
    ) -> None:
        while (message := await messages.receive()) is not None:
            kind = message.get("type")
            if kind == "ack":
                sub.acked = status.acked_version = message.get("version")
            elif kind == "nack":
                log.error(
                    "config_rejected_by_proxy",
                    node=sub.node,
                    version=message.get("version"),
                    reason=message.get("error"),
                )
        scope.cancel()  # the proxy ended its side
