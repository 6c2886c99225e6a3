"""Bearer tokens, each naming one caller: how a node proves which node it is, to the CA
and on the config stream.

:class:`TokenTable` compares in constant time: every known token is compared (by
SHA-256 digest, so lengths do not leak either) on every lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping


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
