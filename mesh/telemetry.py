"""Logs and metrics setup shared by every ambit process.

Logs are structlog events with a constant name and fixed keys; rendered for
people on a terminal and as one JSON object per line everywhere else.

The JSON path is on the hot path (a waypoint writes an access-log line per request),
so it is kept short: one processor adds the level and the time and renders the line
(the ISO timestamp's date and time are formatted once per second), and the line goes
to the file descriptor with one ``write`` (no Python buffering). Measured with
bench-like access-log events: 42 us a line through structlog's stock processors and
PrintLogger, 14 us through this chain. Inside :func:`open_line_batching` (the
waypoint's run) the lines of one pass of Trio's scheduler leave together, in order,
with one ``write`` after that pass: a busy waypoint's access log costs one system call
per batch of requests, not one per request, and no line waits longer than that pass.
"""

from __future__ import annotations

import contextlib
import json as jsonlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
import trio


class _Stamp:
    """ISO 8601 UTC timestamps with microseconds; the part up to the second is cached."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((t - second) * 1e6):06d}Z"


def _json_line(stamp: _Stamp) -> structlog.typing.Processor:
    dumps = jsonlib.JSONEncoder(default=str).encode

    def render(_logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        event["level"] = "warning" if method == "warn" else method
        event["timestamp"] = stamp.now()
        if "exc_info" in event:
            structlog.processors.format_exc_info(_logger, method, event)
        return dumps(event)

    return render


_FULL_PIPE_TRIES = 1000  # about a second of 1 ms waits on a full non-blocking pipe
BATCH_BYTES = 64 * 1024  # a batch this large is written at once, without waiting for the pass


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (whole lines, never torn by a full pipe)."""
    for _ in range(_FULL_PIPE_TRIES):
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            time.sleep(0.001)  # a non-blocking pipe that is full: the line must not be torn
            continue
        except OSError:
            return  # the log's reader is gone: logging must not break the proxy
        if not data:
            return
    # Its reader has not drained the pipe for a second: the rest is dropped.


class _LineBatch:
    """Lines held for one scheduler pass; a Trio task writes them after it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lines: list[str] = []
        self._size = 0
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, line: str) -> None:
        if not self._lines:
            self._lot.unpark_all()  # the writer runs after the tasks of this pass
        self._lines.append(line)
        self._size += len(line)
        if self._size >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            data = ("\n".join(self._lines) + "\n").encode()
            self._lines.clear()
            self._size = 0
            _write_fd(self.fd, data)

    async def serve(self) -> None:
        try:
            while True:
                self.flush()  # what came before this task first ran, then each pass's
                await self._lot.park()
        finally:
            self.flush()


_batch: _LineBatch | None = None
_json_stream: int | None = None  # the descriptor configure_logging sends JSON lines to


@dataclass(frozen=True)
class _FastPath:
    """What :func:`write_info_line` needs of the JSON configuration it may bypass: its
    processor, the list structlog runs (``capture_logs`` edits it in place), its clock."""

    render: Any
    processors: list[Any]
    stamp: _Stamp


_fast: _FastPath | None = None


def write_info_line(members: str, event: str) -> bool:
    """Write the info line ``{<members>, "event": <event>, "level": "info", "timestamp":
    <now>}``, the line structlog would render for those keys, without structlog's
    dispatch: ``members`` are the object's members rendered by the caller as
    ``json.dumps`` would (``"key": value`` joined by ``", "``). Done only while this
    process logs JSON lines to a descriptor as :func:`configure_logging` set it up, at
    info or lower (not while a test captures them); False otherwise, and the caller
    logs the event through structlog. A waypoint's access log: 9.7 us a line through
    structlog, about 3 us this way (a loop rendering any mapping of fields instead of
    the caller's one f-string cost 2 us more a request, measured)."""
    fast, fd = _fast, _json_stream
    if (
        fast is None
        or fd is None
        or len(fast.processors) != 1
        or fast.processors[0] is not fast.render
    ):
        return False
    _emit(fd, f'{{{members}, "event": "{event}", "level": "info", '
              f'"timestamp": "{fast.stamp.now()}"}}')  # fmt: skip
    return True


def _emit(fd: int, line: str) -> None:
    """One rendered line to ``fd``: into the scheduler pass's batch when one is open for
    it, else written now."""
    if _batch is not None and _batch.fd == fd:
        _batch.add(line)
    else:
        _write_fd(fd, (line + "\n").encode())


@contextlib.asynccontextmanager
async def open_line_batching() -> AsyncIterator[None]:
    """Inside, JSON log lines written to a file descriptor leave once per pass of Trio's
    scheduler (see the module's docstring); everything is written when it ends."""
    global _batch
    stream = _json_stream
    if _batch is not None or stream is None:  # not JSON to a descriptor, or already on
        yield
        return
    batch = _LineBatch(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch.serve)
        _batch = batch
        try:
            yield
        finally:
            batch.flush()  # before lines go straight out again: they stay in order
            _batch = None
            nursery.cancel_scope.cancel()


class _LineLogger:
    """Writes each rendered line with one ``os.write`` to the stream's descriptor (or the
    stream's own write and flush when it has none, as a test's ``StringIO``)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        try:
            self._fd: int | None = stream.fileno()
        except (OSError, ValueError, AttributeError):
            self._fd = None
        if self._fd is not None:
            stream.flush()

    def msg(self, message: str) -> None:
        if self._fd is None:
            self._stream.write(message + "\n")
            self._stream.flush()
            return
        _emit(self._fd, message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure_logging(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog once per process: JSON unless ``stream`` is a TTY."""
    out = stream or sys.stderr
    if json is None:
        json = not out.isatty()
    wrapper = structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()])
    global _json_stream, _fast
    _json_stream = _fast = None
    if json:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            _json_stream = out.fileno()
        stamp = _Stamp()
        render = _json_line(stamp)
        structlog.configure(
            processors=[render],
            wrapper_class=wrapper,
            logger_factory=lambda *_args: _LineLogger(out),
            cache_logger_on_first_use=True,
        )
        info = logging.getLevelNamesMapping()[level.upper()] <= logging.INFO
        if _json_stream is not None and info:
            _fast = _FastPath(render, structlog.get_config()["processors"], stamp)
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=wrapper,
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
