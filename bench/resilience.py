"""``python -m bench.resilience [--quick] [--json FILE]``: the waypoint's own CPU per
request for each resilience feature, in process, with and without it.

What a request pays for a feature that is configured but not triggered is a few
microseconds: far below what the end-to-end L7 bench can resolve (its CPU per request
at 1,000 requests/s moves by ±10% from run to run, about ±70 µs). So each feature's
per-request code is timed here alone, as the sessions call it, on one snapshot, under
Trio: the backend's state (``Backends.of``, ``admit``, ``pick``, ``connection_slot``,
``started``, ``finished``, ``release``), a rule's retry state (``Retries.of``,
``close``), and the rule's ExtensionRef filters (``Extensions.apply``). The
``none`` row is what every request pays since issue 16 (the backend's state with no
DestinationRule); the rows after it add one feature each. Each row is the fastest of
``--repeat`` interleaved runs of ``-n`` requests (as ``timeit`` reports: the slower
runs are the machine's noise, not the code's cost), with the median beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import trio

from bench import per_request
from mesh.model import MeshSnapshot, Resource
from mesh.model_l7 import Retry
from mesh.model_traffic import (
    ConnectionPool,
    DestinationRule,
    ExtensionRef,
    FaultInjection,
    LocalRateLimit,
    OutlierDetection,
)
from tests.builders import identity, service, snapshot, workload
from waypoint.backends import Backends
from waypoint.decisions import Backend, Forward, Rule
from waypoint.dispatch import Plan
from waypoint.extensions import Extensions
from waypoint.http_request import HttpRequest
from waypoint.retries import Retries
from waypoint.upstream import Balancer, Target

PODS = [workload(f"web-{i}", ip=f"10.0.0.{11 + i}", labels={"app": "web"}) for i in range(3)]
WEB = service("web", backends=PODS)
TARGETS = [Target(p.ip, 8080, p.identity, p.uid) for p in PODS]
CALLER = identity("default", "client")
GROUP = "networking.ambit.io"
RULE_DR = DestinationRule(
    "web", "default", "web", "default/web", "LEAST_REQUEST",
    ConnectionPool(max_connections=10_000, max_pending=10_000, max_requests=10_000),
    OutlierDetection(),
)  # fmt: skip
CASES: dict[str, tuple[tuple[Resource, ...], Retry | None, tuple[ExtensionRef, ...]]] = {
    "none": ((), None, ()),
    "retry": ((), Retry((503,), attempts=2), ()),
    "destination-rule": ((RULE_DR,), None, ()),
    "peak-ewma": ((DestinationRule("web", "default", "web", "default/web", "PEAK_EWMA"),),
                  None, ()),
    "fault": ((FaultInjection("f", "default", delay_ms=100, abort_status=503),), None,
              (ExtensionRef(GROUP, "FaultInjection", "f"),)),
    "rate-limit": ((LocalRateLimit("l", "default", requests=1_000_000),), None,
                   (ExtensionRef(GROUP, "LocalRateLimit", "l"),)),
}  # fmt: skip


def one_case(extra: tuple[Resource, ...], retry: Retry | None,
             refs: tuple[ExtensionRef, ...]) -> Callable[[int], float]:  # fmt: skip
    """A function timing ``n`` requests through the case's per-request code (seconds)."""
    snap: MeshSnapshot = snapshot(WEB, *PODS, *extra)
    request = HttpRequest("GET", "/", "web")
    rule = Rule("HTTPRoute", "default/web", 0, retry=retry)
    plan = Plan(request, TARGETS, WEB, Forward(rule, Backend("default/web", 80, 1), request))

    async def run(n: int) -> float:
        backends = Backends(Balancer())
        extensions = Extensions()
        started = time.perf_counter()
        for _ in range(n):
            if refs:
                extensions.apply(snap, rule, refs, CALLER, grpc=False)
            backend = backends.of(snap, WEB)
            backend.admit()
            retries = Retries.of(plan, backend)
            target = backend.pick(TARGETS)
            assert target is not None
            slot = await backend.connection_slot()
            begun = backend.started(target)
            backend.finished(target, 200, begun, len(TARGETS))
            backend.connection_done(slot)
            backend.release()
            if retries is not None:
                retries.close()
        return time.perf_counter() - started

    return lambda n: trio.run(run, n)


def measure(n: int, repeat: int) -> per_request.Results:
    timers = {name: one_case(*case) for name, case in CASES.items()}
    return per_request.measure(timers, n, repeat, base="none")


def table(results: per_request.Results) -> str:
    return per_request.table(results, "configured", "none")


def main(argv: Sequence[str] | None = None) -> int:
    return per_request.main("python -m bench.resilience", __doc__, measure, table, argv)


if __name__ == "__main__":
    raise SystemExit(main())
