"""The agent's end of ztunnel's pods socket when a ztunnel goes away in the middle of a
request: the connection's reader may end it (and let every waiting request go) while a
request is still being sent. The request must end as a lost connection, never as an
error that takes the agent down (seen once under load in tests/node)."""

from __future__ import annotations

import socket

import pytest
import trio

import node.zds_client as zds_client
from mesh.zds import Hello
from node.zds_client import _Connection, _Lost


async def test_a_send_that_fails_after_the_reader_ended_the_connection_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    conn = _Connection(trio.socket.from_stdlib_socket(ours), (0, 0), 1)

    async def send_after_reset(*_args: object) -> None:
        conn.close()  # what the reader does when it sees the reset first
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(zds_client, "send_datagram", send_after_reset)
    with pytest.raises(_Lost):
        await conn.request(Hello())
    assert not conn.open
