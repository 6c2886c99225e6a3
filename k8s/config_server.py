"""The config stream's server: pushes to every proxy its own view of the mesh model.

The control plane calls :meth:`ConfigServer.publish` with each new
:class:`~mesh.model.MeshSnapshot`. A proxy subscribes to one view
(:mod:`k8s.views`): a ztunnel to its node's, a waypoint to its namespace's. Per view
key the server keeps the view last sent and the deltas between consecutive views
(the last :data:`HISTORY`), so a proxy gets the deltas of its own view from its
version, or the whole view when it is new, too far behind, or asks for it. A
publish that leaves a view unchanged sends its subscribers nothing: an empty delta
would make every proxy rebuild its snapshot and re-check its connections for a
change that is not its own. So a proxy's version moves only when its view changes,
and two proxies both up to date may hold different versions; :class:`ProxyStatus`
has the version each should hold. :meth:`ConfigServer.handle`
is an HBONE request handler (see :mod:`mesh.config_stream` for the messages).

Who may have which view is decided before the stream is accepted, so a refusal is an
HBONE status: a ztunnel shows the ztunnel identity and its node's token
(:data:`ProxyAuthenticator`, 401 without a token, 403 with another node's, 503 when the
token could not be checked: on Kubernetes the API server's TokenReview did not answer); a
waypoint asks for a namespace with ``ambit-namespace`` and a certificate that the
:data:`WaypointAuthorizer` says is a waypoint of it (403 otherwise); another role,
or a waypoint naming no namespace, is 400. Both are passed in, so local mode and
Kubernetes bring their own.

Versions count from 1 in each control-plane process, so a version alone does not say
which config a proxy holds: a restarted control plane, or another replica, has its own
v1. Every snapshot and delta carries the server's ``epoch`` (random, one per
:class:`ConfigServer`), a proxy's hello says the epoch of the version it holds, and a
proxy from another epoch (or one that names none) is sent the whole view.

Each view is computed once per published version, whatever the number of its
subscribers (:class:`k8s.views.Views`). Memory stays bounded: a view's entries are
the snapshot's own objects; the state of a view nobody subscribes to any more is
kept, not updated, for a proxy that reconnects, up to :data:`IDLE_VIEWS` of them
(the least recently left go first); a proxy that reads too slowly (its queue of
updates is full) is disconnected, and resynchronises when it reconnects.

Tap: a proxy whose hello offers tap is attached to :attr:`ConfigServer.taps`
(:class:`k8s.tap_hub.TapHub`), which sends it taps through the same queue and hears its
``events`` messages; see :mod:`mesh.config_stream`.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import structlog
import trio

from k8s.tap_hub import TapHub
from k8s.views import ViewKey, Views
from mesh.config_stream import (
    NAMESPACE_HEADER,
    NODE_HEADER,
    ROLE_HEADER,
    ROLES,
    ConfigStreamError,
    Message,
    MessageStream,
    Role,
)
from mesh.constants import WAYPOINT_SERVICE_ACCOUNT
from mesh.hbone import HboneRequest
from mesh.identity import SpiffeId
from mesh.model import Delta, MeshSnapshot, diff
from mesh.reason import Failure, Reason
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.config_server")

HELLO_TIMEOUT: Final = 10.0
QUEUE_LIMIT: Final = 32
HISTORY: Final = 64  # deltas kept per view
IDLE_VIEWS: Final = 256  # views kept with no subscriber, for proxies that reconnect

ProxyAuthenticator = Callable[[str | None, str, SpiffeId], Awaitable[str | Failure | None]]
"""A ztunnel's (bearer token, node name, peer identity) -> None if allowed, else why not:
a sentence (401 without a token, 403 with one), or a :class:`~mesh.reason.Failure` with
its own reason (the token could not be checked)."""

WaypointAuthorizer = Callable[[SpiffeId, str], str | None]
"""A waypoint's (peer identity, namespace asked) -> None if allowed, else why not."""


def node_token_authenticator(
    tokens: TokenTable, allowed_identities: frozenset[SpiffeId]
) -> ProxyAuthenticator:
    """Allow a proxy whose certificate is one of ``allowed_identities`` and whose
    bearer token is the one issued to the node it names."""

    async def check(token: str | None, node: str, peer: SpiffeId) -> str | None:
        if peer not in allowed_identities:
            return f"{peer} is not a proxy identity"
        if token is None or tokens.caller_for(token) != node:
            return f"no valid token for node {node!r}"
        return None

    return check


