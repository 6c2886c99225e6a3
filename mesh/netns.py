"""The one way into a network namespace: :class:`NetworkNamespace`.

A network namespace belongs to a thread. Python 3.11 has no ``os.setns``, so
``setns(2)`` is called through ctypes.

- Sockets are made inline: the calling thread steps into the namespace for the
  ``socket()`` call only and steps straight back (measured: 14 us, against
  250-550 us through a thread; it runs once per inbound dial, as Istio's
  ztunnel does in ``InpodNetns::run``). A socket keeps the namespace it was
  made in.
- Slow or blocking work (reading ``/proc``, anything that may wait) runs in a
  worker thread with :meth:`NetworkNamespace.run`, which steps that thread in
  and back out the same way.
- A thread that cannot get back into its own namespace would make every later
  socket in the wrong place: that is fatal. It is logged, and the process exits
  at once with status 70, without a drain (a drain would open sockets in the
  pod's namespace).

Namespaces are compared by (inode, device) of their ``nsfs`` file, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog
import trio

from mesh.constants import PROXY_SOCKET_MARK
from mesh.net import listen_on

log = structlog.get_logger("mesh.netns")

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SO_MARK = 36
IP_TRANSPARENT = 19
NETNS_RUN_DIR = Path("/run/netns")
EXIT_LOST_NAMESPACE = 70
NS_GET_NSTYPE = 0xB703  # ioctl: the type of the namespace an nsfs file descriptor refers to

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

NamespaceKey = tuple[int, int]  # (inode, device) of the namespace's nsfs file


class NetnsError(Exception):
    """A network namespace does not exist or cannot be entered."""


def netns_path(name: str) -> Path:
    """``/run/netns/NAME`` for a name given to ``ip netns add``; a path is taken as is."""
    return Path(name) if "/" in name else NETNS_RUN_DIR / name


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        hint = " (needs CAP_SYS_ADMIN: run as root)" if code == errno.EPERM else ""
        raise NetnsError(f"setns into a network namespace failed: {os.strerror(code)}{hint}")


def _lost_namespace(code: int) -> None:  # pragma: no cover - cannot be recovered from
    log.critical("netns_return_failed", reason=os.strerror(code))
    sys.stderr.flush()
    os._exit(EXIT_LOST_NAMESPACE)


@contextlib.contextmanager
def _entered(fd: int) -> Iterator[None]:
    """Move the calling thread into the namespace at ``fd`` and always back out."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                _lost_namespace(ctypes.get_errno())
    finally:
        os.close(home)


class NetworkNamespace:
    """An open handle on a network namespace, for making sockets and running code in it.

    Holding the handle keeps the namespace alive; :meth:`close` (or ``with``) lets it go.
    """

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self._fd = fd
        st = os.fstat(fd)
        self.key: NamespaceKey = (st.st_ino, st.st_dev)

    @classmethod
    def open(cls, name: str) -> NetworkNamespace:
        """Open a namespace by ``ip netns`` name or by path (``/proc/PID/ns/net``)."""
        path = netns_path(name)
        try:
            return cls(name, os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            raise NetnsError(
                f"network namespace {name!r} does not exist ({path}); is the pod running?"
            ) from None
        except OSError as exc:
            raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from None

    @classmethod
    def from_fd(cls, name: str, fd: int) -> NetworkNamespace:
        """Take ownership of ``fd``, a network namespace's file received from elsewhere (a
        unix socket's ``SCM_RIGHTS``); ``name`` is only for messages. An fd that is not a
        network namespace is closed and refused with :class:`NetnsError`."""
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError as exc:
            os.close(fd)
            raise NetnsError(f"{name}: not a namespace's fd ({exc.strerror})") from None
        if kind != CLONE_NEWNET:
            os.close(fd)
            raise NetnsError(f"{name}: a namespace's file descriptor, but not a network one")
        try:
            return cls(name, fd)
        except OSError as exc:  # pragma: no cover - fstat of an fd just checked
            os.close(fd)
            raise NetnsError(f"{name}: cannot inspect the namespace: {exc.strerror}") from None

    def duplicate(self) -> NetworkNamespace:
        """Another handle on the same namespace, closed on its own."""
        return NetworkNamespace(self.name, os.dup(self._checked_fd()))

    @property
    def path(self) -> Path:
        return netns_path(self.name)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NetworkNamespace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _checked_fd(self) -> int:
        if self._fd < 0:
            raise NetnsError(f"network namespace {self.name!r} was closed")
        return self._fd

    # ---- inline: sockets ---------------------------------------------------------

    def raw_socket(
        self, family: int = socket.AF_INET, type_: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A plain (blocking) socket made inside this namespace."""
        with _entered(self._checked_fd()):
            return socket.socket(family, type_, proto)

    def socket(self, *, mark: int | None = PROXY_SOCKET_MARK) -> trio.socket.SocketType:
        """A TCP socket inside this namespace with TCP_NODELAY, marked (``SO_MARK``) so the
        namespace's capture rules skip it unless ``mark`` is None."""
        sock = self.raw_socket()
        try:
            if mark is not None:
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        return trio.socket.from_stdlib_socket(sock)

    async def listen(
        self, port: int, *, host: str = "0.0.0.0", backlog: int = 1024, reuse_port: bool = False
    ) -> trio.socket.SocketType:
        """A listening TCP socket inside this namespace (SO_REUSEADDR, and SO_REUSEPORT
        with ``reuse_port``: see :func:`mesh.net.listen_on`)."""
        return await listen_on(self.socket(), host, port, backlog, reuse_port=reuse_port)

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

    # ---- in a thread: anything slow ------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` inside this namespace in a worker thread; the caller never moves.

        Not cancellable once started: whatever ``fn`` creates is never lost."""
        fd = self._checked_fd()

        def inside() -> T:
            with _entered(fd):
                return fn()

        return await trio.to_thread.run_sync(inside, abandon_on_cancel=False)
