"""Telemetry that keeps every record, for tests to assert on what a proxy reported."""

from __future__ import annotations

from mesh.reason import Failure
from mesh.record import ConnectionRecord


class Recorder:
    """What was reported: ``opened`` records, ``closed`` and ``denied`` with their failure
    (whether logged or not). Hand :attr:`telemetry` to the proxy."""

    def __init__(self) -> None:
        self.opened: list[ConnectionRecord] = []
        self.closed: list[tuple[ConnectionRecord, Failure | None]] = []
        self.denied: list[tuple[ConnectionRecord, Failure]] = []
        self.telemetry = _Telemetry(self)


class _Telemetry:
    """The :class:`mesh.record.Telemetry` side of a :class:`Recorder`."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def opened(self, record: ConnectionRecord) -> None:
        self._recorder.opened.append(record)

    def closed(
        self, record: ConnectionRecord, failure: Failure | None, *, log: bool = True
    ) -> None:
        self._recorder.closed.append((record, failure))

    def denied(self, record: ConnectionRecord, failure: Failure, *, log: bool = True) -> None:
        self._recorder.denied.append((record, failure))
