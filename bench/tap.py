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

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import structlog
from prometheus_client import CollectorRegistry

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


def measure(n: int, repeat: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    timers = {name: one_case(target) for name, target in CASES.items()}
    for _ in range(repeat):  # interleaved, so a slow moment hits every case alike
        for name, timer in timers.items():
            runs[name].append(timer(n) / n * 1e6)
    base = min(runs["no tap"])
    return {
        name: {"us_per_request": round(min(v), 2), "vs_no_tap_us": round(min(v) - base, 2),
               "median": round(statistics.median(v), 2)}
        for name, v in runs.items()
    }  # fmt: skip


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| tap | µs per request (fastest run) | vs no tap | median |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name, row in results.items():
        lines.append(f"| {name} | {row['us_per_request']:.2f} | {row['vs_no_tap_us']:+.2f} | "
                     f"{row['median']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tap", description=__doc__)
    parser.add_argument("-n", type=int, default=20_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="-n 5000 --repeat 3")
    parser.add_argument("--json", type=Path, help="write the results there too")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n, repeat = (5_000, 3) if args.quick else (args.n, args.repeat)
    results = measure(n, repeat)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"n": n, "repeat": repeat, "results": results},
                                        indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
