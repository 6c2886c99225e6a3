"""ztunnel's bounds on connections that carry no traffic (:mod:`mesh.pending`): one
:class:`Admission` per process, shared by every captured pod, and what ztunnel does when
a bound is reached.

- A connection is *pending* from its accept (or its CONNECT) until it is through to its
  destination or refused. Past a pending limit it is refused at once: a plaintext or
  outbound one is closed with RST (:func:`mesh.net.reset_on_close`), an HBONE CONNECT
  is answered 503 ``overloaded``, an HBONE connection is reset before its handshake.
  Each refused connection is counted in the metrics like any denied one (reason
  ``overloaded``, flag ``CONNECT``) but gets no access-log line of its own.
- A relayed connection (:class:`Active`) is *half-closed* once one side has ended.
  Past a half-closed limit the oldest half-closed connection of that source (or of
  anyone, for the overall limit) is cut, closed as ``overloaded`` without a log line.
  Connections with both sides open are never cut.
- What was shed is logged when it starts and then at most once a second per source and
  limit while it goes on (:meth:`Admission.serve_reports`): ``pending_limit_reached``
  with the count ``refused`` since its previous line and ``refused_in_burst``,
  ``half_closed_limit_reached`` with ``cut`` and ``cut_in_burst``. A flood is not one
  log line per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn

import structlog
import trio

from mesh.pending import PendingLimits, PendingStatistics, PendingWork, Shed
from mesh.reason import Failure, Reason
from mesh.record import ConnectionRecord, Telemetry
from mesh.relay import relay

log = structlog.get_logger("ztunnel")

REPORT_INTERVAL = 1.0
RELEASED = Failure(Reason.CONNECTION_RESET, "cut: the pod was released")
REFUSED = Failure(
    Reason.OVERLOADED, "refused: too many connections from this source (or from everyone) are"
    " waiting for their destination",
)  # fmt: skip
CUT = Failure(
    Reason.OVERLOADED, "cut while half-closed: too many half-closed connections from this"
    " source (or from everyone)",
)  # fmt: skip


@dataclass(eq=False, slots=True)
class Active:
    """A relayed connection: its record, the scope that cuts it, and why it was cut."""

    record: ConnectionRecord
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cut_by: Failure | None = None
    logged: bool = True  # whether its close gets an access-log line

    def cut(self, failure: Failure, *, log: bool = True) -> None:
        """Close it now, reported with ``failure`` (the first reason given wins)."""
        if self.cut_by is None:
            self.cut_by = failure
            self.logged = log
            self.scope.cancel()


class Admission:
    """The process's :class:`~mesh.pending.PendingWork` with ztunnel's Trio side: cutting
    half-closed connections and summarising what was shed in the log."""

    def __init__(
        self, limits: PendingLimits | None = None, *, report_interval: float = REPORT_INTERVAL
    ) -> None:
        self.work: PendingWork[Active] = PendingWork(limits)
        self._report_interval = report_interval
        self._shed = trio.Event()

    @property
    def limits(self) -> PendingLimits:
        return self.work.limits

    def admit(self, src: str) -> bool:
        """Count a new connection from ``src`` as pending; False: refuse it at once."""
        if self.work.admit(src):
            return True
        self._shed.set()
        return False

    def release(self, src: str) -> None:
        """An admitted connection is through to its destination, refused or failed."""
        self.work.release(src)

    def half_closed(self, active: Active) -> None:
        """One side of ``active`` has ended; cut the connection the limits say must go."""
        victim = self.work.half_closed(active.record.src_addr[0], active)
        if victim is not None:
            victim.cut(CUT, log=False)
            self._shed.set()

    def statistics(self, src: str | None = None) -> PendingStatistics:
        return self.work.statistics(src)

    async def relay(
        self,
        active: Active,
        a: trio.abc.HalfCloseableStream,
        b: trio.abc.HalfCloseableStream,
        telemetry: Telemetry,
        *,
        cancelled: Callable[[], Failure] = lambda: RELEASED,
    ) -> None:
        """Relay ``a`` <-> ``b`` (both closed at the end), reported to ``telemetry`` as
        opened, then closed with why it broke or was cut (``cancelled()`` says why, when
        it is cancelled from outside: its pod released, or a drain's deadline passed);
        its half-close is counted."""
        record = active.record
        telemetry.opened(record)
        failure: Failure | None = None
        try:
            with active.scope:
                async with a, b:
                    await relay(a, b, record.stats, on_half_close=partial(self.half_closed, active))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            failure = Failure(Reason.CONNECTION_RESET, str(exc) or type(exc).__name__)
        except trio.Cancelled:  # the pod was let go, or ztunnel stopped
            failure = cancelled()
            raise
        finally:
            self.work.ended(active)
            if active.cut_by is not None:
                failure = active.cut_by
            telemetry.closed(record, failure, log=active.logged)

    async def serve_reports(self) -> NoReturn:
        """Log what was shed: at once when shedding starts, then at most once per interval
        while it goes on, each source and limit with its count since its last line and
        so far in the burst (a source that sheds nothing for an interval ends its burst)."""
        while True:
            await self._shed.wait()
            burst: dict[Shed, int] = {}
            while self._shed.is_set():  # something was shed in the last interval
                self._shed = trio.Event()
                shed_now = self.work.take_shed()
                burst = {shed: burst.get(shed, 0) + n for shed, n in shed_now.items()}
                for shed, count in shed_now.items():
                    self._report(shed, count, burst[shed])
                await trio.sleep(self._report_interval)

    def _report(self, shed: Shed, count: int, in_burst: int) -> None:
        limits = self.work.limits
        per_source = shed.limit == "per_source"
        if shed.kind == "refused":
            log.warning(
                "pending_limit_reached",
                src=shed.src,
                limit=shed.limit,
                max=limits.per_source_pending if per_source else limits.pending,
                refused=count,
                refused_in_burst=in_burst,
                pending=self.work.statistics(shed.src if per_source else None).pending,
                hint="new connections are reset (HBONE: 503 overloaded) while this many wait"
                " for their destination: is it accepting? Else raise --max-pending"
                + ("-per-source" if per_source else ""),
            )
        else:
            log.warning(
                "half_closed_limit_reached",
                src=shed.src,
                limit=shed.limit,
                max=limits.per_source_half_closed if per_source else limits.half_closed,
                cut=count,
                cut_in_burst=in_burst,
                hint="the oldest half-closed connections are cut: does the app read until"
                " its clients close? Else raise --max-half-closed"
                + ("-per-source" if per_source else ""),
            )
