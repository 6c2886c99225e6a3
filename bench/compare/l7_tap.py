"""What an open ``ambit tap`` costs the waypoint end to end: the HTTP/1.1 max request rate
(wrk, the L7 section's ``l7_max_rate``) and the waypoint's CPU µs per request at a steady
1,000 requests/s (h2load ``--h1 --rps``), with nobody tapping and with ``ambit tap
svc/bench-l7/server -o json`` running (a tap that matches every request: the worst case),
interleaved per repetition. The tap's output goes to a file, whose events and ``dropped``
counts say how much of the traffic the tap showed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.compare import topology, workloads
from bench.compare.run import Settings
from bench.compare.workloads import Sample, Scenario

NAMESPACE = "bench-l7"
Measure = Callable[[int | None, Callable[[], Sample]], Sample]  # l7.with_waypoint
SETTLE_SECONDS = 1.5  # for the tap to reach the waypoint
RATE = 1000
REPS = 3


@contextmanager
def _tapping(cluster: topology.Cluster, out: Path, seen: dict[str, int]) -> Iterator[None]:
    env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir),
           "PYTHONPATH": str(topology.REPO)}  # fmt: skip
    with out.open("wb") as sink:
        tap = subprocess.Popen(
            [sys.executable, "-m", "ambit.cli", "tap", f"svc/{NAMESPACE}/server", "-o", "json"],
            stdout=sink, stderr=subprocess.DEVNULL, env=env, cwd=topology.REPO,
        )  # fmt: skip
        try:
            time.sleep(SETTLE_SECONDS)
            yield
        finally:
            tap.terminate()
            tap.wait(timeout=10)
    for line in out.read_text().splitlines():
        obj = json.loads(line)
        if obj.get("type") == "event":
            seen["events"] += 1
        elif obj.get("type") == "dropped":
            seen["dropped"] += obj["count"]


def run_tap(settings: Settings, cluster: topology.Cluster, scenario: Scenario,
            raw_dir: Path, measure: Measure) -> dict[str, Any]:  # fmt: skip
    """Per configuration (``no tap``, ``tap``): the median max rate, the waypoint's CPU µs
    per request at it and at 1,000 requests/s, and (``tap``) what the tap printed."""
    pid = scenario.proxies.get("waypoint")
    if pid is None:
        return {"error": "no waypoint"}
    runs: dict[str, dict[str, list[float]]] = {
        name: {"max_rps": [], "cpu_us_at_max": [], "cpu_us_at_1000": []}
        for name in ("no tap", "tap")
    }
    seen = {"events": 0, "dropped": 0, "requests": 0}
    for rep in range(max(settings.reps, REPS)):
        for name, row in runs.items():
            out = raw_dir / f"tap-{rep}.jsonl"
            with _tapping(cluster, out, seen) if name == "tap" else _nothing():
                top = measure(pid, lambda: workloads.max_rate(scenario, settings.max_seconds))
                log = raw_dir / f"h2load-tap-{name.replace(' ', '-')}.tsv"
                steady = measure(
                    pid, lambda log=log: workloads.fixed_rate(  # type: ignore[misc]
                        scenario, RATE, settings.rate_seconds, log)
                )  # fmt: skip
            row["max_rps"].append(top["rps"])
            row["cpu_us_at_max"].append(top["waypoint_cpu_s"] / top["requests"] * 1e6)
            done = steady.get("achieved_rps", 0.0) * settings.rate_seconds
            if done:
                row["cpu_us_at_1000"].append(steady["waypoint_cpu_s"] / done * 1e6)
            if name == "tap":
                seen["requests"] += int(top["requests"] + done)
            print(f"  [{rep + 1}] {name:6s} max {top['rps']:.0f} req/s, "
                  f"{row['cpu_us_at_max'][-1]:.0f} µs/request; at 1,000/s "
                  f"{row['cpu_us_at_1000'][-1] if done else float('nan'):.0f} µs/request",
                  flush=True)  # fmt: skip
    result: dict[str, Any] = {
        name: {key: round(statistics.median(v), 1) for key, v in row.items() if v}
        | {"runs": {key: [round(x, 1) for x in v] for key, v in row.items()}}
        for name, row in runs.items()
    }
    result["tap_output"] = seen
    return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def report_lines(tap: dict[str, Any]) -> list[str]:
    """The results.md table."""
    if not tap or "error" in tap:
        return [f"Tap cost not measured: {tap.get('error', 'no run')}"] if tap else []
    lines = ["### What an open ambit tap costs the waypoint", "",
             "| | HTTP/1.1 max req/s | waypoint µs/request at max | at 1,000 req/s |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for name in ("no tap", "tap"):
        row = tap.get(name, {})
        cpu_max, cpu_1k = row.get("cpu_us_at_max", 0), row.get("cpu_us_at_1000", 0)
        lines.append(f"| {name} | {row.get('max_rps', 0):,.0f} | {cpu_max:.0f} | {cpu_1k:.0f} |")
    seen = tap.get("tap_output", {})
    lines += ["", f"The tap matched every request ({seen.get('requests', 0):,} sent while it "
              f"ran): it printed {seen.get('events', 0):,} events and reported "
              f"{seen.get('dropped', 0):,} dropped (the rest were still buffered when it "
              "stopped). Medians of the repetitions, interleaved.", ""]  # fmt: skip
    return lines
