"""The datagrams of the node agent's socket to ztunnel over a real SOCK_SEQPACKET pair:
a file descriptor travels beside its message, extra ones arrive to be closed, a
message too long is marked cut, and the peer's close reads as the end."""

from __future__ import annotations

import array
import os
import socket

import trio

from mesh.zds import MAX_MESSAGE, receive_datagram, send_datagram


def pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return trio.socket.from_stdlib_socket(a), trio.socket.from_stdlib_socket(b)


async def test_a_file_descriptor_travels_beside_its_message() -> None:
    left, right = pair()
    read_end, write_end = os.pipe()
    with left, right, trio.fail_after(5):
        await send_datagram(left, b'{"type": "add"}', read_end)
        os.close(read_end)  # the sender's copy: the message carries its own
        got = await receive_datagram(right)
        assert got is not None
        assert (got.data, len(got.fds), got.truncated) == (b'{"type": "add"}', 1, False)
        os.write(write_end, b"through")
        assert os.read(got.fds[0], 16) == b"through"
        assert os.get_inheritable(got.fds[0]) is False  # MSG_CMSG_CLOEXEC
        os.close(got.fds[0])
        os.close(write_end)


async def test_extra_descriptors_arrive_to_be_closed_and_long_messages_are_marked() -> None:
    left, right = pair()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
    with left, right, trio.fail_after(5):
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        await left.sendmsg([b"{}"], rights)
        got = await receive_datagram(right)
        assert got is not None
        assert len(got.fds) == 3
        for fd in (*fds, *got.fds):
            os.close(fd)
        await left.send(b" " * (MAX_MESSAGE + 100))
        long = await receive_datagram(right)
        assert long is not None
        assert long.truncated
        left.close()
        assert await receive_datagram(right) is None
