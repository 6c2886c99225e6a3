"""The control plane's side of tap: which proxies can tap, which taps are open, and the
events between them (the messages are :mod:`mesh.config_stream`'s).

A proxy whose hello offered tap is :meth:`TapHub.attach`-ed by the config server with a
``send`` that queues a message on its stream without waiting; every open tap is sent to
it at once, so a proxy that reconnects, or a waypoint that starts, taps too. A tap
(:meth:`TapHub.open`, one per ``ambit tap``) goes to every such proxy: each filters its
own events (:meth:`mesh.tap.TapFilter.matches`), so a proxy that carries none of the
tapped traffic sends nothing. Events a proxy sends (:meth:`TapHub.deliver`) go to the
tap's bounded queue of batches without waiting; a tap whose reader is slow has its
batches dropped and counted (:attr:`TapSession.dropped`), with the proxies' own drops.
Sans-IO apart from Trio's memory channels; never blocks the config stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from mesh.tap import BATCH, TapFilter

log = structlog.get_logger("k8s.tap")

QUEUE_LIMIT: Final = 64  # batches waiting for one tap's reader
MAX_TAPS: Final = 16  # taps open at once
MAX_EVENTS: Final = 4 * BATCH  # events taken from one message of a proxy

Message = dict[str, Any]
Send = Callable[[Message], bool]
"""Queue a message on a proxy's config stream without waiting; False if it could not."""


class TooManyTaps(Exception):
    """:data:`MAX_TAPS` taps are open already."""


@dataclass(frozen=True)
class Batch:
    """Events of one proxy for one tap, and how many that proxy dropped before them."""

    proxy: str
    events: list[Message]
    dropped: int


@dataclass(eq=False)
class TapSession:
    """One open tap: read :attr:`batches`; :attr:`dropped` counts events the tap lost
    (its reader too slow, or a proxy's buffer full) not yet reported to the reader."""

    id: str
    filter: TapFilter
    batches: trio.MemoryReceiveChannel[Batch]
    _send: trio.MemorySendChannel[Batch]
    dropped: int = 0
    proxies: int = 0  # proxies the tap was sent to when it opened

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped


@dataclass(eq=False)
class _Proxy:
    name: str
    send: Send
    taps: set[str] = field(default_factory=set)


class TapHub:
    def __init__(self, *, queue_limit: int = QUEUE_LIMIT, max_taps: int = MAX_TAPS) -> None:
        self._proxies: dict[object, _Proxy] = {}
        self._sessions: dict[str, TapSession] = {}
        self._ids = itertools.count(1)
        self._queue_limit = queue_limit
        self._max_taps = max_taps

    def proxies(self) -> list[str]:
        """The names of the proxies that can tap now (``ztunnel/NODE``, ``waypoint/NS/SA``)."""
        return sorted(p.name for p in self._proxies.values())

    def attach(self, key: object, name: str, send: Send) -> None:
        """A proxy that offers tap joined (``key`` is its subscription): it gets every
        open tap."""
        proxy = self._proxies[key] = _Proxy(name, send)
        for session in self._sessions.values():
            self._start(proxy, session)

    def detach(self, key: object) -> None:
        self._proxies.pop(key, None)

    @contextmanager
    def open(self, tap_filter: TapFilter) -> Iterator[TapSession]:
        """A tap, sent to every proxy that can tap, until the block ends (then stopped
        there); raises :class:`TooManyTaps`."""
        if len(self._sessions) >= self._max_taps:
            raise TooManyTaps(f"{len(self._sessions)} taps are open; at most {self._max_taps}")
        send, receive = trio.open_memory_channel[Batch](self._queue_limit)
        session = TapSession(f"t{next(self._ids)}", tap_filter, receive, send)
        self._sessions[session.id] = session
        for proxy in list(self._proxies.values()):
            session.proxies += self._start(proxy, session)
        log.info("tap_opened", tap=session.id, filter=tap_filter.to_json(),
                 proxies=session.proxies)  # fmt: skip
        try:
            yield session
        finally:
            del self._sessions[session.id]
            send.close()
            for proxy in list(self._proxies.values()):
                if session.id in proxy.taps:
                    proxy.taps.discard(session.id)
                    proxy.send({"type": "untap", "id": session.id})
            log.info("tap_closed", tap=session.id)

    def _start(self, proxy: _Proxy, session: TapSession) -> bool:
        message = {"type": "tap", "id": session.id, "filter": session.filter.to_json()}
        if not proxy.send(message):
            return False
        proxy.taps.add(session.id)
        return True

    def deliver(self, key: object, message: Message) -> None:
        """An ``events`` message from the proxy subscribed as ``key``; never waits."""
        proxy = self._proxies.get(key)
        session = self._sessions.get(message.get("id"))  # type: ignore[arg-type]
        events, dropped = message.get("events"), message.get("dropped", 0)
        if proxy is None or session is None or session.id not in proxy.taps:
            return  # a tap that ended while its events were on the way
        if not isinstance(events, list) or not isinstance(dropped, int) or dropped < 0:
            log.warning("tap_events_malformed", proxy=proxy.name, tap=session.id)
            return
        kept = [e for e in events[:MAX_EVENTS] if isinstance(e, dict)]
        try:
            session._send.send_nowait(Batch(proxy.name, kept, dropped))
        except trio.WouldBlock:  # the reader is behind: lose this batch, say how much
            session.dropped += len(kept) + dropped
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
