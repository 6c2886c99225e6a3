"""A request's body kept as it streams, for its mirrors and its retries: at most
:data:`MAX_BODY` bytes (a bigger body is neither mirrored nor sent again)."""

from __future__ import annotations

from typing import Final

MAX_BODY: Final = 64 * 1024


class BodyCopy:
    """A request's body kept as it streams, up to :data:`MAX_BODY`, for its mirrors and
    its retries; ``complete`` once the body ended (read whole)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.too_big = False
        self.complete = False

    @property
    def replayable(self) -> bool:
        """Whether the whole body is here to be sent again."""
        return self.complete and not self.too_big

    def add(self, chunk: bytes) -> None:
        if not self.too_big:
            self.data += chunk
            self.too_big = len(self.data) > MAX_BODY
