"""Tunables and errors of HBONE connections."""

from __future__ import annotations

from dataclasses import dataclass

from h2.errors import ErrorCodes

from mesh.hbone import frames
from mesh.reason import Reason

MiB = 1024 * 1024


class HboneError(Exception):
    """Base of HBONE failures."""


class HboneConnectionError(HboneError):
    """The HTTP/2 connection failed; every stream on it fails with it."""

    def __init__(self, reason: str, *, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class HboneStreamRefused(HboneError):
    """The peer answered a CONNECT with something other than 200.

    ``reason`` is the peer's reason code (its ``ambit-reason`` header), None
    when it sent none or one we do not know; ``detail`` is for our log.
    """

    def __init__(self, status: int | None, reason: Reason | None, detail: str = "") -> None:
        code = reason.value if reason is not None else "no reason given"
        super().__init__(
            f"CONNECT refused with status {status} ({code}){': ' if detail else ''}{detail}"
        )
        self.status = status
        self.reason = reason
        self.detail = detail


class HboneRetryableError(HboneError):
    """The peer never processed this stream (it was above the last stream id of
    the peer's GOAWAY, or opened after it): safe to retry on another connection."""


class HboneStreamTimeout(HboneError):
    """The peer did not answer a new stream's request headers in time."""


@dataclass(frozen=True)
class HboneSettings:
    """Tunables of an HBONE connection. Defaults follow Istio's ztunnel."""

    stream_window: int = 4 * MiB
    connection_window: int = 16 * MiB
    max_frame_size: int = 1 * MiB
    max_concurrent_streams: int = 100
    write_buffer_limit: int = 2 * MiB
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    idle_timeout: float = 300.0
    handshake_timeout: float = 10.0
    connect_timeout: float = 10.0
    stream_open_timeout: float = 10.0  # for the answer to CONNECT (open_stream)
    # A stream's header list (RFC 7541's size) over this: the stream alone is refused (a
    # request gets 431); advertised in SETTINGS_MAX_HEADER_LIST_SIZE.
    max_header_list_size: int = 64 * 1024
    reset_burst: int = 1000  # rapid-reset defence (mesh.hbone.limits.ResetBudget)
    reset_rate: float = 33.0  # resets per second the budget refills
    rejection_log_window: float = 10.0  # one hbone_handshake_rejected per rule per window

    def __post_init__(self) -> None:
        if not frames.MIN_FRAME_SIZE <= self.max_frame_size <= frames.MAX_FRAME_SIZE:
            raise ValueError(
                f"max_frame_size must be within [{frames.MIN_FRAME_SIZE}, {frames.MAX_FRAME_SIZE}]"
            )
        for name in ("stream_window", "connection_window"):
            if not 65_535 <= getattr(self, name) <= frames.MAX_WINDOW:
                raise ValueError(f"{name} must be within [65535, 2**31-1]")
