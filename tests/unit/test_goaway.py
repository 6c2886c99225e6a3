"""GOAWAY bookkeeping alone: what each side's last stream id allows."""

from __future__ import annotations

from mesh.hbone.frames import MAX_STREAM_ID
from mesh.hbone.goaway import Goaway


def test_graceful_two_phase_goaway() -> None:
    goaway = Goaway()
    assert goaway.sending(MAX_STREAM_ID) == MAX_STREAM_ID  # phase 1: everything still counts
    assert goaway.accepts(99)
    assert goaway.may_open()
    assert not goaway.draining()
    assert goaway.sending(7) == 7  # phase 2: the real last id
    assert goaway.final_sent
    assert goaway.accepts(7)
    assert not goaway.accepts(9)  # opened after our GOAWAY: refused, never processed
    assert not goaway.may_open()
    assert goaway.draining()


def test_the_last_stream_id_never_goes_up() -> None:
    goaway = Goaway()
    goaway.sending(5)
    assert goaway.sending(MAX_STREAM_ID) == 5
    goaway.received(3, 0)
    goaway.received(11, 0)
    assert goaway.statistics().received_last_stream_id == 3


def test_received_goaway_splits_our_streams() -> None:
    goaway = Goaway()
    assert goaway.processed_by_peer(101)
    goaway.received(5, 0)
    assert goaway.processed_by_peer(5)  # runs to completion
    assert not goaway.processed_by_peer(7)  # never processed: retry elsewhere
    assert not goaway.may_open()
    assert goaway.draining()
    assert goaway.accepts(2)  # the peer's GOAWAY does not refuse the peer's streams
