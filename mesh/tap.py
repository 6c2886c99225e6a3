"""Tap: live events from the proxies, for ``ambit tap``; the part every process shares.

A proxy reports one :class:`TapEvent` per HTTP request a waypoint finished and per TCP
connection a ztunnel closed or denied, but only while somebody taps: the hot path pays
``if tap.active:`` and nothing else otherwise. The control plane asks for events over the
proxy's config stream (:mod:`mesh.config_stream`) with a :class:`TapFilter`; the proxy
keeps the events that match it, at most :data:`BUFFER_LIMIT` per tap (more are counted
as dropped, never waited for), and sends them back in batches of up to :data:`BATCH`
events every :data:`FLUSH_INTERVAL` seconds (:meth:`ProxyTap.serve`).

Filters (sans-IO, :meth:`TapFilter.matches`): the target is ``pod/NS/NAME`` (events where
that pod is the source or the destination), ``svc/NS/NAME`` (events whose destination
Service is it) or ``ns/NS`` (source or destination in that namespace); ``to`` names the
other side in the same forms (then the target must be the source, ``to`` the
destination); ``method``, a ``path`` prefix and a ``status`` match HTTP events only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, NoReturn, TypeAlias

import trio

BUFFER_LIMIT: Final = 1024  # events held per tap in a proxy before they are dropped
BATCH: Final = 64  # events per message
FLUSH_INTERVAL: Final = 0.1  # seconds: how long an event may wait for its batch

SelectorKind: TypeAlias = Literal["pod", "svc", "ns"]
Message = dict[str, Any]


class TapFilterError(ValueError):
    """A target or filter that cannot be read; the message says what is expected."""


@dataclass(frozen=True)
class Selector:
    """``pod/NS/NAME``, ``svc/NS/NAME`` or ``ns/NS``: one side of the traffic."""

    kind: SelectorKind
    namespace: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> Selector:
        parts = text.split("/")
        kind = {"pod": "pod", "po": "pod", "pods": "pod", "svc": "svc", "service": "svc",
                "services": "svc", "ns": "ns", "namespace": "ns"}.get(parts[0])  # fmt: skip
        if kind == "ns" and len(parts) == 2 and parts[1]:
            return cls("ns", parts[1])
        if kind in ("pod", "svc") and len(parts) == 3 and parts[1] and parts[2]:
            return cls(kind, parts[1], parts[2])  # type: ignore[arg-type]
        raise TapFilterError(f"{text!r} is not pod/NAMESPACE/NAME, svc/NAMESPACE/NAME or ns/NAME")

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}" + (f"/{self.name}" if self.name else "")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def is_source(self, event: TapEvent) -> bool:
        if self.kind == "pod":
            return event.src_workload == self.key
        return self.kind == "ns" and event.src_namespace == self.namespace

    def is_destination(self, event: TapEvent) -> bool:
        if self.kind == "pod":
            return event.dst_workload == self.key
        if self.kind == "svc":
            return event.dst_service == self.key
        return event.dst_namespace == self.namespace


@dataclass(frozen=True)
class TapFilter:
    """Which events a tap wants; built once per tap, asked once per event."""

    target: Selector
    to: Selector | None = None
    method: str | None = None  # upper case
    path: str | None = None  # a prefix of the request's path
    status: int | None = None

    def __post_init__(self) -> None:
        if self.to is not None and self.target.kind == "svc":
            raise TapFilterError(
                f"a Service is only ever a destination: tap the client with --to {self.target}"
            )

    @classmethod
    def build(
        cls,
        target: str,
        *,
        to: str | None = None,
        method: str | None = None,
        path: str | None = None,
        status: int | str | None = None,
    ) -> TapFilter:
        """From what a person types (or a query string): raises :class:`TapFilterError`."""
        if status is not None and status != "":
            try:
                status = int(status)
            except ValueError:
                raise TapFilterError(f"status {status!r} is not a number") from None
            if not 100 <= status <= 599:
                raise TapFilterError(f"status {status} is not an HTTP status (100-599)")
        return cls(
            Selector.parse(target),
            Selector.parse(to) if to else None,
            method.upper() if method else None,
            path or None,
            status if isinstance(status, int) else None,
        )

    def matches(self, event: TapEvent) -> bool:
        if self.method is not None and event.method != self.method:
            return False
        if self.path is not None and (event.path is None or not event.path.startswith(self.path)):
            return False
        if self.status is not None and event.status != self.status:
            return False
        if self.to is not None:
            return self.target.is_source(event) and self.to.is_destination(event)
        return self.target.is_destination(event) or self.target.is_source(event)

    def to_json(self) -> Message:
        out: Message = {"target": str(self.target)}
        for key in ("method", "path", "status"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.to is not None:
            out["to"] = str(self.to)
        return out

    @classmethod
    def from_json(cls, data: object) -> TapFilter:
        if not isinstance(data, dict) or not isinstance(data.get("target"), str):
            raise TapFilterError(f"a tap filter is an object with a 'target': {data!r}")
        for key in ("to", "method", "path"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise TapFilterError(f"a tap filter's {key!r} is a string: {data!r}")
        status = data.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise TapFilterError(f"a tap filter's 'status' is a number: {data!r}")
        return cls.build(
            data["target"], to=data.get("to"), method=data.get("method"),
            path=data.get("path"), status=status,
        )  # fmt: skip


@dataclass(slots=True)
class TapEvent:
    """One finished request (``kind="http"``, at a waypoint) or connection (``"tcp"``, at
    a ztunnel). Workloads and Services are ``NS/NAME``; ``bytes_*`` are the reporter's
    (for a request: received is the request's, sent the response's)."""

    kind: Literal["http", "tcp"]
    reporter: Literal["waypoint", "ztunnel"]
    time: float  # time.time()
    duration_ms: float
    src_identity: object = None  # a SpiffeId (or its text): str() in to_json
    src_workload: str | None = None
    src_namespace: str | None = None
    src_addr: str | None = None
    dst_identity: object = None
    dst_workload: str | None = None
    dst_namespace: str | None = None
    dst_service: str | None = None
    dst_addr: str | None = None
    direction: str | None = None  # a ztunnel's: inbound or outbound
    method: str | None = None
    authority: str | None = None
    path: str | None = None
    protocol: str | None = None
    status: int | None = None
    grpc_status: str | None = None
    flags: str = "-"
    reason: str | None = None  # a connection's Reason code, when it failed or was denied
    bytes_sent: int = 0
    bytes_received: int = 0

    def to_json(self) -> Message:
        out = {k: v for k in _FIELDS if (v := getattr(self, k)) is not None}
        for key in ("src_identity", "dst_identity"):  # SpiffeIds, made text only here
            if key in out:
                out[key] = str(out[key])
        out["time"] = dt.datetime.fromtimestamp(self.time, dt.UTC).isoformat(
            timespec="milliseconds"
        )
        out["duration_ms"] = round(self.duration_ms, 3)
        return out


_FIELDS: Final = tuple(f.name for f in fields(TapEvent))


@dataclass(eq=False)
class _Tap:
    filter: TapFilter
    events: list[TapEvent] = field(default_factory=list)
    dropped: int = 0


class ProxyTap:
    """A proxy's taps: what the control plane asked for, and the events waiting to go.

    ``active`` is the one thing the hot path reads. :meth:`offer` never blocks: past
    ``limit`` events waiting in a tap, the event is counted as dropped."""

    def __init__(self, *, limit: int = BUFFER_LIMIT, batch: int = BATCH) -> None:
        self.active = False
        self._taps: dict[str, _Tap] = {}
        self._limit = limit
        self._batch = batch
        self._full = trio.Event()  # some tap holds a whole batch

    def start(self, tap_id: str, tap_filter: TapFilter) -> None:
        self._taps[tap_id] = _Tap(tap_filter)
        self.active = True

    def stop(self, tap_id: str) -> None:
        self._taps.pop(tap_id, None)
        self.active = bool(self._taps)

    def stop_all(self) -> None:
        """Forget every tap (the stream to the control plane ended: it asks again)."""
        self._taps.clear()
        self.active = False

    def ids(self) -> list[str]:
        return list(self._taps)

    def offer(self, event: TapEvent) -> None:
        for tap in self._taps.values():
            if not tap.filter.matches(event):
                continue
            if len(tap.events) >= self._limit:
                tap.dropped += 1
                continue
            tap.events.append(event)
            if len(tap.events) >= self._batch:
                self._full.set()

    def take(self) -> list[Message]:
        """The ``events`` messages waiting now (at most one batch per tap), removed."""
        out: list[Message] = []
        for tap_id, tap in self._taps.items():
            if not tap.events and not tap.dropped:
                continue
            batch, tap.events = tap.events[: self._batch], tap.events[self._batch :]
            out.append({"type": "events", "id": tap_id, "events": [e.to_json() for e in batch],
                        "dropped": tap.dropped})  # fmt: skip
            tap.dropped = 0
        if self._full.is_set() and all(len(t.events) < self._batch for t in self._taps.values()):
            self._full = trio.Event()
        return out

    async def serve(
        self, send: Callable[[Message], Awaitable[None]], *, interval: float = FLUSH_INTERVAL
    ) -> NoReturn:
        """Send what :meth:`take` gives with ``send``, each ``interval`` or as soon as a
        batch is whole. A slow ``send`` slows only this loop: events then wait in the
        taps, and past their limit are dropped and counted."""
        while True:
            with trio.move_on_after(interval):
                await self._full.wait()
            for message in self.take():
                await send(message)
            await trio.lowlevel.checkpoint()


def request_event(
    *,
    src_identity: object,
    src_workload: Any,  # mesh.model.Workload | None (any object with namespace and name)
    src_addr: str | None,
    dst_identity: object,
    dst_workload: Any,
    dst_service: Any,  # mesh.model.Service | None
    dst_addr: str | None,
    started: float,
    method: str,
    authority: str,
    path: str,
    protocol: str,
    status: int,
    grpc_status: str | None,
    flags: str,
    bytes_sent: int,
    bytes_received: int,
) -> TapEvent:
    """A waypoint's event for one finished request."""
    if src_workload is not None:
        src_key, src_ns = f"{src_workload.namespace}/{src_workload.name}", src_workload.namespace
    else:
        src_key, src_ns = None, _ns(str(src_identity)) if src_identity is not None else None
    dst_ns = (dst_workload or dst_service).namespace if dst_workload or dst_service else None
    return TapEvent(
        "http", "waypoint", time.time(), (time.monotonic() - started) * 1000,
        src_identity, src_key, src_ns, src_addr, dst_identity, _key(dst_workload), dst_ns,
        _key(dst_service), dst_addr, None, method, authority, path, protocol, status,
        grpc_status, flags, None, bytes_sent, bytes_received,
    )  # fmt: skip


def _key(obj: Any) -> str | None:
    return f"{obj.namespace}/{obj.name}" if obj is not None else None


def _ns(identity: str | None) -> str | None:
    """The namespace of a SPIFFE id (``spiffe://td/ns/NS/sa/SA``), if it is one."""
    if identity is None:
        return None
    parts = identity.split("/")
    return parts[4] if len(parts) == 7 and parts[3] == "ns" else None
