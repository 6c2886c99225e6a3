"""Key sets named by ``jwksUri``: fetched, kept, refreshed. The only I/O of RequestAuthentication.

:class:`JwksCache` keeps one :class:`~waypoint.jwt.KeySet` per URI. The request path reads it
without waiting (:meth:`JwksCache.keys_for`, the ``keys`` function of
:func:`waypoint.jwt.authenticate`): a URI never fetched has no keys, so its tokens fail closed
(``Jwks remote fetch is failed``, 401), and asking for it marks it wanted; a session
first awaits :meth:`JwksCache.first_fetch` of the URIs its rules name, so only a URI whose
fetch failed refuses tokens. The waypoint asks for a snapshot's URIs when it arrives.
:meth:`JwksCache.serve` runs in a nursery its owner holds and fetches each wanted URI at
once, then every ``refresh_interval`` (Istio's default, 20 minutes); a failed fetch keeps
the last good set and is retried on :class:`~mesh.backoff.Backoff` (1 s doubling to 60 s).
:meth:`JwksCache.fetch` fetches one now (the waypoint can call it before serving a new
rule). Fetching is a function passed in: :func:`http_get` (HTTP/1.1 GET over Trio, TLS for
``https``) by default, anything ``(uri) -> bytes`` in tests.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import structlog
import trio

from mesh.backoff import Backoff
from mesh.http_get import BodyTooLarge, get
from mesh.model_l7 import JwtRule
from waypoint.jwt import JwksError, KeySet, inline_keys, parse_jwks

log = structlog.get_logger("waypoint.jwks")

REFRESH_INTERVAL = 20 * 60.0
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
RETRY = Backoff(initial=1.0, maximum=60.0)

Fetch = Callable[[str], Awaitable[bytes]]


class JwksFetchError(Exception):
    """A key set could not be fetched (its URI, and what went wrong)."""


async def http_get(
    uri: str, *, ssl_context: ssl.SSLContext | None = None, max_bytes: int = MAX_JWKS_BYTES
) -> bytes:
    """The body of a 200 answer to ``GET uri`` (``http`` or ``https``), at most ``max_bytes``;
    :class:`JwksFetchError` otherwise. The caller bounds the time."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JwksFetchError(f"{uri}: not an http or https URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream
    try:
        if parts.scheme == "https":
            context = ssl_context or ssl.create_default_context()
            stream = await trio.open_ssl_over_tcp_stream(parts.hostname, port, ssl_context=context)
        else:
            stream = await trio.open_tcp_stream(parts.hostname, port)
        async with stream:
            status, body = await get(stream, parts.netloc, target, limit=max_bytes,
                                     headers=[("accept", "application/json")])  # fmt: skip
    except BodyTooLarge:
        raise JwksFetchError(f"{uri}: larger than {max_bytes} bytes") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise JwksFetchError(f"{uri}: {exc}") from exc
    if status != 200:
        raise JwksFetchError(f"{uri}: answered {status}")
    return body


@dataclass
class _Entry:
    keys: KeySet | None = None
    fetched_at: float | None = None  # of the last good set
    due: float = -math.inf  # when to fetch next
    failures: int = 0  # in a row
    error: str = ""


