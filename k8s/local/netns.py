"""Running Python code inside a named network namespace.

A network namespace belongs to a thread, not to a process, and Python 3.11
has no ``os.setns``; :func:`in_netns` calls ``setns(2)`` through ctypes in a
thread made for that one call, which ends when the call returns. No other
thread -- the caller's, Trio's worker threads -- ever changes namespace, so
nothing can be left behind in the wrong one. Sockets created by ``fn`` stay
in the namespace they were made in, which is how a proxy opens listeners
inside a pod: ``await in_netns("amb-1a2b-demo-web", make_listener)``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import outcome
import trio

from k8s.local.config import NETNS_DIR
from k8s.local.errors import NetnsError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def netns_path(name: str) -> Path:
    """``/run/netns/NAME`` for a name given to ``ip netns add``; a path is taken as is."""
    return Path(name) if "/" in name else NETNS_DIR / name


def current_netns_inode() -> int:
    """Inode of the calling thread's network namespace (equal inodes: same namespace)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def setns_thread(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        hint = " (needs root: CAP_SYS_ADMIN)" if code == errno.EPERM else ""
        raise NetnsError(f"setns failed: {os.strerror(code)}{hint}")


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Blocking form of :func:`in_netns`: runs ``fn`` in a fresh thread inside ``name``."""
    fd = _open(name)
    result: list[outcome.Outcome[T]] = []
    thread = threading.Thread(
        target=lambda: result.append(outcome.capture(_enter_and_call, fd, fn)),
        name=f"netns:{name}",
        daemon=True,
    )
    _start(thread, fd)
    thread.join()
    return result[0].unwrap()


async def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in network namespace ``name`` and return its result (or raise its error).

    ``fn`` runs in a thread created for this call and discarded after it, so
    the caller's thread and Trio's thread cache never change namespace. The
    wait is not cancellable (``fn`` is expected to be quick: create a
    socket, read a ``/proc`` file), so whatever ``fn`` creates is never lost.
    Raises :class:`NetnsError` if the namespace does not exist or cannot be
    entered.
    """
    fd = _open(name)
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []

    def worker() -> None:
        try:
            result.append(outcome.capture(_enter_and_call, fd, fn))
        finally:
            token.run_sync_soon(done.set)

    _start(threading.Thread(target=worker, name=f"netns:{name}", daemon=True), fd)
    with trio.CancelScope(shield=True):
        await done.wait()
    return result[0].unwrap()


def _open(name: str) -> int:
    path = netns_path(name)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(
            f"network namespace {name!r} does not exist ({path}); is the pod running?"
            " Check 'ambit get pods' or 'ip netns list'"
        ) from None
    except OSError as exc:
        raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from None


def _start(thread: threading.Thread, fd: int) -> None:
    try:
        thread.start()
    except BaseException:
        os.close(fd)
        raise


def _enter_and_call(fd: int, fn: Callable[[], T]) -> T:
    """Runs in the throw-away thread, which owns ``fd`` from here on."""
    try:
        setns_thread(fd)
    finally:
        os.close(fd)
    return fn()
