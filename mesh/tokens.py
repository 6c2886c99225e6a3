"""Bearer tokens, each naming one caller: how a node proves which node it is, to the CA
and on the config stream.

:class:`TokenTable` compares in constant time: every known token is compared (by
SHA-256 digest, so lengths do not leak either) on every lookup.

:class:`TokenFile` is the proxy's side: its token read from a file, and read again when
the file changed, as the kubelet replaces a projected service-account token before it
expires (at 80% of its life); a proxy that read it once would show an expired token at
its next certificate renewal or config-stream reconnect.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("mesh.tokens")

Token = str | Callable[[], str]
"""A bearer token, or where to get the current one each time it is shown."""


def current(token: Token) -> str:
    return token() if callable(token) else token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        """``tokens`` maps each token to the caller name it authenticates."""
        self._digests: list[tuple[bytes, str]] = []
        self._issued: dict[str, str] = {}  # caller -> token, for token_for
        for token, caller in (tokens or {}).items():
            self.add(token, caller)

    def add(self, token: str, caller: str) -> None:
        if not token:
            raise ValueError(f"the token of caller {caller!r} is empty")
        self._digests.append((_digest(token), caller))

    def token_for(self, caller: str) -> str:
        """``caller``'s token, made (random, 256 bits) the first time it is asked for."""
        if caller not in self._issued:
            token = secrets.token_urlsafe(32)
            self.add(token, caller)
            self._issued[caller] = token
        return self._issued[caller]

    def caller_for(self, token: str) -> str | None:
        """The caller ``token`` belongs to, or None for an unknown token."""
        presented = _digest(token)
        found: str | None = None
        for digest, caller in self._digests:
            if hmac.compare_digest(presented, digest):
                found = caller
        return found


class TokenFile:
    """The token in ``path``, read again whenever the file changed (by inode, size and
    modification time, following the kubelet's symlinks). Reading it at construction
    raises OSError or ValueError (empty); later, a file that cannot be read or is empty
    keeps the token last read, with one warning until it reads again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int, int] | None = None
        self._token = ""
        self._failing = False
        self._read()

    def __call__(self) -> str:
        try:
            return self._read()
        except (OSError, ValueError) as exc:
            if not self._failing:
                log.warning(
                    "token_file_unreadable", path=str(self.path), reason=str(exc),
                    hint="the last token read is shown until the file reads again",
                )  # fmt: skip
                self._failing = True
            return self._token

    def _read(self) -> str:
        st = os.stat(self.path)
        seen = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if seen != self._seen:
            token = self.path.read_text().strip()
            if not token:
                raise ValueError(f"{self.path}: the token file is empty")
            self._token, self._seen = token, seen
        if self._failing:
            log.info("token_file_read_again", path=str(self.path))
            self._failing = False
        return self._token
