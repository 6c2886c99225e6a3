"""Rapid reset (CVE-2023-44487) over memory streams: a stream the peer resets before we
answer cancels its handler's work, and a peer that resets faster than its budget gets
GOAWAY ENHANCE_YOUR_CALM; a client that resets now and then never does."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing
from h2.errors import ErrorCodes

from mesh.hbone import H2Stream
from tests.integration.h2_support import SMALL_WINDOWS, h2_pair

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.2:80")]


async def test_a_reset_before_the_answer_cancels_the_handlers_work() -> None:
    started, cancelled = [], []

    async def slow_dial(stream: H2Stream) -> None:
        started.append(stream.stream_id)
        try:
            await trio.sleep_forever()  # a dial that does not come back
        except trio.Cancelled:
            cancelled.append(stream.stream_id)
            raise

    with trio.fail_after(10):
        async with h2_pair(handler=slow_dial) as pair:
            streams = [pair.client.start_request(CONNECT) for _ in range(10)]
            await trio.testing.wait_all_tasks_blocked()
            for stream in streams:
                pair.client.reset_stream(stream, ErrorCodes.CANCEL)
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.statistics().streams == 0
            assert not pair.client.is_closed()  # ten resets are well within the budget
    assert sorted(cancelled) == sorted(started) == [s.stream_id for s in streams]


async def test_a_peer_that_resets_faster_than_its_budget_gets_enhance_your_calm() -> None:
    settings = dataclasses.replace(SMALL_WINDOWS, reset_burst=50, reset_rate=1.0)
    handled = 0

    async def slow_dial(stream: H2Stream) -> None:
        nonlocal handled
        handled += 1
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with h2_pair(settings, handler=slow_dial) as pair:
            for _ in range(1000):  # CONNECT + RST_STREAM pairs, as fast as it can
                if pair.client.is_closed() or not pair.client.is_available():
                    break
                stream = pair.client.start_request(CONNECT)
                pair.client.reset_stream(stream, ErrorCodes.CANCEL)
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            assert pair.server.is_closed()
            goaway = pair.client.statistics().goaway
            assert goaway.received_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert handled <= 51  # the work stopped with the budget
