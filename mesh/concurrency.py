"""Small Trio helpers shared by every process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio


@contextlib.asynccontextmanager
async def open_service_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for background tasks that handle their own errors.

    With strict exception groups, an exception raised by the ``async with``
    body would reach the caller wrapped in an ``ExceptionGroup``. The tasks
    started here never raise by design, so a lone exception is the body's own
    and is re-raised as itself: ``pool.connect()`` raising ``HboneConnectError``
    inside ``async with open_hbone_pool()`` is seen as ``HboneConnectError``.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def only_cancelled(exc: BaseException) -> bool:
    """``exc`` is Trio's cancellation: a ``Cancelled``, or a group (from nurseries inside)
    of nothing else; the work was cut from outside, not broken."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False