def waypoint_authorizer(service_accounts: Iterable[str] = ()) -> WaypointAuthorizer:
    """Allow a certificate of namespace N to have N's waypoint view when its service
    account is ``waypoint`` (Istio's default waypoint) or one of ``service_accounts``
    (a waypoint runs as its Gateway's name). The trust domain was checked by the HBONE
    server. A source that knows the Gateways (Kubernetes) can pass a stricter one."""
    allowed = frozenset({WAYPOINT_SERVICE_ACCOUNT, *service_accounts})

    def check(peer: SpiffeId, namespace: str) -> str | None:
        if peer.namespace != namespace:
            return f"{peer} is not of namespace {namespace!r}"
        if peer.service_account not in allowed:
            names = ", ".join(sorted(allowed))
            return f"service account {peer.service_account!r} is not a waypoint's ({names})"
        return None

    return check


def gateway_waypoint_authorizer(
    snapshot: Callable[[], MeshSnapshot | None],
) -> WaypointAuthorizer:
    """Allow a certificate of namespace N to have N's waypoint view when its service
    account is the name of a waypoint Gateway of N in the current snapshot (a waypoint
    runs as its Gateway's name), or Istio's default ``waypoint``. What the control plane
    uses unless it is given another."""

    def check(peer: SpiffeId, namespace: str) -> str | None:
        if peer.namespace != namespace:
            return f"{peer} is not of namespace {namespace!r}"
        account = peer.service_account
        if account == WAYPOINT_SERVICE_ACCOUNT:
            return None
        current = snapshot()
        if current is not None and current.gateway(f"{namespace}/{account}") is not None:
            return None
        return (
            f"service account {account!r} is not a waypoint's: namespace {namespace!r} has no"
            f" waypoint Gateway {account!r} (a waypoint runs as its Gateway's name;"
            f" {WAYPOINT_SERVICE_ACCOUNT!r} is always accepted)"
        )

    return check


@dataclass
class ProxyStatus:
    """A proxy as the config server last saw it. ``name`` is its view's: the node of a
    ztunnel, the namespace of a waypoint; ``node`` is where it says it runs. ``version``
    is the version of its view last sent to it: it is in step once ``acked_version``
    reaches it. ``address`` is the IP its stream came from (where the control plane's
    observer scrapes its ``/metrics``), "" if unknown."""

    role: Role
    name: str
    node: str
    connected: bool
    peer: str
    version: int | None = None
    acked_version: int | None = None
    address: str = ""


@dataclass(frozen=True)
class ConfigServerStatistics:
    subscribers: int
    views: int  # view keys whose state is kept, with or without subscribers
    idle_views: int  # of those, the ones without a subscriber


@dataclass(eq=False)
class _Subscriber:
    key: ViewKey
    channel: trio.MemorySendChannel[Message]
    status: ProxyStatus
    version: int | None = None  # the version it holds: said in hello, then last sent


@dataclass(eq=False)
class _ViewState:
    """One view key: the view last sent, and the deltas that led to it."""

    key: ViewKey
    view: MeshSnapshot | None = None
    synced: int | None = None  # the snapshot version ``view`` was last compared with
    history: deque[Delta] = field(default_factory=lambda: deque(maxlen=HISTORY))
    subscribers: set[_Subscriber] = field(default_factory=set)


