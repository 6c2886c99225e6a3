"""Writing a file whole or not at all, for every process that keeps state in files (the CA's
keys, local mode's tokens and objects, the control plane's status file, the CNI config)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o644, *, sync: bool = True) -> None:
    """``data`` at ``path`` (its directory made if missing), whole or not at all: written
    (and with ``sync`` flushed to the disk: off for files rewritten on every change, which
    nothing needs after a crash) under a temporary name in the same directory, created with
    ``mode`` (never readable by more than ``mode`` allows, even for a moment), then renamed
    over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.ambit-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
