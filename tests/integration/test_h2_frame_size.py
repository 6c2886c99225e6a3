"""SETTINGS_MAX_FRAME_SIZE as we advertise it (HBONE's 1 MiB) is the size of frame we
take, whatever its type: found while writing test_h2spec.py, which runs h2spec against
the RFC's 16,384 (h2spec's "frame too large" cases assume it)."""

from __future__ import annotations

import os

import trio

from mesh.hbone import H2Stream, HboneSettings
from tests.integration.h2_support import h2_pair


async def ok(stream: H2Stream) -> None:
    stream.send_headers([(":status", "200")], end_stream=True)


async def test_header_block_beyond_16k_in_one_frame_is_taken_up_to_our_max_frame_size() -> None:
    """Our client writes HEADERS frames up to the server's 1 MiB, as RFC 9113 lets it: a
    header of 32,000 random hex digits (about 21 KB encoded) goes in one frame."""
    settings = HboneSettings()
    assert settings.max_frame_size == 1024 * 1024
    big = os.urandom(16_000).hex()
    with trio.fail_after(10):
        async with h2_pair(settings, handler=ok) as pair:
            await pair.client.ping()  # both SETTINGS are known on both sides
            stream = pair.client.start_request(
                [(":method", "GET"), (":scheme", "http"), (":authority", "server"),
                 (":path", "/"), ("x-big", big)],
                end_stream=True,
            )  # fmt: skip
            assert dict(await stream.wait_response())[":status"] == "200"
            assert pair.server.error is None
