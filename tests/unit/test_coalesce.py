"""Coalescer: changes within a window come out as one batch, the latest per key; timing
on Trio's mock clock, so the tests are exact and instant."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from k8s.coalesce import Coalescer


async def consume(
    coalescer: Coalescer[str, int],
    got: list[tuple[float, dict[str, int]]],
    *,
    window: float = 0.1,
    work: float = 0.0,
) -> None:
    start = trio.current_time()
    async for batch in coalescer.batches(window):
        got.append((round(trio.current_time() - start, 6), batch))
        await trio.sleep(work)  # the consumer handling the batch


async def test_changes_within_the_window_come_as_one_batch_latest_per_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coalescer: Coalescer[str, int] = Coalescer()
    got: list[tuple[float, dict[str, int]]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, coalescer, got)
            await trio.sleep(1)
            coalescer.put("a", 1)
            await trio.sleep(0.03)
            coalescer.put("b", 1)
            await trio.sleep(0.05)
            coalescer.put("a", 2)  # replaces a=1
            await trio.sleep(0.5)
            coalescer.put("c", 3)
            await trio.sleep(1)
            coalescer.close()
    # Each batch is due a window after its first change.
    assert got == [(1.1, {"a": 2, "b": 1}), (1.68, {"c": 3})]
    stats = coalescer.statistics()
    assert (stats.pending, stats.received, stats.batches) == (0, 4, 2)


async def test_changes_made_while_a_batch_is_handled_gather_into_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coalescer: Coalescer[str, int] = Coalescer()
    got: list[tuple[float, dict[str, int]]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: consume(coalescer, got, work=0.5))
            coalescer.put("a", 1)  # t=0: batch at 0.1, handled until 0.6
            await trio.sleep(0.2)
            for i in range(100):
                coalescer.put(f"k{i % 3}", i)
                await trio.sleep(0.001)
            await trio.sleep(1)
            coalescer.close()
    assert got == [(0.1, {"a": 1}), (0.6, {"k0": 99, "k1": 97, "k2": 98})]


async def test_close_hands_out_what_is_pending_at_once_then_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coalescer: Coalescer[str, int] = Coalescer()
    got: list[tuple[float, dict[str, int]]] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: consume(coalescer, got, window=5))
            await trio.sleep(1)
            coalescer.put("a", 1)
            await trio.sleep(1)
            coalescer.close()
    assert got == [(2, {"a": 1})]
    with pytest.raises(trio.ClosedResourceError):
        coalescer.put("b", 2)


async def test_one_consumer_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    coalescer: Coalescer[str, int] = Coalescer()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, coalescer, [])
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await consume(coalescer, [])
            coalescer.close()
