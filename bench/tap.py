"""``python -m bench.tap [--quick] [--json FILE]``: what ``ambit tap`` costs the waypoint
per request, in process: :meth:`waypoint.session.Session.account` (the request's series,
its access-log line, and the tap's hook) with nobody tapping, with a tap open that does
not match the request (another namespace: the filter alone), and with a tap that matches
every request (the event built, buffered, turned into JSON and encoded as the config
stream sends it, every :data:`mesh.tap.BATCH` requests, as :meth:`ProxyTap.serve` does).
The access log is switched off (as in ``bench.resilience``), so the rows are the
metrics' and the tap's own work. Each row is the fastest of ``--repeat`` interleaved runs
of ``-n`` requests, the median beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import cast

from prometheus_client import CollectorRegistry

from bench import per_request
from mesh.config_stream import encode
from mesh.tap import TapFilter
from tests.builders import service, snapshot, workload
from waypoint.destination import Caller, Destination
from waypoint.session import Session, Shared
from waypoint.telemetry import Finished, RequestMetrics, new_request_id
from waypoint.upstream import Target

CLIENT = workload("client", "demo", ip="10.0.0.10")
SERVER = workload("server", "demo", ip="10.0.0.11")
WEB = service("server", "demo", backends=[SERVER])
TARGET = Target(SERVER.ip, 8080, SERVER.identity, SERVER.uid)
CASES = {"no tap": None, "tap, other namespace": "ns/elsewhere", "tap, every request": "ns/demo"}


class _Proxy:
    def __init__(self) -> None:
        self.metrics = RequestMetrics(CollectorRegistry())


def one_case(target: str | None) -> Callable[[int], float]:
    """A function timing ``n`` finished requests through ``Session.account`` (seconds)."""
    proxy = _Proxy()
    if target is not None:
        proxy.metrics.tap.start("t1", TapFilter.build(target))
    tap = proxy.metrics.tap
    snap = snapshot(CLIENT, SERVER, WEB)
    caller = Caller(CLIENT.identity, CLIENT, f"{CLIENT.ip}:40000")
    session = Session(cast(Shared, proxy), snap, Destination(WEB.vip, 80, WEB, None), caller)

    def run(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            done = Finished("GET", "server.demo:80", "/hello", "HTTP/1.1", new_request_id(), "",
                            time.monotonic(), status=200, response_bytes=120)  # fmt: skip
            session.account(done, TARGET, None)
            if tap.active and i % 64 == 63:
                for message in tap.take():
                    encode(message)
        return time.perf_counter() - started

    return run


def measure(n: int, repeat: int) -> per_request.Results:
    timers = {name: one_case(target) for name, target in CASES.items()}
    return per_request.measure(timers, n, repeat, base="no tap")


def table(results: per_request.Results) -> str:
    return per_request.table(results, "tap", "no tap")


def main(argv: Sequence[str] | None = None) -> int:
    return per_request.main("python -m bench.tap", __doc__, measure, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
