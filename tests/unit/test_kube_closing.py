"""A watch's connection that ends its TLS shutdown with an error (the server cut it short)
is read once it is closed: unread, asyncio reports the error as never retrieved, and
trio-asyncio raises that into the control plane, which then exits 1 after a clean drain
(found by tests/kube/test_install_controlplane.py)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from k8s.sources.kubernetes import _closed


def test_a_connection_closed_with_an_error_is_read_and_forgotten() -> None:
    loop = asyncio.new_event_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        future: asyncio.Future[None] = loop.create_future()
        closing = {future}
        future.set_exception(ConnectionError("application data after close notify"))
        _closed(closing, future)
        assert closing == set()
        del future
        gc.collect()
    finally:
        loop.close()
    assert reported == []
