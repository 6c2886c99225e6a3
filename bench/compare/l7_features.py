"""What each resilience feature costs the waypoint per request (issue 16): CPU µs per
request at a steady 1,000 requests/s (h2load ``--h1 --rps``, the L7 section's
``l7_latency_1000``) with the feature configured for ``bench-l7``'s Service and none
of its machinery triggered (no failure, no ejection, a limit never reached), against
the same load with nothing configured, measured in one block, interleaved per
repetition. The waypoint's own CPU is ``/proc/PID/stat`` utime+stime over the run.

Configurations, each applied with ``ambit apply`` (and removed with ``ambit delete``):

- ``none``: the waypoint as the rest of the L7 section measures it (no route);
- ``route``: an HTTPRoute with one rule to the Service (the base the filters ride on);
- ``retry``: that rule with ``retry: {codes: [503], attempts: 2}`` (the app never
  answers 503: the cost is keeping the request's retry state and budget);
- ``destination-rule``: a DestinationRule with outlier detection and a connection pool;
- ``peak-ewma``: a DestinationRule choosing the peak-EWMA balancer;
- ``fault``: the rule naming a FaultInjection that aborts 0% and delays 0%;
- ``rate-limit``: the rule naming a LocalRateLimit of 100,000 requests/s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import topology, workloads
from bench.compare.run import Settings
from bench.compare.system import BenchError
from bench.compare.workloads import Sample, Scenario

NAMESPACE = "bench-l7"  # the L7 section's (:data:`bench.compare.l7.NAMESPACE` is this)
Measure = Callable[[int | None, Callable[[], Sample]], Sample]  # l7.with_waypoint

SETTLE_SECONDS = 2.0  # for the waypoint to have the config
RATE = 1000
REPS = 3  # at least, even in a quick run: one run apiece is within the noise


def _route(*rule_lines: str) -> str:
    extra = "".join(f"    {line}\n" for line in rule_lines)
    return (
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        f"metadata: {{name: server, namespace: {NAMESPACE}}}\nspec:\n"
        '  parentRefs: [{group: "", kind: Service, name: server, port: '
        f"{topology.HTTP_PORT}}}]\n  rules:\n"
        f"  - backendRefs: [{{name: server, port: {topology.HTTP_PORT}}}]\n{extra}"
    )


def _destination_rule(policy: str) -> str:
    return ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: server, namespace: {NAMESPACE}}}\n"
            f"spec:\n  host: server\n  trafficPolicy: {policy}\n")  # fmt: skip


def _extension(kind: str) -> str:
    return ("filters: [{type: ExtensionRef, extensionRef: {group: networking.ambit.io,"
            f" kind: {kind}, name: bench}}}}]")  # fmt: skip


FAULT = (f"apiVersion: networking.ambit.io/v1alpha1\nkind: FaultInjection\n"
         f"metadata: {{name: bench, namespace: {NAMESPACE}}}\n"
         "spec:\n  delay: {fixedDelay: 100ms, percentage: {value: 0}}\n"
         "  abort: {httpStatus: 503, percentage: {value: 0}}\n")  # fmt: skip
LIMIT = (f"apiVersion: networking.ambit.io/v1alpha1\nkind: LocalRateLimit\n"
         f"metadata: {{name: bench, namespace: {NAMESPACE}}}\n"
         "spec: {requests: 100000, unit: Second}\n")  # fmt: skip

CONFIGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "route": (_route(),),
    "retry": (_route("retry: {codes: [503], attempts: 2}"),),
    "destination-rule": (_destination_rule(
        "{outlierDetection: {consecutive5xxErrors: 5}, connectionPool: {http:"
        " {http2MaxRequests: 10000, http1MaxPendingRequests: 10000}, tcp: {maxConnections: 10000}}}"
    ),),
    "peak-ewma": (_destination_rule("{loadBalancer: {simple: PEAK_EWMA}}"),),
    "fault": (FAULT, _route(_extension("FaultInjection"))),
    "rate-limit": (LIMIT, _route(_extension("LocalRateLimit"))),
}  # fmt: skip


def _apply(cluster: topology.Cluster, raw_dir: Path, name: str, docs: tuple[str, ...],
           verb: str) -> None:  # fmt: skip
    if not docs:
        return
    path = raw_dir / f"feature-{name}.yaml"
    path.write_text("\n---\n".join(docs))
    done = cluster.ambit(verb, "-f", str(path))
    if done.returncode != 0 and verb == "apply":
        raise BenchError(f"ambit apply {name}: {done.stderr.strip()[-300:]}")


def run_features(settings: Settings, cluster: topology.Cluster, scenario: Scenario,
                 raw_dir: Path, measure: Measure) -> dict[str, Any]:  # fmt: skip
    """Each configuration's waypoint CPU µs per request at 1,000 requests/s: the median
    over ``settings.reps`` (at least :data:`REPS`) interleaved runs, and its difference
    from ``none``."""
    pid = scenario.proxies.get("waypoint")
    if pid is None:
        return {"error": "no waypoint"}
    runs: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for rep in range(max(settings.reps, REPS)):
        for name, docs in CONFIGS.items():
            _apply(cluster, raw_dir, name, docs, "apply")
            time.sleep(SETTLE_SECONDS)
            log = raw_dir / f"h2load-feature-{name}.tsv"

            def load(log: Path = log) -> Sample:
                return workloads.fixed_rate(scenario, RATE, settings.rate_seconds, log)

            try:
                sample = measure(pid, load)
            finally:
                _apply(cluster, raw_dir, name, docs, "delete")
            requests = sample.get("achieved_rps", 0.0) * settings.rate_seconds
            if requests and sample.get("failed", 0.0) == 0.0:
                runs[name].append(sample["waypoint_cpu_s"] / requests * 1e6)
            print(
                f"  [{rep + 1}] feature {name:17s} "
                f"{runs[name][-1] if runs[name] else float('nan'):.0f} µs/request",
                flush=True,
            )
    medians = {name: statistics.median(v) for name, v in runs.items() if v}
    base = medians.get("none")
    return {
        name: {"cpu_us_per_request": round(value, 1),
               "vs_none_us": round(value - base, 1) if base is not None else None,
               "runs": [round(v, 1) for v in runs[name]]}
        for name, value in medians.items()
    }  # fmt: skip


def report_lines(features: dict[str, Any]) -> list[str]:
    """The results.md table."""
    if not features or "error" in features:
        return (
            [f"Feature costs not measured: {features.get('error', 'no run')}"] if features else []
        )
    lines = [
        "### What each resilience feature costs the waypoint",
        "",
        "| configured | waypoint CPU µs per request | vs none |",
        "| --- | --- | --- |",
    ]
    for name, row in features.items():
        delta = row["vs_none_us"]
        lines.append(f"| {name} | {row['cpu_us_per_request']:.0f} | "
                     f"{'' if delta is None else f'{delta:+.0f}'} |")  # fmt: skip
    lines += ["", "At a steady 1,000 requests/s (h2load --h1 --rps, 4 connections), the median of "
              "the repetitions, each configuration run in turn; the feature configured but "
              "never triggered (no failure, no ejection, a limit never reached).", ""]  # fmt: skip
    return lines