class JwksCache:
    """Key sets by URI (module docstring). Times are Trio's clock."""

    def __init__(
        self,
        fetch: Fetch = http_get,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        timeout: float = FETCH_TIMEOUT,
        backoff: Backoff = RETRY,
    ) -> None:
        self._fetch = fetch
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._backoff = backoff
        self._entries: dict[str, _Entry] = {}
        self._in_flight: dict[str, trio.Event] = {}
        self._wanted = trio.Event()  # set when a URI is first wanted: serve looks again

    # --- the request path: never waits -----------------------------------------------------

    def get_nowait(self, uri: str) -> KeySet | None:
        """The last good set of ``uri``, or None; a URI not known yet becomes wanted."""
        entry = self._entries.get(uri)
        if entry is None:
            self._entries[uri] = _Entry()
            self._wanted.set()
            return None
        return entry.keys

    def keys_for(self, rule: JwtRule) -> KeySet | None:
        """The keys of ``rule``: its inline ``jwks`` (which wins, as in Istio), else the set
        of its ``jwks_uri``; None when it has none yet."""
        if rule.jwks:
            return inline_keys(rule)
        return self.get_nowait(rule.jwks_uri) if rule.jwks_uri else None

    def want(self, uris: Iterable[str]) -> None:
        """Keep exactly ``uris`` (those the current rules name): new ones are fetched soon,
        others forgotten."""
        keep = set(uris)
        for uri in list(self._entries):
            if uri not in keep:
                del self._entries[uri]
        for uri in keep:
            self.get_nowait(uri)

    def untried(self, uris: Iterable[str]) -> bool:
        """Whether any of ``uris`` was never fetched, well or not."""
        return any(self._untried(uri) for uri in uris)

    async def first_fetch(self, uris: Iterable[str]) -> None:
        """Wait for the first fetch of each of ``uris`` never tried yet (its outcome, good or
        not, within :attr:`timeout`): a request that comes with a new rule, or right after
        the waypoint started, is checked against the keys, not refused for want of them.
        Returns at once, without a checkpoint, when every one was tried."""
        for uri in uris:
            if self._untried(uri):
                await self.fetch(uri)

    def _untried(self, uri: str) -> bool:
        entry = self._entries.get(uri)
        return entry is None or (entry.keys is None and entry.failures == 0)

    # --- fetching --------------------------------------------------------------------------

    async def fetch(self, uri: str) -> KeySet | None:
        """Fetch ``uri`` now (or wait for the fetch in flight) and return its set: the new one,
        or the last good one if this fetch failed."""
        event = self._in_flight.get(uri)
        if event is not None:
            await event.wait()
        else:
            self._in_flight[uri] = event = trio.Event()
            try:
                await self._fetch_once(uri)
            finally:
                del self._in_flight[uri]
                event.set()
        entry = self._entries.get(uri)
        return entry.keys if entry else None

    async def _fetch_once(self, uri: str) -> None:
        error = ""
        keys: KeySet | None = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                keys = parse_jwks(await self._fetch(uri))
            except (JwksFetchError, JwksError) as exc:
                error = str(exc)
        if scope.cancelled_caught:
            error = f"no answer within {self.timeout:g} s"
        entry = self._entries.setdefault(uri, _Entry())
        now = trio.current_time()
        if keys is not None:
            entry.keys, entry.fetched_at, entry.failures, entry.error = keys, now, 0, ""
            entry.due = now + self.refresh_interval
            log.info("jwks_fetched", uri=uri, keys=len(keys.keys))
            return
        entry.failures += 1
        entry.error = error
        entry.due = now + min(self._backoff.delay(entry.failures), self.refresh_interval)
        log.warning(
            "jwks_fetch_failed",
            uri=uri,
            reason=error,
            failures=entry.failures,
            serving="last good set" if entry.keys else "nothing (tokens refused)",
        )

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Fetch wanted URIs when due, until cancelled (module docstring)."""
        task_status.started()
        while True:
            now = trio.current_time()
            due = [u for u, e in self._entries.items() if e.due <= now]
            for uri in due:
                await self.fetch(uri)
            self._wanted = trio.Event()
            upcoming = min((e.due for e in self._entries.values()), default=math.inf)
            with trio.move_on_at(upcoming):
                await self._wanted.wait()

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Per URI: whether keys are held, their age in seconds, failures in a row, the last
        error (for the admin endpoint)."""
        now = trio.current_time()
        return {
            uri: {
                "keys": len(e.keys.keys) if e.keys else 0,
                "age": None if e.fetched_at is None else round(now - e.fetched_at, 1),
                "failures": e.failures,
                "error": e.error,
            }
            for uri, e in sorted(self._entries.items())
        }
