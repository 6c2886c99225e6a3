"""The config stream: how every proxy receives the mesh model.

Transport: one HBONE CONNECT stream to the control plane's own address
(``:authority`` is the address dialled; mutual TLS with the proxy's own
certificate). Headers say who is asking, so the control plane can refuse with
an HBONE status before any message: ``ambit-role`` (:data:`Role`; absent means
``ztunnel``, as proxies that predate roles send), ``ambit-node`` (the node the
proxy runs on) and, for a waypoint, ``ambit-namespace`` (the namespace whose
view it wants). A ztunnel adds its node's bearer token in ``authorization``; a
waypoint's certificate is its proof. On the stream, both directions carry
messages framed as a 4-byte big-endian length and a JSON object:

- proxy -> control plane: ``{"type": "hello", "node": N, "role": R, "version":
  V|null, "epoch": E|null}`` (a waypoint adds ``"namespace": NS``; node, role and
  namespace must be the headers'), first, then ``{"type": "ack", "version": V}`` or ``{"type":
  "nack", "version": V, "error": "..."}`` for every update;
- control plane -> proxy: ``{"type": "snapshot", "snapshot": {...}, "epoch": E}``
  (the proxy's whole view, a :class:`~mesh.model.MeshSnapshot`), then ``{"type":
  "delta", "delta": {...}, "epoch": E}`` for each change of that view (a
  :class:`~mesh.model.Delta`). A view that a new version leaves unchanged is
  not sent again: a proxy's version is the last at which its view changed.
  ``epoch`` names the control-plane process that numbered the versions (each
  counts from 1): a proxy's version means something only with its epoch, and a
  delta of another epoch than the proxy's snapshot is refused (NACK, then a
  whole snapshot).

Tap (``ambit tap``, :mod:`mesh.tap`), only with a proxy whose hello says ``"tap": true``:
the control plane sends ``{"type": "tap", "id": I, "filter": {...}}`` (a
:class:`~mesh.tap.TapFilter`) and ``{"type": "untap", "id": I}``; the proxy sends
``{"type": "events", "id": I, "events": [...], "dropped": N}``, a batch of the events that
matched and how many it dropped since the last batch. Each side ignores message types it
does not know (a server older than tap ignores ``events``; a proxy that does not say
``tap`` is never sent one). A proxy's taps end with its stream: the control plane asks
again on the next.

A proxy that loses the control plane keeps serving its last good snapshot,
reconnects with jittered exponential backoff, and says in ``hello`` which
version it has, so the control plane can send only what changed since.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, TypeAlias

import structlog
import trio

from mesh.backoff import Backoff
from mesh.concurrency import open_service_nursery
from mesh.hbone import HboneError, HboneStream
from mesh.hbone.client import HboneClientPool
from mesh.identity import SpiffeId
from mesh.jsonform import ModelError
from mesh.model import Delta, MeshSnapshot, apply
from mesh.tap import ProxyTap, TapFilter, TapFilterError
from mesh.tokens import Token, current

log = structlog.get_logger("mesh.config_stream")

MAX_MESSAGE: Final = 64 * 1024 * 1024
Message = dict[str, Any]

Role: TypeAlias = Literal["ztunnel", "waypoint"]
"""Who subscribes: a node's ztunnel, or a namespace's waypoint; each gets its own view."""
ROLES: Final[tuple[Role, ...]] = ("ztunnel", "waypoint")
ROLE_HEADER: Final = "ambit-role"
NODE_HEADER: Final = "ambit-node"
NAMESPACE_HEADER: Final = "ambit-namespace"


class ConfigStreamError(Exception):
    """The config stream broke its framing or sent something we cannot use."""


class ConfigRejected(Exception):
    """Raised by a proxy's ``on_update`` for a config it cannot take: it is NACKed."""


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ConfigStreamError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return len(body).to_bytes(4, "big") + body


