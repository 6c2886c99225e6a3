"""In-pod traffic redirection: iptables rules inside a pod's network namespace,
sockets opened inside it, and the original destination of a caught connection.

The rules follow istio-cni's in-pod mode (nat table, inside the pod's netns):

- ``OUTPUT`` jumps first to ``AMBIT_OUTPUT``: packets of ztunnel's own sockets
  (``SO_MARK 0x539``) and loopback traffic pass; every other new TCP
  connection is redirected to ztunnel's outbound listener (15001). Being
  first, the rule sees Service VIPs before any kube-proxy-like DNAT.
- ``PREROUTING`` jumps to ``AMBIT_PREROUTING``: TCP to 15008 (HBONE) passes,
  any other new inbound TCP connection goes to the plaintext listener (15006).

ztunnel creates its listeners and outbound sockets *inside* the pod's netns:
its own thread steps into the namespace for the ``socket()`` call only and
always steps back (:func:`socket_in_netns`); a socket keeps the namespace it
was made in.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
import trio

from mesh.constants import (
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_CAPTURE_PORT,
    PROXY_SOCKET_MARK,
)

log = structlog.get_logger("ztunnel.redirect")

SO_ORIGINAL_DST = 80
SO_MARK = 36
CLONE_NEWNET = 0x40000000
OUT_CHAIN = "AMBIT_OUTPUT"
IN_CHAIN = "AMBIT_PREROUTING"
MANGLE_CHAIN = "AMBIT_MANGLE"
IP_TRANSPARENT = 19
# Replies of the app to a connection ztunnel opened with the client's source
# address carry this mark and are routed back to ztunnel (table 133).
SPOOF_MARK = 0x111
SPOOF_TABLE = "133"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class RedirectError(Exception):
    """Redirection for a pod could not be set up or removed."""


def capture_rules(mark: int = PROXY_SOCKET_MARK) -> list[list[str]]:
    """The iptables commands (arguments after ``iptables``) that capture a pod's traffic."""
    mark_arg = f"{mark:#x}/0xffffffff"
    return [
        ["-t", "nat", "-N", OUT_CHAIN],
        ["-t", "nat", "-N", IN_CHAIN],
        ["-t", "nat", "-A", OUT_CHAIN, "-m", "mark", "--mark", mark_arg, "-j", "RETURN"],
        ["-t", "nat", "-A", OUT_CHAIN, "-o", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", OUT_CHAIN, "-p", "tcp", "-j", "REDIRECT",
         "--to-ports", str(OUTBOUND_CAPTURE_PORT)],
        ["-t", "nat", "-A", IN_CHAIN, "-p", "tcp", "--dport", str(HBONE_PORT), "-j", "RETURN"],
        ["-t", "nat", "-A", IN_CHAIN, "-i", "lo", "-j", "RETURN"],
        ["-t", "nat", "-A", IN_CHAIN, "-p", "tcp", "-j", "REDIRECT",
         "--to-ports", str(INBOUND_PLAINTEXT_PORT)],
        ["-t", "nat", "-I", "OUTPUT", "1", "-j", OUT_CHAIN],
        ["-t", "nat", "-I", "PREROUTING", "1", "-j", IN_CHAIN],
        # Keeping the client's source address: ztunnel's connections to the pod's own
        # address are remembered (connmark); the app's packets on them get the mark
        # back, and the policy route below delivers them to ztunnel's socket.
        ["-t", "mangle", "-N", MANGLE_CHAIN],
        ["-t", "mangle", "-A", MANGLE_CHAIN, "-m", "mark", "--mark", mark_arg,
         "-m", "addrtype", "--dst-type", "LOCAL",
         "-j", "CONNMARK", "--set-xmark", f"{SPOOF_MARK:#x}/0xfff"],
        ["-t", "mangle", "-A", MANGLE_CHAIN, "-m", "mark", "!", "--mark", mark_arg,
         "-m", "connmark", "--mark", f"{SPOOF_MARK:#x}/0xfff",
         "-j", "CONNMARK", "--restore-mark", "--nfmask", "0xfff", "--ctmask", "0xfff"],
        ["-t", "mangle", "-I", "OUTPUT", "1", "-j", MANGLE_CHAIN],
    ]  # fmt: skip


def routing_commands() -> list[list[str]]:
    """``ip`` commands (in the pod's netns) that route marked replies to ztunnel."""
    return [
        ["rule", "add", "fwmark", f"{SPOOF_MARK:#x}/0xfff", "pref", "32764",
         "lookup", SPOOF_TABLE],
        ["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", SPOOF_TABLE],
    ]  # fmt: skip


