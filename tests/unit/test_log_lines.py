"""JSON log lines as a process writes them: the waypoint's access line written without
structlog's dispatch is the line structlog writes (in a process of its own), and inside
``open_line_batching`` lines leave after the scheduler's pass, in order, and all of them
when it ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from mesh import telemetry
from mesh.identity import SpiffeId
from mesh.model import Service
from waypoint.telemetry import Finished, RequestMetrics, account

REPO = Path(__file__).resolve().parents[2]
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


BASE = {
    "method": "GET",
    "authority": "server.b:8080",
    "path": "/",
    "protocol": "HTTP/1.1",
    "request_id": "d4fdbf7c-87fb-480f-9471-d6c25967a9ab",
    "traceparent": "",
    "status": 200,
}
CASES = [
    BASE,
    {**BASE, "path": '/a "quoted" \\ path?x=\u00e9\u4e2d&y=\x01\x7f', "authority": "h\u00f6st:80",
     "method": "PATCH", "status": 503, "flags": "UF,URX"},
    {**BASE, "protocol": "HTTP/2", "grpc": True, "grpc_status": "14",
     "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
]  # fmt: skip


# In a process of its own: structlog's module-level loggers keep the configuration they
# first used, so the waypoint's access logger must not meet this test's configuration in
# the test process (a later test's capture_logs would not see it).
COMPARE = """
import json, sys, time
from prometheus_client import CollectorRegistry
from mesh import telemetry
from mesh.identity import SpiffeId
from mesh.model import Service
from structlog.testing import capture_logs
from waypoint.telemetry import Finished, RequestMetrics, account

telemetry.configure_logging("info", json=True, stream=sys.stdout)
metrics = RequestMetrics(CollectorRegistry())
source = metrics.side("source", None, SpiffeId.parse("spiffe://cluster.local/ns/a/sa/client"))
dest = metrics.side("destination", None, SpiffeId.parse("spiffe://cluster.local/ns/b/sa/server"))
fast = telemetry._fast
for case in json.loads(sys.argv[1]):
    done = Finished(started=time.monotonic(), **case)
    for upstream in ("10.0.0.9:8080", None):
        service = Service("server", "b", "10.96.0.9", (), ()) if upstream else None
        for shortcut in (fast, None):
            telemetry._fast = shortcut
            account(metrics, done, source=source, destination=dest, service=service,
                    upstream_host=upstream)
telemetry._fast = fast
with capture_logs() as captured:
    account(metrics, Finished(started=time.monotonic(), method="GET", authority="a",
            path="/captured", protocol="HTTP/1.1", request_id="r", traceparent=""),
            source=source, destination=dest, service=None, upstream_host=None)
print(json.dumps({"captured": [e.get("path") for e in captured if e["event"] == "request"]}))
"""


def test_the_access_line_is_the_line_structlog_writes() -> None:
    cases = [dict(c) for c in CASES]
    done = _python(COMPARE, json.dumps(cases))
    assert done.returncode == 0, done.stderr
    *written, last = done.stdout.splitlines()
    assert len(written) == 4 * len(cases)
    for n in range(0, len(written), 2):  # the shortcut's line, then structlog's
        ours, theirs = json.loads(written[n]), json.loads(written[n + 1])
        assert abs(ours.pop("duration_ms") - theirs.pop("duration_ms")) < 1000
        ours.pop("timestamp"), theirs.pop("timestamp")
        assert list(ours.items()) == list(theirs.items())  # the same keys in the same order
        assert ours["path"] == cases[n // 4]["path"]
    # While a test captures logs, the event goes to it, not to the descriptor.
    assert json.loads(last) == {"captured": ["/captured"]}


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


def test_above_info_there_is_no_shortcut() -> None:
    script = (
        "import sys\nfrom mesh import telemetry\n"
        "telemetry.configure_logging('warning', json=True, stream=sys.stdout)\n"
        "print(telemetry._fast is None, telemetry.write_info_line('\"a\": 1', 'request'))\n"
    )
    done = _python(script)
    assert done.stdout == "True False\n", done.stderr


def _python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )  # fmt: skip
