"""Bounds on the connections a proxy holds while they carry no traffic, sans-IO.

Two kinds of connection hold file descriptors without moving bytes:

- **pending**: accepted, not through to the destination yet (policy checked,
  dial, HBONE CONNECT or TLS handshake in progress). Clients that connect and
  close, or a destination that accepts slowly, make them pile up for a whole
  dial timeout;
- **half-closed** (the issue's "half-open"): one side has ended, the relay
  carries the other (``send_eof`` went through, :func:`mesh.relay.relay`). An
  app that never reads never answers a client's FIN, and both sockets wait
  for as long as it does.

:class:`PendingWork` counts both per source IP and overall (one instance per
process, shared by every captured pod) and decides, the caller does the I/O:

- past a **pending** limit a new connection is refused (:meth:`PendingWork.admit`
  is False): the caller closes it at once;
- past a **half-closed** limit the oldest half-closed connection of that
  source (or, for the overall limit, of anyone) is returned by
  :meth:`PendingWork.half_closed` to be cut. A half-closed connection is most
  likely one whose client is gone; refusing new ones instead would lock a
  source out of every pod of the node for as long as one app does not read.

Established connections (both sides open) are not counted and never cut.
Per connection the cost is a dict increment and decrement for the pending
state and an insert and delete in two dicts for the half-closed one.

**Defaults.** Each connection in either state holds two descriptors (the
client's socket and the destination's; an HBONE stream holds one, its
connection is shared). At the defaults that is at most 2 x (2,048 + 4,096) =
12,288 descriptors: under a fifth of a 65,536 file limit, the smallest we
size for (container runtimes commonly give 1,048,576), leaving the rest to
established connections, three listeners per pod and the HBONE pools. A
healthy dial takes well under a millisecond and a half-close lasts about a
round trip, so 256 of one source's connections waiting at once means its
destination is not accepting or not reading; it takes eight such sources to
reach the overall pending limit, which then protects every other pod. Below
about 25,000 descriptors (the systemd default of 1,024 among them) these
bounds no longer protect the process: raise its file limit (``LimitNOFILE``)
or lower them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, Protocol, TypeAlias, TypeVar

K = TypeVar("K", bound=Hashable)

Limit: TypeAlias = Literal["per_source", "overall"]


@dataclass(frozen=True)
class PendingLimits:
    """How many pending and half-closed connections one source, and all together, may
    have (see the module docstring for the defaults)."""

    per_source_pending: int = 256
    pending: int = 2048
    per_source_half_closed: int = 256
    half_closed: int = 4096

    def __post_init__(self) -> None:
        for per_source, overall in (
            ("per_source_pending", "pending"),
            ("per_source_half_closed", "half_closed"),
        ):
            if not 1 <= getattr(self, per_source) <= getattr(self, overall):
                raise ValueError(f"{per_source} must be at least 1 and at most {overall}")

    def descriptors(self) -> int:
        """The most file descriptors connections in these states can hold."""
        return 2 * (self.pending + self.half_closed)


class Shed(NamedTuple):
    """Connections shed: ``refused`` at a pending limit, or ``cut`` half-closed, with the
    source they came from and the limit that was reached."""

    kind: Literal["refused", "cut"]
    src: str
    limit: Limit


@dataclass(frozen=True)
class PendingStatistics:
    """Counts now (for one source, or overall), and what was shed since the start."""

    pending: int
    half_closed: int
    refused: int
    cut: int


class Admitter(Protocol):
    """The pending half of :class:`PendingWork`: what a server needs to bound the
    connections it accepts and has not handed on yet (a TLS handshake)."""

    def admit(self, src: str) -> bool: ...
    def release(self, src: str) -> None: ...


class PendingWork(Generic[K]):
    """Pending and half-closed connections, per source IP and overall; ``K`` names a
    connection (hashable, e.g. the object that can cut it)."""

    def __init__(self, limits: PendingLimits | None = None) -> None:
        self.limits = limits or PendingLimits()
        self._pending: dict[str, int] = {}
        self._pending_total = 0
        # Oldest first: per source, and every one with its source.
        self._half_closed: dict[str, dict[K, None]] = {}
        self._half_closed_all: dict[K, str] = {}
        self._shed: dict[Shed, int] = {}
        self._refused_total = 0
        self._cut_total = 0

    def admit(self, src: str) -> bool:
        """Count a new connection from ``src`` as pending. False when ``src``, or everyone
        together, is at the pending limit: the caller refuses it at once (counted as shed)."""
        n = self._pending.get(src, 0)
        limits = self.limits
        if n < limits.per_source_pending and self._pending_total < limits.pending:
            self._pending[src] = n + 1
            self._pending_total += 1
            return True
        self._count(Shed("refused", src, "per_source" if n >= limits.per_source_pending
                         else "overall"))  # fmt: skip
        self._refused_total += 1
        return False

    def release(self, src: str) -> None:
        """A connection :meth:`admit` counted is no longer pending: through to its
        destination, refused or failed."""
        n = self._pending[src]
        if n == 1:
            del self._pending[src]
        else:
            self._pending[src] = n - 1
        self._pending_total -= 1

    def half_closed(self, src: str, key: K) -> K | None:
        """Connection ``key`` from ``src`` has one side ended. Returns the connection to cut
        to stay within the limits (the oldest half-closed one of ``src``, else the oldest
        overall; never ``key``), already forgotten, or None."""
        mine = self._half_closed.get(src)
        if mine is None:
            mine = self._half_closed[src] = {}
        mine[key] = None
        everyone = self._half_closed_all
        everyone[key] = src
        limit: Limit
        if len(mine) > self.limits.per_source_half_closed:
            victim, victim_src, limit = next(iter(mine)), src, "per_source"
        elif len(everyone) > self.limits.half_closed:
            victim, victim_src = next(iter(everyone.items()))
            limit = "overall"
        else:
            return None
        self.ended(victim)
        self._count(Shed("cut", victim_src, limit))
        self._cut_total += 1
        return victim

    def ended(self, key: K) -> None:
        """Connection ``key`` is closed: forget it, whether it half-closed or not."""
        src = self._half_closed_all.pop(key, None)
        if src is None:
            return
        mine = self._half_closed[src]
        del mine[key]
        if not mine:
            del self._half_closed[src]

    def take_shed(self) -> dict[Shed, int]:
        """What was shed since the last call, by source and limit (for a log summary)."""
        shed, self._shed = self._shed, {}
        return shed

    def statistics(self, src: str | None = None) -> PendingStatistics:
        """Counts for ``src``, or for every source together (the totals shed are overall)."""
        if src is None:
            pending, half_closed = self._pending_total, len(self._half_closed_all)
        else:
            pending = self._pending.get(src, 0)
            half_closed = len(self._half_closed.get(src, ()))
        return PendingStatistics(pending, half_closed, self._refused_total, self._cut_total)

    def _count(self, shed: Shed) -> None:
        self._shed[shed] = self._shed.get(shed, 0) + 1
