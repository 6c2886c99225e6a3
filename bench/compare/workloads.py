"""The workloads: each runs one load generator inside a scenario's client netns.

- ``throughput``: ``iperf3 -c`` with 1 or N streams (Gbit/s received);
- ``fixed_rate``: h2load ``--h1 --rps`` over 4 connections, a constant request
  rate; latencies (request sent -> response complete) come from h2load's
  per-request log, the first ``SKIP_SECONDS`` (connection setup) left out;
- ``max_rate``: wrk, 16 keep-alive connections, 2 threads;
- ``churn``: wrk with ``Connection: close``: each request on a new TCP
  connection, so requests/s is new connections/s.

Every run is wrapped by :func:`with_cost`, which reads the scenario's proxy
processes' CPU time before and after and their peak RSS over the run. The
parsers are pure functions of the tools' output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.compare import stats
from bench.compare.system import (
    BenchError,
    cpu_seconds,
    in_netns,
    peak_rss_kib,
    reset_peak_rss,
    run,
)

SKIP_SECONDS = 0.5
RATE_CONNECTIONS = 4
MAX_RATE_CONNECTIONS = 16
CHURN_CONNECTIONS = 16
Sample = dict[str, float]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    netns: str  # the client's
    url: str  # the 1 KiB file, HTTP/1.1
    iperf: tuple[str, int] | None  # where iperf3 -c connects; None: not an L4 path
    proxies: dict[str, int] = field(default_factory=dict)  # role -> PID, for cost


def with_cost(scenario: Scenario, work: Callable[[], Sample]) -> Sample:
    """Run ``work`` and add ``cpu_s`` and ``cpu_sys_s`` (all proxies, user + system and system
    alone) and ``peak_rss_kib`` (largest proxy)."""
    pids = list(scenario.proxies.values())
    for pid in pids:
        reset_peak_rss(pid)
    before = [cpu_seconds(pid) for pid in pids]
    sample = work()
    after = [cpu_seconds(pid) for pid in pids]
    if pids:
        pairs = list(zip(after, before, strict=True))
        sample["cpu_s"] = sum(a[0] + a[1] - b[0] - b[1] for a, b in pairs)
        sample["cpu_sys_s"] = sum(a[1] - b[1] for a, b in pairs)
        sample["peak_rss_kib"] = float(max(peak_rss_kib(pid) for pid in pids))
    return sample


# ---- iperf3 ---------------------------------------------------------------------


def throughput(scenario: Scenario, streams: int, seconds: int) -> Sample:
    if scenario.iperf is None:
        raise BenchError(f"{scenario.name} is an HTTP proxy: no iperf3")
    host, port = scenario.iperf
    argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"]
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 30)
    return parse_iperf(done.stdout)


def parse_iperf(text: str) -> Sample:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchError(f"iperf3 gave no JSON: {text.strip()[:200]}") from exc
    if data.get("error"):
        raise BenchError(f"iperf3: {data['error']}")
    received = data["end"]["sum_received"]
    return {"gbps": received["bits_per_second"] / 1e9, "bytes": float(received["bytes"])}


# ---- h2load at a fixed rate -----------------------------------------------------


def fixed_rate(scenario: Scenario, rate: int, seconds: int, log_file: Path) -> Sample:
    """``rate`` requests/s spread over 4 HTTP/1.1 connections for ``seconds``."""
    argv = [
        "h2load", "--h1", "-c", str(RATE_CONNECTIONS), "-t", "1",
        "--rps", f"{rate / RATE_CONNECTIONS:g}", "-D", str(seconds),
        f"--log-file={log_file}", scenario.url,
    ]  # fmt: skip
    log_file.unlink(missing_ok=True)
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 30)
    if done.returncode != 0:
        done.check("h2load")
    failed = parse_h2load_failures(done.stdout)
    try:
        log = log_file.read_text()
    except OSError as exc:
        raise BenchError(f"h2load wrote no log: {done.stdout.strip()[-200:]}") from exc
    sample = parse_h2load_log(log, seconds)
    sample["failed"] = float(failed) + sample["failed"]
    sample["target_rps"] = float(rate)
    return sample


def parse_h2load_failures(text: str) -> int:
    """``failed + errored + timeout`` of h2load's ``requests:`` summary line."""
    match = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if not match:
        raise BenchError(f"h2load gave no summary: {text.strip()[-200:]}")
    return sum(int(g) for g in match.groups())


def parse_h2load_log(text: str, seconds: float) -> Sample:
    """Percentiles (ms) of the per-request log, skipping the first ``SKIP_SECONDS``."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows:
        raise BenchError("h2load completed no request")
    start = min(int(r[0]) for r in rows)
    kept = sorted(int(r[2]) / 1000 for r in rows if int(r[0]) - start >= SKIP_SECONDS * 1e6)
    if not kept:
        raise BenchError("h2load completed no request after the warm-up")
    not_ok = sum(1 for r in rows if r[1] != "200")
    return {
        "requests": float(len(rows)),
        "achieved_rps": len(rows) / seconds,
        "p50_ms": stats.percentile(kept, 50),
        "p90_ms": stats.percentile(kept, 90),
        "p99_ms": stats.percentile(kept, 99),
        "max_ms": kept[-1],
        "failed": float(not_ok),
    }


# ---- wrk ------------------------------------------------------------------------


def max_rate(scenario: Scenario, seconds: int) -> Sample:
    argv = [
        "wrk", "-t", "2", "-c", str(MAX_RATE_CONNECTIONS), "-d", f"{seconds}s", "--latency",
        scenario.url,
    ]  # fmt: skip
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 30).check("wrk")
    return parse_wrk(done.stdout)


def churn(scenario: Scenario, seconds: int) -> Sample:
    argv = [
        "wrk", "-t", "1", "-c", str(CHURN_CONNECTIONS), "-d", f"{seconds}s",
        "-H", "Connection: close", scenario.url,
    ]  # fmt: skip
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 30).check("wrk")
    sample = parse_wrk(done.stdout)
    sample["conn_per_s"] = sample["rps"]
    return sample


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise BenchError(f"wrk latency {value!r} not understood")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(text: str) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    if not rps or not total:
        raise BenchError(f"wrk gave no summary: {text.strip()[-200:]}")
    sample: Sample = {"rps": float(rps.group(1)), "requests": float(total.group(1))}
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sample["failed"] = float(errors)
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.MULTILINE)
        if match:
            sample[f"p{pct}_ms"] = _ms(match.group(1))
    if sample["requests"] and errors > sample["requests"] / 100:
        raise BenchError(f"wrk: {errors} errors in {int(sample['requests'])} requests")
    return sample


def check_path(scenario: Scenario) -> None:
    """20 requests through the scenario's path must all succeed, or the scenario is broken."""
    argv = ["h2load", "--h1", "-n", "20", "-c", "1", scenario.url]
    done = run(in_netns(scenario.netns, argv), timeout=20)
    if "20 succeeded" not in done.stdout:
        tail = (done.stdout + done.stderr).strip().splitlines()[-4:]
        raise BenchError(f"{scenario.name}: requests through the path fail: {' | '.join(tail)}")
