"""ztunnel's Admission without sockets: what it sheds is summarised at once and then at
most once an interval per source and limit, and a half-closed connection past the limit
is cut with its reason, unlogged."""

from __future__ import annotations

import trio
import trio.testing
from structlog.testing import capture_logs

from mesh.pending import PendingLimits
from mesh.reason import Failure, Reason
from mesh.record import ConnectionRecord
from ztunnel.admission import CUT, Active, Admission

LIMITS = PendingLimits(per_source_pending=1, pending=2, per_source_half_closed=1, half_closed=2)


def active(src: str) -> Active:
    return Active(ConnectionRecord("inbound", src_addr=(src, 40000), dst_addr=("10.0.0.2", 80)))


async def test_refusals_are_summarised_at_once_then_once_an_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(LIMITS, report_interval=1.0)
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(admission.serve_reports)
            assert admission.admit("10.0.0.9")
            assert not admission.admit("10.0.0.9")
            await trio.sleep(0.1)  # the first refusal of a burst: logged at once
            assert [(e["refused"], e["refused_in_burst"]) for e in logs] == [(1, 1)]
            for _ in range(500):  # a flood within the interval: one more line, after it
                assert not admission.admit("10.0.0.9")
            await trio.sleep(0.5)
            assert len(logs) == 1
            await trio.sleep(0.5)
            assert [(e["refused"], e["refused_in_burst"]) for e in logs[1:]] == [(500, 501)]
            await trio.sleep(5)  # quiet: the burst is over
            assert not admission.admit("10.0.0.9")
            await trio.sleep(0.1)
            assert [(e["refused"], e["refused_in_burst"]) for e in logs[2:]] == [(1, 1)]
            nursery.cancel_scope.cancel()
    assert {(e["event"], e["src"], e["limit"], e["max"]) for e in logs} == {
        ("pending_limit_reached", "10.0.0.9", "per_source", 1)
    }
    assert admission.statistics().refused == 502


async def test_past_the_half_closed_limit_the_oldest_is_cut_unlogged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(LIMITS)
    older, newer = active("10.0.0.9"), active("10.0.0.9")
    with trio.fail_after(60), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(admission.serve_reports)
            admission.half_closed(older)
            admission.half_closed(newer)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert older.scope.cancel_called
    assert (older.cut_by, older.logged) == (CUT, False)
    assert CUT.reason is Reason.OVERLOADED
    assert not newer.scope.cancel_called
    [summary] = logs
    assert (summary["event"], summary["src"], summary["cut"]) == (
        "half_closed_limit_reached",
        "10.0.0.9",
        1,
    )


def test_a_connection_cut_by_policy_keeps_that_reason() -> None:
    conn = active("10.0.0.9")
    admission = Admission(LIMITS)
    policy = Failure(Reason.POLICY_DENIED, "closed by policy: shop/deny")
    conn.cut(policy)
    admission.half_closed(conn)
    admission.half_closed(active("10.0.0.9"))  # conn is the oldest: cut again, no change
    assert (conn.cut_by, conn.logged) == (policy, True)
