"""GOAWAY bookkeeping of one HTTP/2 connection, both directions (sans-IO).

RFC 9113 §6.8: a GOAWAY's last stream id names the highest stream *initiated
by its receiver* that its sender may have processed. So:

- after we send GOAWAY(last), streams the peer opens above ``last`` are
  refused (REFUSED_STREAM, never handed to a handler); those at or below it
  run to completion;
- after we receive GOAWAY(last), streams we opened above ``last`` were never
  processed: they fail with a retryable error; ours at or below it run to
  completion in both directions, and no new stream may be opened;
- a graceful shutdown sends GOAWAY(2^31-1) first, then, after a PING round
  trip has shown the peer saw it, GOAWAY with the real last id.

Either way the connection closes once no stream is left. The ids only ever go
down, as the RFC requires of the sender.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.hbone.frames import MAX_STREAM_ID


@dataclass(frozen=True)
class GoawayStatistics:
    sent_last_stream_id: int | None  # None: we sent no GOAWAY
    received_last_stream_id: int | None  # None: the peer sent none
    received_code: int | None


class Goaway:
    """What each side's GOAWAY allows."""

    def __init__(self) -> None:
        self.sent_last: int | None = None
        self.final_sent = False  # the GOAWAY with the real last id (not 2^31-1) left
        self.received_last: int | None = None
        self.received_code: int | None = None

    def sending(self, last_stream_id: int) -> int:
        """We are about to send GOAWAY(``last_stream_id``): the id to put in it (never higher
        than one sent before)."""
        if self.sent_last is not None:
            last_stream_id = min(last_stream_id, self.sent_last)
        self.sent_last = last_stream_id
        if last_stream_id < MAX_STREAM_ID:
            self.final_sent = True
        return last_stream_id

    def received(self, last_stream_id: int, code: int) -> None:
        if self.received_last is not None:
            last_stream_id = min(last_stream_id, self.received_last)
        self.received_last = last_stream_id
        self.received_code = code

    def accepts(self, peer_stream_id: int) -> bool:
        """May a stream the peer opens now be processed?"""
        return self.sent_last is None or peer_stream_id <= self.sent_last

    def processed_by_peer(self, our_stream_id: int) -> bool:
        """Could the peer have processed (or still process) a stream we opened?"""
        return self.received_last is None or our_stream_id <= self.received_last

    def may_open(self) -> bool:
        """May we open new streams? Not after the peer's GOAWAY, nor after our final one."""
        return self.received_last is None and not self.final_sent

    def draining(self) -> bool:
        """Should the connection close once its last stream ends?"""
        return self.received_last is not None or self.final_sent

    def statistics(self) -> GoawayStatistics:
        return GoawayStatistics(self.sent_last, self.received_last, self.received_code)
