"""JSON log lines as a process writes them: the waypoint's access line written without
structlog's dispatch is the line structlog writes, and inside ``open_line_batching``
lines leave after the scheduler's pass, in order, and all of them when it ends."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from mesh import telemetry
from mesh.identity import SpiffeId
from mesh.model import Service
from waypoint.telemetry import Finished, RequestMetrics, account

SOURCE = SpiffeId.parse("spiffe://cluster.local/ns/a/sa/client")
DEST = SpiffeId.parse("spiffe://cluster.local/ns/b/sa/server")


@pytest.fixture(scope="module")
def log_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """JSON logging to a real file (a descriptor, as a process's stdout), configured once:
    structlog's module-level loggers keep the configuration they first used."""
    path = tmp_path_factory.mktemp("log") / "log"
    with path.open("w") as out:
        telemetry.configure_logging("info", json=True, stream=out)
        try:
            yield path
        finally:
            structlog.reset_defaults()
            telemetry._fast = telemetry._json_stream = None


class Tail:
    """The lines written to the log since it was made."""

    def __init__(self, path: Path) -> None:
        self.path, self.start = path, path.stat().st_size

    def text(self) -> str:
        with self.path.open() as f:
            f.seek(self.start)
            return f.read()

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text().splitlines()]


@pytest.fixture
def log_file(log_out: Path) -> Tail:
    return Tail(log_out)


def _finished(**changes: object) -> Finished:
    values: dict[str, object] = {
        "method": "GET", "authority": "server.b:8080", "path": "/", "protocol": "HTTP/1.1",
        "request_id": "d4fdbf7c-87fb-480f-9471-d6c25967a9ab", "traceparent": "",
        "started": time.monotonic(), "status": 200,
    }  # fmt: skip
    values.update(changes)
    return Finished(**values)  # type: ignore[arg-type]


def _account(done: Finished, upstream: str | None = "10.0.0.9:8080") -> None:
    metrics = RequestMetrics(CollectorRegistry())
    account(
        metrics, done,
        source=metrics.side("source", None, SOURCE),
        destination=metrics.side("destination", None, DEST),
        service=Service("server", "b", "10.96.0.9", (), ()) if upstream else None,
        upstream_host=upstream,
    )  # fmt: skip


ODD = [
    _finished(),
    _finished(
        path='/a "quoted" \\ path?x=\u00e9\u4e2d&y=\x01\x7f',
        authority="h\u00f6st:80",
        method="PATCH",
        status=503,
        flags="UF,URX",
    ),
    _finished(
        protocol="HTTP/2",
        grpc=True,
        grpc_status="14",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ),
]


@contextlib.contextmanager
def through_structlog() -> Iterator[None]:
    fast = telemetry._fast
    telemetry._fast = None
    try:
        yield
    finally:
        telemetry._fast = fast


@pytest.mark.parametrize("done", ODD)
def test_the_access_line_is_the_line_structlog_writes(log_file: Tail, done: Finished) -> None:
    assert telemetry._fast is not None
    _account(done)
    with through_structlog():
        _account(done)
    _account(done, upstream=None)  # no endpoint, no service: nulls
    with through_structlog():
        _account(done, upstream=None)
    written = log_file.text().splitlines()
    assert len(written) == 4
    for ours, theirs in ((written[0], written[1]), (written[2], written[3])):
        a, b = json.loads(ours), json.loads(theirs)
        assert abs(a.pop("duration_ms") - b.pop("duration_ms")) < 1000
        a.pop("timestamp"), b.pop("timestamp")
        assert list(a.items()) == list(b.items())  # the same keys, in the same order
    assert json.loads(written[0])["path"] == done.path


def test_a_test_capturing_logs_still_sees_the_access_event(log_file: Tail) -> None:
    with capture_logs() as captured:
        _account(_finished(path="/captured"))
    assert [e["path"] for e in captured if e["event"] == "request"] == ["/captured"]
    assert log_file.text() == ""


async def test_batched_lines_leave_after_the_pass_in_order_and_all_at_the_end(
    log_file: Tail,
) -> None:
    log = structlog.get_logger("t")
    async with telemetry.open_line_batching():
        log.info("one")
        _account(_finished(path="/two"))
        log.warning("three")
        assert log_file.text() == ""  # held for this pass of the scheduler
        await trio.testing.wait_all_tasks_blocked()
        assert [e.get("path", e["event"]) for e in log_file.lines()] == ["one", "/two", "three"]
        log.info("four")
    assert log_file.lines()[-1]["event"] == "four"  # written when the batching ends


async def test_a_large_batch_is_written_without_waiting_for_the_pass(log_file: Tail) -> None:
    log = structlog.get_logger("t")
    async with telemetry.open_line_batching():
        n = 0
        while not log_file.text() and n < 10_000:
            log.info("filler", text="x" * 100)
            n += 1
        assert 0 < n < 10_000
        assert len(log_file.text()) >= telemetry.BATCH_BYTES  # written whole, at once


def test_above_info_there_is_no_shortcut(tmp_path: Path, log_out: Path) -> None:
    with (tmp_path / "log").open("w") as out:
        telemetry.configure_logging("warning", json=True, stream=out)
        assert telemetry._fast is None
        assert not telemetry.write_info_line('"a": 1', "request")
        telemetry.configure_logging("info", json=True, stream=out)
        assert telemetry._fast is not None  # (this module's fixture configures it back)
