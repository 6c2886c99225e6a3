"""A keep-alive HTTP/1.1 connection that sends no request for the idle timeout is closed by
the waypoint; one whose request takes longer than that is not (on loopback, with real
HBONE and a real app; the timeout shortened for the test)."""

from __future__ import annotations

import trio

from tests.integration.waypoint_support import Client, Pod, open_mesh
from tests.pki import Pki

IDLE = 0.4
CHECK = 0.1


async def closed_within(stream: trio.abc.ReceiveStream, seconds: float) -> bool:
    """Whether the waypoint ends ``stream`` within ``seconds`` (nothing else arrives)."""
    with trio.move_on_after(seconds):
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True
        assert data == b"", f"unexpected bytes on an idle connection: {data[:80]!r}"
        return True
    return False


async def test_an_idle_keep_alive_connection_is_closed_a_slow_request_is_not(root: Pki) -> None:
    with trio.fail_after(20):
        async with open_mesh(root, [Pod("web-0", "10.0.0.11")]) as mesh:
            idle = mesh.proxy.idle
            idle.idle_seconds, idle.check_seconds = IDLE, CHECK
            client = Client(await mesh.connect())
            # A request answered after three idle timeouts is served whole: the timeout
            # counts only while the connection waits for a request.
            status, _headers, _body = await client.request("GET", f"/delay/{int(IDLE * 3000)}")
            assert status == 200
            # Requests closer together than the timeout keep the connection.
            for _ in range(3):
                await trio.sleep(IDLE / 2)
                assert (await client.request("GET", "/quick"))[0] == 200
            assert len(idle) == 1  # this connection, waiting for its next request
            started = trio.current_time()
            assert await closed_within(client.stream, IDLE + CHECK + 2.0)
            waited = trio.current_time() - started
            assert IDLE <= waited <= IDLE + CHECK + 1.0, waited
            assert len(idle) == 0
            # Another connection is served as before.
            other = Client(await mesh.connect())
            assert (await other.request("GET", "/after"))[0] == 200
            await other.stream.aclose()