class Decoder:
    """Length-prefixed JSON messages out of a byte stream, sans-IO."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= 4:
            size = int.from_bytes(self._buf[:4], "big")
            if size > MAX_MESSAGE:
                raise ConfigStreamError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
            if len(self._buf) < 4 + size:
                break
            raw = bytes(self._buf[4 : 4 + size])
            del self._buf[: 4 + size]
            try:
                message = json.loads(raw)
            except ValueError as exc:
                raise ConfigStreamError(f"message is not JSON: {exc}") from exc
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ConfigStreamError("message is not an object with a 'type'")
            out.append(message)
        return out

    def pending(self) -> int:
        return len(self._buf)


class MessageStream:
    """Messages over a byte stream (an HBONE stream on either side)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._decoder = Decoder()
        self._ready: list[Message] = []
        self._sending = trio.Lock()  # acks and tap events are sent by two tasks

    async def send(self, message: Message) -> None:
        async with self._sending:
            await self.stream.send_all(encode(message))

    async def receive(self) -> Message | None:
        """The next message, or None when the peer ended the stream cleanly."""
        while not self._ready:
            data = await self.stream.receive_some()
            if not data:
                if self._decoder.pending():
                    raise ConfigStreamError("stream ended in the middle of a message")
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)


class ConfigClient:
    """Keeps a proxy's :class:`MeshSnapshot` in step with the control plane.

    :meth:`run` runs until cancelled. ``on_update`` is called with every new
    snapshot, after it was applied; :class:`ConfigRejected` from it is a NACK, any
    other exception is a bug and propagates.

    A ztunnel (``role="ztunnel"``, the default) gives its node's ``token``; a waypoint
    (``role="waypoint"``) gives the ``namespace`` it serves, and needs no token. With
    ``tap``, the proxy offers tap: the control plane's taps go to it, its events back.
    """

    def __init__(
        self,
        pool: HboneClientPool,
        *,
        source: SpiffeId,
        address: tuple[str, int],
        expected: SpiffeId,
        node: str,
        token: Token | None,
        on_update: Callable[[MeshSnapshot], Awaitable[None]],
        backoff: Backoff | None = None,
        role: Role = "ztunnel",
        namespace: str | None = None,
        tap: ProxyTap | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if (role == "waypoint") != (namespace is not None):
            raise ValueError("a waypoint, and only a waypoint, names its namespace")
        self._pool = pool
        self._source = source
        self._address = address
        self._expected = expected
        self._node = node
        self._token = token
        self._role = role
        self._namespace = namespace
        self._on_update = on_update
        self._tap = tap
        self._backoff = backoff or Backoff()
        self.snapshot: MeshSnapshot | None = None
        self.epoch: str | None = None  # whose numbering ``snapshot.version`` is in
        self.connected = False
        self.reconnects = 0
        self._want_full = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay subscribed; ``task_status.started()`` once the first snapshot is applied."""
        started = False
        next_delay = self._backoff.delays()

        def applied() -> None:
            nonlocal started, next_delay
            next_delay = self._backoff.delays()  # healthy again: start backoff afresh
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                stream = await self._pool.connect(
                    source=self._source,
                    address=self._address,
                    authority=f"{self._address[0]}:{self._address[1]}",
                    expected=[self._expected],
                    headers=self._headers(),
                )
            except HboneError as exc:
                reason = str(exc)
            else:
                async with stream:
                    try:
                        await self._session(stream, applied)
                        reason = "control plane ended the stream"
                    except (trio.BrokenResourceError, ConfigStreamError, HboneError) as exc:
                        reason = str(exc)
            self.connected = False
            delay = next_delay()
            log.warning(
                "config_stream_lost",
                node=self._node,
                reason=reason,
                version=self.snapshot.version if self.snapshot else None,
                retry_in=round(delay, 2),
            )
            self.reconnects += 1
            await trio.sleep(delay)

    def _headers(self) -> list[tuple[str, str]]:
        headers = [(ROLE_HEADER, self._role), (NODE_HEADER, self._node)]
        if self._namespace is not None:
            headers.append((NAMESPACE_HEADER, self._namespace))
        if self._token is not None:
            headers.append(("authorization", f"Bearer {current(self._token)}"))
        return headers

    async def _session(self, stream: HboneStream, applied: Callable[[], None]) -> None:
        messages = MessageStream(stream)
        have = None if self._want_full or self.snapshot is None else self.snapshot.version
        hello: Message = {"type": "hello", "node": self._node, "role": self._role, "version": have,
                          "epoch": self.epoch if have is not None else None}  # fmt: skip
        if self._namespace is not None:
            hello["namespace"] = self._namespace
        if self._tap is not None:
            hello["tap"] = True
        await messages.send(hello)
        self.connected = True
        log.info("config_stream_connected", node=self._node, role=self._role, version=have)
        if self._tap is None:
            await self._receive(messages, applied)
            return
        tap, broke = self._tap, []

        async def send_events() -> None:
            try:
                await tap.serve(messages.send)
            except (trio.BrokenResourceError, trio.ClosedResourceError, HboneError) as exc:
                broke.append(exc)  # raised below, as the receiving side would
                nursery.cancel_scope.cancel()

        try:
            async with open_service_nursery() as nursery:  # the body's error, unwrapped
                nursery.start_soon(send_events)
                await self._receive(messages, applied)
                nursery.cancel_scope.cancel()
        finally:
            tap.stop_all()  # the control plane asks again on the next stream
        if broke:
            raise broke[0]

    async def _receive(self, messages: MessageStream, applied: Callable[[], None]) -> None:
        while (message := await messages.receive()) is not None:
            kind = message["type"]
            if kind not in ("snapshot", "delta"):
                self._control(kind, message)
                continue
            try:
                new = self._next_snapshot(kind, message)
                await self._on_update(new)
            except (ModelError, ConfigRejected) as exc:  # a config we cannot take: NACK it
                body = message.get("delta") or message.get("snapshot") or {}
                version = (
                    body.get("to_version", body.get("version")) if isinstance(body, dict) else None
                )
                await messages.send({"type": "nack", "version": version, "error": str(exc)})
                self._want_full = True  # the next hello asks for everything again
                # Logged once, as config_stream_lost, by the loop that reconnects.
                raise ConfigStreamError(f"rejected the {kind}: {exc}") from exc
            self.snapshot = new
            epoch = message.get("epoch")
            self.epoch = epoch if isinstance(epoch, str) else None
            self._want_full = False
            await messages.send({"type": "ack", "version": new.version})
            log.info("config_applied", node=self._node, version=new.version, kind=kind)
            applied()

    def _next_snapshot(self, kind: str, message: Message) -> MeshSnapshot:
        if kind == "snapshot":
            return MeshSnapshot.from_json(message.get("snapshot"))
        if kind == "delta":
            if self.snapshot is None:
                raise ModelError("a delta arrived before any snapshot")
            if message.get("epoch") != self.epoch:
                raise ModelError(
                    f"a delta of epoch {message.get('epoch')!r} for a snapshot of epoch"
                    f" {self.epoch!r}: another control plane's versions"
                )
            return apply(self.snapshot, Delta.from_json(message.get("delta")))
        raise ModelError(f"unknown message type {kind!r}")

    def _control(self, kind: str, message: Message) -> None:
        """A message that is not config: a tap to start or stop, or one we do not know
        (a newer control plane's), ignored."""
        tap_id = message.get("id")
        if self._tap is None or kind not in ("tap", "untap") or not isinstance(tap_id, str):
            log.debug("config_stream_message_ignored", node=self._node, kind=kind)
        elif kind == "untap":
            self._tap.stop(tap_id)
            log.info("tap_stopped", node=self._node, tap=tap_id)
        else:
            try:
                tap_filter = TapFilter.from_json(message.get("filter"))
            except TapFilterError as exc:
                log.warning("tap_refused", node=self._node, tap=tap_id, reason=str(exc))
                return
            self._tap.start(tap_id, tap_filter)
            log.info("tap_started", node=self._node, tap=tap_id, filter=tap_filter.to_json())