class ConfigServer:
    def __init__(
        self,
        authenticate: ProxyAuthenticator,
        *,
        authorize_waypoint: WaypointAuthorizer | None = None,
        queue_limit: int = QUEUE_LIMIT,
        idle_views: int = IDLE_VIEWS,
    ) -> None:
        self._authenticate = authenticate
        self._authorize_waypoint = authorize_waypoint or waypoint_authorizer()
        self._queue_limit = queue_limit
        self._idle_limit = idle_views
        self._views: Views | None = None
        self._states: dict[ViewKey, _ViewState] = {}
        self._idle: dict[ViewKey, None] = {}  # keys without subscribers, oldest first
        self._last_seen: dict[tuple[Role, str, str], ProxyStatus] = {}
        self.epoch = secrets.token_hex(8)  # this server's numbering of versions
        self.taps = TapHub()  # ambit tap: the proxies that offer it, the taps open

    @property
    def snapshot(self) -> MeshSnapshot | None:
        return self._views.snapshot if self._views is not None else None

    def nodes(self) -> list[ProxyStatus]:
        """Every ztunnel that ever subscribed: connected now, and what it acknowledged."""
        return [s for s in self.proxies() if s.role == "ztunnel"]

    def end_streams(self) -> int:
        """End every proxy's stream (a drain): each proxy keeps its config and reconnects,
        to this server's successor. Returns how many were ended."""
        ended = 0
        for state in self._states.values():
            for sub in list(state.subscribers):
                sub.channel.close()  # _serve sees it closed and ends the stream
                ended += 1
        return ended

    def proxies(self) -> list[ProxyStatus]:
        """Every proxy that ever subscribed, ztunnels and waypoints, by role and name."""
        return [self._last_seen[k] for k in sorted(self._last_seen)]

    def statistics(self) -> ConfigServerStatistics:
        return ConfigServerStatistics(
            subscribers=sum(len(s.subscribers) for s in self._states.values()),
            views=len(self._states),
            idle_views=len(self._idle),
        )

    def publish(self, snapshot: MeshSnapshot) -> None:
        """Make ``snapshot`` current and push each subscribed view's change, if any."""
        old = self.snapshot
        if old is not None and snapshot.version <= old.version:
            raise ValueError(f"version {snapshot.version} is not after {old.version}")
        self._views = Views(snapshot, previous=self._views)
        for state in list(self._states.values()):
            if state.subscribers:
                self._advance(state)
                for sub in list(state.subscribers):
                    self._push(state, sub, self._catch_up(state, sub.version))

    def _advance(self, state: _ViewState) -> None:
        """Bring ``state`` to the current snapshot: a delta when its view changed."""
        views = self._views
        if views is None or state.synced == views.snapshot.version:
            return
        new = views.get(state.key)
        if state.view is None:
            state.view = new
        else:
            delta = diff(state.view, new)
            if not (delta.upserts or delta.removes):  # unchanged: keep the version proxies hold
                state.synced = views.snapshot.version
                return
            state.history.append(delta)
            state.view = new
        state.synced = views.snapshot.version

    def _catch_up(self, state: _ViewState, version: int | None) -> list[Message]:
        """Messages that bring a proxy at ``version`` to ``state``'s view."""
        view = state.view
        if view is None or version == view.version:
            return []
        if version is not None:
            deltas = [d for d in state.history if d.from_version >= version]
            # Far behind, one snapshot is cheaper than many deltas and fits the queue.
            if deltas and deltas[0].from_version == version and len(deltas) < self._queue_limit:
                return [
                    {"type": "delta", "delta": d.to_json(), "epoch": self.epoch} for d in deltas
                ]
        return [{"type": "snapshot", "snapshot": view.to_json(), "epoch": self.epoch}]

    def _push(self, state: _ViewState, sub: _Subscriber, messages: list[Message]) -> None:
        try:
            for message in messages:
                sub.channel.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # Its stream is ending (the proxy left; its task has not run its cleanup yet):
            # nothing to send, and nothing to stop the others' updates.
            state.subscribers.discard(sub)
            return
        except trio.WouldBlock:
            log.warning(
                "config_subscriber_lagging",
                node=sub.status.node,
                role=sub.status.role,
                view=sub.status.name,
                reason="update queue full; resync",
            )
            state.subscribers.discard(sub)
            sub.channel.close()
            return
        if messages and state.view is not None:
            sub.version = sub.status.version = state.view.version

    async def _admit(self, request: HboneRequest) -> tuple[ViewKey, str] | Failure:
        """The view a CONNECT asks for and the node it says it runs on, or why not."""
        node = request.header(NODE_HEADER) or ""
        role = request.header(ROLE_HEADER) or "ztunnel"
        if role == "ztunnel":
            auth = request.header("authorization") or ""
            token = auth[7:] if auth.startswith("Bearer ") else None
            refusal = await self._authenticate(token, node, request.peer)
            if isinstance(refusal, Failure):
                return refusal
            if refusal is not None:
                reason = Reason.NOT_AUTHORIZED if token else Reason.UNAUTHENTICATED
                return Failure(reason, refusal)
            return ("ztunnel", node), node
        if role == "waypoint":
            namespace = request.header(NAMESPACE_HEADER) or ""
            if not namespace:
                why = f"a waypoint names the namespace it serves in {NAMESPACE_HEADER}"
                return Failure(Reason.BAD_REQUEST, why)
            refusal = self._authorize_waypoint(request.peer, namespace)
            if refusal is not None:
                return Failure(Reason.NOT_AUTHORIZED, refusal)
            return ("waypoint", namespace), node
        return Failure(Reason.BAD_REQUEST, f"role {role!r} is not one of {', '.join(ROLES)}")

    async def handle(self, request: HboneRequest) -> None:
        """HBONE handler for one proxy's config stream."""
        admitted = await self._admit(request)
        if isinstance(admitted, Failure):
            log.warning(
                "config_stream_refused",
                node=request.header(NODE_HEADER),
                role=request.header(ROLE_HEADER) or "ztunnel",
                view=request.header(NAMESPACE_HEADER) or request.header(NODE_HEADER),
                src_identity=str(request.peer),
                reason=admitted.detail,
            )
            await request.reject(admitted.reason)
            return
        key, node = admitted
        stream = await request.accept()
        messages = MessageStream(stream)
        hello: Message | None = None
        with trio.move_on_after(HELLO_TIMEOUT):
            hello = await messages.receive()
        if hello is None or not _hello_matches(hello, key, node):
            log.warning(
                "config_stream_refused",
                node=node,
                role=key[0],
                view=key[1],
                src_identity=str(request.peer),
                reason=f"bad or no hello: {hello!r}",
            )
            return
        peer_address = request.connection.peer_address
        status = ProxyStatus(key[0], key[1], node, True, str(request.peer),
                             address=peer_address[0] if peer_address else "")  # fmt: skip
        # A version of another epoch (a restarted control plane, another replica) is not
        # one of ours: the proxy gets the whole view.
        version = hello.get("version") if hello.get("epoch") == self.epoch else None
        peer = request.peer
        tap = None
        if hello.get("tap") is True:  # ztunnel/NODE, waypoint/NS/SA (a Gateway's name)
            tap = (
                f"ztunnel/{node}"
                if key[0] == "ztunnel"
                else f"waypoint/{key[1]}/{peer.service_account}"
            )
        await self._serve(key, status, version, messages, tap)

    async def _serve(
        self,
        key: ViewKey,
        status: ProxyStatus,
        version: object,
        messages: MessageStream,
        tap: str | None = None,
    ) -> None:
        send, receive = trio.open_memory_channel[Message](self._queue_limit)
        sub = _Subscriber(key, send, status, version if isinstance(version, int) else None)
        state = self._join(sub)
        if tap is not None:
            self.taps.attach(sub, tap, lambda message: self._send_control(sub, message))
        self._last_seen[(status.role, status.name, status.node)] = status
        log.info(
            "config_subscriber_joined",
            node=status.node,
            role=status.role,
            view=status.name,
            src_identity=status.peer,
            version=version,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_acks, sub, messages, nursery.cancel_scope)
                async with receive:
                    async for message in receive:
                        await messages.send(message)
                nursery.cancel_scope.cancel()  # lagging: channel closed, end the stream
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConfigStreamError) as group:
            log.info(
                "config_subscriber_left",
                node=status.node,
                role=status.role,
                view=status.name,
                reason=str(group.exceptions[0]),
            )
        finally:
            self.taps.detach(sub)
            self._leave(state, sub)
            status.connected = False

    def _send_control(self, sub: _Subscriber, message: Message) -> bool:
        """Queue a message that is not config (a tap) for ``sub``; a full queue ends its
        stream, as for config (it resynchronises, and is sent its taps again)."""
        try:
            sub.channel.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except trio.WouldBlock:
            sub.channel.close()
            return False
        return True

    def _join(self, sub: _Subscriber) -> _ViewState:
        """Register ``sub`` with its view and catch it up, in one synchronous step: no
        publish can slip between."""
        state = self._states.get(sub.key)
        if state is None:
            state = self._states[sub.key] = _ViewState(sub.key)
        self._idle.pop(sub.key, None)
        self._advance(state)  # it may have been idle while snapshots were published
        state.subscribers.add(sub)
        self._push(state, sub, self._catch_up(state, sub.version))
        return state

    def _leave(self, state: _ViewState, sub: _Subscriber) -> None:
        """Forget ``sub``; its view's state, if nobody else subscribes, becomes idle and the
        oldest idle states beyond the limit are dropped."""
        state.subscribers.discard(sub)
        if state.subscribers or self._states.get(state.key) is not state:
            return
        self._idle.pop(state.key, None)
        self._idle[state.key] = None
        while len(self._idle) > self._idle_limit:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            del self._states[oldest]

    async def _read_acks(
        self, sub: _Subscriber, messages: MessageStream, scope: trio.CancelScope
    ) -> None:
        while (message := await messages.receive()) is not None:
            kind = message.get("type")
            if kind == "ack":
                version = message.get("version")
                sub.status.acked_version = version if isinstance(version, int) else None
            elif kind == "nack":
                log.error(
                    "config_rejected_by_proxy",
                    node=sub.status.node,
                    role=sub.status.role,
                    view=sub.status.name,
                    version=message.get("version"),
                    reason=message.get("error"),
                )
            elif kind == "events":
                self.taps.deliver(sub, message)
            # Any other type is a newer proxy's: ignored.
        scope.cancel()  # the proxy ended its side


def _hello_matches(hello: Message, key: ViewKey, node: str) -> bool:
    """Whether ``hello`` says what the headers said: node, role and a waypoint's namespace.
    A hello without a role is a ztunnel's (proxies older than roles send none)."""
    role, name = key
    if hello.get("type") != "hello" or hello.get("node") != node:
        return False
    if hello.get("role", "ztunnel") != role:
        return False
    return role != "waypoint" or hello.get("namespace") == name