def removal_rules() -> list[list[str]]:
    """Commands that undo :func:`capture_rules` (each may fail if already gone)."""
    return [
        ["-t", "nat", "-D", "OUTPUT", "-j", OUT_CHAIN],
        ["-t", "nat", "-D", "PREROUTING", "-j", IN_CHAIN],
        ["-t", "nat", "-F", OUT_CHAIN],
        ["-t", "nat", "-F", IN_CHAIN],
        ["-t", "nat", "-X", OUT_CHAIN],
        ["-t", "nat", "-X", IN_CHAIN],
        ["-t", "mangle", "-D", "OUTPUT", "-j", MANGLE_CHAIN],
        ["-t", "mangle", "-F", MANGLE_CHAIN],
        ["-t", "mangle", "-X", MANGLE_CHAIN],
    ]


async def _iptables(netns: str, args: list[str], *, check: bool) -> bool:
    cmd = ["ip", "netns", "exec", netns, "iptables", "-w", "5", *args]
    result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0 and check:
        raise RedirectError(
            f"iptables {' '.join(args)} in netns {netns} failed: {result.stderr.decode().strip()}"
        )
    return result.returncode == 0


async def _ip(netns: str, args: list[str], *, check: bool) -> None:
    cmd = ["ip", "-n", netns, *args]
    result = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0 and check:
        raise RedirectError(
            f"ip {' '.join(args)} in netns {netns} failed: {result.stderr.decode()}"
        )


async def install_capture(netns: str) -> None:
    """Install the capture rules in ``netns`` (replacing any left from before)."""
    await remove_capture(netns)
    for args in capture_rules():
        await _iptables(netns, args, check=True)
    for args in routing_commands():
        await _ip(netns, args, check=True)
    log.info("redirect_installed", netns=netns)


async def remove_capture(netns: str) -> None:
    """Remove the capture rules from ``netns``; safe when they are not there."""
    for args in removal_rules():
        await _iptables(netns, args, check=False)
    await _ip(netns, ["rule", "del", "fwmark", f"{SPOOF_MARK:#x}/0xfff", "lookup", SPOOF_TABLE],
              check=False)  # fmt: skip
    await _ip(netns, ["route", "flush", "table", SPOOF_TABLE], check=False)


def original_dst(sock: socket.socket | trio.socket.SocketType) -> tuple[str, int]:
    """Where a REDIRECTed connection was going (``SO_ORIGINAL_DST``)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


@dataclass
class PodNetns:
    """An open handle on a pod's network namespace, for making sockets in it."""

    name: str
    fd: int

    @classmethod
    def open(cls, name: str) -> PodNetns:
        path = name if "/" in name else f"/run/netns/{name}"
        try:
            return cls(name, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise RedirectError(f"cannot open network namespace {path}: {exc.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def socket(self, *, mark: int | None = PROXY_SOCKET_MARK) -> trio.socket.SocketType:
        """A new non-blocking TCP socket inside this namespace, marked so capture skips it."""
        with _entered(self.fd):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return trio.socket.from_stdlib_socket(sock)

    async def listen(self, port: int, *, backlog: int = 1024) -> trio.socket.SocketType:
        sock = self.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind(("0.0.0.0", port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    async def dial(
        self, address: tuple[str, int], *, source_ip: str | None = None
    ) -> trio.socket.SocketType:
        """Connect from inside the namespace; with ``source_ip``, the connection comes from
        that address (IP_TRANSPARENT): the app sees the real client, as with Istio."""
        sock = self.socket()
        try:
            if source_ip is not None:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                await sock.bind((source_ip, 0))
            await sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock


_own_netns: int | None = None


@contextlib.contextmanager
def _entered(fd: int) -> Iterator[None]:
    """Move this thread into the namespace at ``fd`` and always back out."""
    global _own_netns
    if _own_netns is None:
        _own_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise RedirectError(f"setns into a pod network namespace failed: {os.strerror(err)}")
    try:
        yield
    finally:
        if _libc.setns(_own_netns, CLONE_NEWNET) != 0:  # pragma: no cover - cannot recover
            err = ctypes.get_errno()
            os.write(2, f"ztunnel: cannot return to own netns: {os.strerror(err)}\n".encode())
            os._exit(70)
