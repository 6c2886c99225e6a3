"""The L7 section: requests through a waypoint, against ambit's L4 path and haproxy.

Namespace ``bench-l7`` (ambient, its own client and server pods, a Service
``server`` with ports ``http`` 8080, ``http2`` 8081 and ``grpc`` 50051) gets a
waypoint with ``ambit waypoint apply -n bench-l7 --enroll-namespace``, so its
Service's traffic goes client -> ztunnel node-1 -> HBONE -> waypoint -> HBONE
-> ztunnel node-2 -> server. The L4 scenarios' ``bench-mesh`` is not enrolled
and stays as it was. Three scenarios, every one from node-1's client to
node-2's server:

- ``ambit-l4``: ``bench-mesh``'s client to its server's pod IP (the L4
  section's ``ambit`` path, no waypoint);
- ``ambit-waypoint``: ``bench-l7``'s client to the Service's address;
- ``haproxy``: the plain client through haproxy in its pod (HTTP/1.1 to
  nginx, h2c and gRPC over HTTP/2 to the server): one L7 hop, no TLS.

Workloads, repetitions interleaved as in the L4 section:

- ``l7_max_rate``: wrk, HTTP/1.1 keep-alive, 16 connections (the L4 one);
- ``l7_h2_rate``: h2load, h2c with prior knowledge, 4 connections x 16
  streams, to nginx's HTTP/2 port;
- ``l7_latency_1000``: h2load ``--h1 --rps``, 1,000 requests/s on 4
  connections (the L4 one); the waypoint's CPU over the run
  (``/proc/PID/stat`` utime+stime) and its RSS (VmRSS sampled every 0.25 s,
  and VmHWM) give its cost at a steady 1,000 requests/s;
- ``l7_grpc``: unary calls/s, ``grpcload load`` (grpc-go: 32 callers on 4
  connections, every call's status checked) against ``grpcload serve``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare import l7_features, l7_tap, peers, profile, topology, workloads
from bench.compare.run import Runner, Settings, profile_dir_name
from bench.compare.system import BenchError, cpu_seconds, in_netns, peak_rss_kib, rss_kib, run
from bench.compare.workloads import Sample, Scenario

NAMESPACE = l7_features.NAMESPACE
WAYPOINT = "waypoint"
H2_CONNECTIONS = 4
H2_STREAMS = 16
GRPC_CONNECTIONS = 4
GRPC_WORKERS = 32
GRPCLOAD_SOURCE = Path(__file__).with_name("grpcload")
SCENARIOS = ("ambit-l4", "ambit-waypoint", "haproxy")
WORKLOADS = ("l7_max_rate", "l7_h2_rate", "l7_latency_1000", "l7_grpc")

DESCRIPTIONS = {
    "ambit-l4": "meshed pods (bench-mesh), client -> ztunnel node-1 -> HBONE -> ztunnel "
    "node-2 -> server's pod IP: the L4 path, no waypoint",
    "ambit-waypoint": "meshed pods (bench-l7, enrolled), client -> ztunnel node-1 -> HBONE -> "
    "waypoint (L7: HTTP parsed, routed, authorized, counted, logged) -> HBONE -> ztunnel "
    "node-2 -> server, to the Service's address",
    "haproxy": "plain pods: client -> haproxy (1 thread, in the client pod; HTTP/1.1 "
    "keep-alive to nginx, HTTP/2 to the server for h2c and gRPC) -> server",
}


@dataclass(frozen=True)
class Targets:
    """Where a scenario's client sends HTTP/2 (a URL) and gRPC (``HOST:PORT``)."""

    h2_url: str
    grpc: str


# ---- set-up ---------------------------------------------------------------------


def go_binary() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if Path(p).exists()), None
    )


def build_grpcload(workdir: Path) -> Path:
    """``go build`` of :file:`grpcload/` (grpc-go from the Go module proxy, pinned by go.sum)."""
    go = go_binary()
    if go is None:
        raise BenchError("no Go toolchain (go) for the gRPC load tool: install Go 1.24 or later")
    out = workdir / "grpcload"
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    done = run([go, "-C", str(GRPCLOAD_SOURCE), "build", "-o", str(out), "."], timeout=600, env=env)
    done.check("go build grpcload")
    out.chmod(0o755)
    return out


def deploy_waypoint(cluster: topology.Cluster, timeout: float = 90.0) -> int:
    """``ambit waypoint apply -n bench-l7 --enroll-namespace``; wait until the Service is bound
    to it; the waypoint process's PID."""
    applied = cluster.ambit("waypoint", "apply", "-n", NAMESPACE, "--enroll-namespace")
    if applied.returncode != 0:
        raise BenchError(f"ambit waypoint apply: {applied.stderr.strip()[-300:]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _bound(cluster) and (pid := waypoint_pid(cluster)) is not None:
            return pid
        time.sleep(0.5)
    raise BenchError(f"the waypoint of {NAMESPACE} was not bound and running after {timeout:.0f} s")


def _bound(cluster: topology.Cluster) -> bool:
    shown = cluster.ambit("get", "service", "server", "-n", NAMESPACE, "-o", "json")
    if shown.returncode != 0:
        return False
    conditions = json.loads(shown.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "ambit.io/WaypointBound" and c["status"] == "True" for c in conditions)


def waypoint_pid(cluster: topology.Cluster) -> int | None:
    """PID of the ``waypoint/bench-l7/waypoint`` component, when it runs."""
    result = cluster.ambit("get", "components", "-o", "json")
    if result.returncode != 0:
        return None
    name = f"waypoint/{NAMESPACE}/{WAYPOINT}"
    found = [c for c in json.loads(result.stdout) if c.get("name") == name]
    pid = found[0].get("pid") if found else None
    return int(pid) if pid and found[0].get("status") == "Running" else None


def service_ip(cluster: topology.Cluster) -> str:
    shown = cluster.ambit("get", "service", "server", "-n", NAMESPACE, "-o", "json")
    if shown.returncode != 0:
        raise BenchError(f"ambit get service server -n {NAMESPACE}: {shown.stderr.strip()[-200:]}")
    ip = json.loads(shown.stdout).get("spec", {}).get("clusterIP")
    if not ip:
        raise BenchError(f"service server in {NAMESPACE} has no clusterIP")
    return str(ip)


def scenarios(pods: dict[str, topology.Pod], ztunnels: dict[str, int], waypoint: int, vip: str,
              haproxy: int) -> tuple[list[Scenario], dict[str, Targets]]:  # fmt: skip
    """The three L7 scenarios (their HTTP/1.1 URL is ``Scenario.url``) and their h2c and gRPC
    targets. CPU is counted over every proxy process of the path."""
    mesh_c, mesh_s = pods["bench-mesh/client"], pods["bench-mesh/server"]
    l7_c, plain_c = pods[f"{NAMESPACE}/client"], pods["bench-plain/client"]
    path = topology.PATH_1K
    h1, h2, grpc = topology.HTTP_PORT, topology.H2C_PORT, topology.GRPC_PORT
    zt = {f"ztunnel {node}": pid for node, pid in sorted(ztunnels.items())}
    loopback = "127.0.0.1"
    found = [
        Scenario("ambit-l4", DESCRIPTIONS["ambit-l4"], mesh_c.netns,
                 f"http://{mesh_s.ip}:{h1}{path}", None, zt),
        Scenario("ambit-waypoint", DESCRIPTIONS["ambit-waypoint"], l7_c.netns,
                 f"http://{vip}:{h1}{path}", None, {**zt, "waypoint": waypoint}),
        Scenario("haproxy", DESCRIPTIONS["haproxy"], plain_c.netns,
                 f"http://{loopback}:{peers.HAPROXY_HTTP}{path}", None, {"haproxy": haproxy}),
    ]  # fmt: skip
    targets = {
        "ambit-l4": Targets(f"http://{mesh_s.ip}:{h2}{path}", f"{mesh_s.ip}:{grpc}"),
        "ambit-waypoint": Targets(f"http://{vip}:{h2}{path}", f"{vip}:{grpc}"),
        "haproxy": Targets(
            f"http://{loopback}:{peers.HAPROXY_H2C}{path}", f"{loopback}:{peers.HAPROXY_GRPC}"
        ),
    }
    return found, targets


# ---- the load generators ------------------------------------------------------------


def h2_rate(scenario: Scenario, url: str, seconds: int) -> Sample:
    """h2load with h2c prior knowledge: 4 connections x 16 concurrent streams, 1 thread."""
    argv = ["h2load", "-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS), "-t", "1",
            "-D", str(seconds), url]  # fmt: skip
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 30)
    if done.returncode != 0:
        done.check("h2load")
    return parse_h2load_summary(done.stdout)


def parse_h2load_summary(text: str) -> Sample:
    """Requests/s (succeeded ones over the run) from h2load's summary; HTTP/2 checked."""
    if "Application protocol: h2c" not in text:
        raise BenchError(f"h2load did not speak h2c: {text.strip()[-200:]}")
    finished = re.search(r"finished in ([\d.]+)(ms|s),", text)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", text)
    if not finished or not counts:
        raise BenchError(f"h2load gave no summary: {text.strip()[-200:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    succeeded = int(counts.group(4))
    failed = workloads.parse_h2load_failures(text)
    if failed > max(1, succeeded // 100):
        raise BenchError(f"h2load: {failed} failed of {succeeded + failed} requests")
    return {"rps": succeeded / seconds, "requests": float(succeeded), "failed": float(failed)}


def grpc_rate(binary: Path, scenario: Scenario, target: str, seconds: int) -> Sample:
    """Unary calls/s with ``grpcload load``: 32 callers on 4 connections, each call checked."""
    argv = [str(binary), "load", "-addr", target, "-conns", str(GRPC_CONNECTIONS),
            "-workers", str(GRPC_WORKERS), "-seconds", str(seconds)]  # fmt: skip
    done = run(in_netns(scenario.netns, argv), timeout=seconds + 40).check("grpcload")
    return parse_grpcload(done.stdout)


def parse_grpcload(text: str) -> Sample:
    try:
        data = json.loads(text.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise BenchError(f"grpcload gave no JSON: {text.strip()[-200:]}") from exc
    if data["errors"] > max(1, data["calls"] // 100):
        raise BenchError(f"grpcload: {data['errors']} of {data['calls']} calls failed: "
                         f"{data.get('first_error', '')}")  # fmt: skip
    return {
        "rps": float(data["rps"]), "requests": float(data["ok"]), "failed": float(data["errors"]),
        "p50_ms": float(data["p50_ms"]), "p90_ms": float(data["p90_ms"]),
        "p99_ms": float(data["p99_ms"]),
    }  # fmt: skip


class RssSampler:
    """VmRSS of one process every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.kib.append(rss_kib(self.pid))
            except (OSError, BenchError):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def with_waypoint(pid: int | None, work: Callable[[], Sample]) -> Sample:
    """``work``, plus the waypoint's own CPU seconds, its median VmRSS over the run and its
    VmHWM (reset by :func:`workloads.with_cost` just before) when ``pid`` is given."""
    if pid is None:
        return work()
    before = cpu_seconds(pid)
    with RssSampler(pid) as rss:
        sample = work()
    after = cpu_seconds(pid)
    sample["waypoint_cpu_s"] = after[0] + after[1] - before[0] - before[1]
    sample["waypoint_peak_rss_kib"] = float(peak_rss_kib(pid))
    if rss.kib:
        sample["waypoint_rss_kib"] = float(statistics.median(rss.kib))
    return sample


# ---- the schedule -----------------------------------------------------------------------


class L7Runner(Runner):
    """The L4 section's runner on the L7 scenarios, with their h2c and gRPC targets."""

    def __init__(self, settings: Settings, found: list[Scenario], targets: dict[str, Targets],
                 grpcload: Path | None, raw_dir: Path) -> None:  # fmt: skip
        super().__init__(settings, found, raw_dir)
        self.targets, self.grpcload = targets, grpcload

    def waypoint_of(self, scenario: Scenario) -> int | None:
        return scenario.proxies.get("waypoint")

    def check_paths(self) -> None:
        super().check_paths()
        for scenario in self.scenarios:
            if scenario.name in self.broken:
                continue
            try:
                h2_rate(scenario, self.targets[scenario.name].h2_url, 1)
                if self.grpcload is not None:
                    grpc_rate(self.grpcload, scenario, self.targets[scenario.name].grpc, 1)
            except BenchError as exc:
                self.broken[scenario.name] = str(exc)
                print(f"  {scenario.name}: BROKEN: {exc}", flush=True)

    def measured(self, work: Callable[[Scenario], Sample]) -> Callable[[Scenario], Sample]:
        return lambda sc: with_waypoint(self.waypoint_of(sc), lambda: work(sc))

    def all_workloads(self) -> dict[str, Any]:
        s = self.settings
        print("L7: max request rate, HTTP/1.1 (wrk)", flush=True)
        self.series("l7_max_rate", s.reps, self.measured(self._h1_max))
        print("L7: max request rate, HTTP/2 h2c (h2load)", flush=True)
        self.series("l7_h2_rate", s.reps, self.measured(self._h2_max))
        print("L7: latency and cost at 1,000 req/s (h2load --h1 --rps)", flush=True)
        self.series("l7_latency_1000", s.reps, self.measured(self._at_1k))
        if self.grpcload is not None:
            print("L7: gRPC unary calls/s (grpcload, grpc-go)", flush=True)
            self.series("l7_grpc", s.reps, self.measured(self._grpc))
        return self.results

    def _h1_max(self, scenario: Scenario) -> Sample:
        return workloads.max_rate(scenario, self.settings.max_seconds)

    def _h2_max(self, scenario: Scenario) -> Sample:
        return h2_rate(scenario, self.targets[scenario.name].h2_url, self.settings.max_seconds)

    def _at_1k(self, scenario: Scenario) -> Sample:
        log = self.raw_dir / f"h2load-l7-{scenario.name}.tsv"
        return workloads.fixed_rate(scenario, 1000, self.settings.rate_seconds, log)

    def _grpc(self, scenario: Scenario) -> Sample:
        if self.grpcload is None:
            raise BenchError("the gRPC load tool was not built")
        target = self.targets[scenario.name].grpc
        return grpc_rate(self.grpcload, scenario, target, self.settings.max_seconds)


def run_l7(doc: dict[str, Any], settings: Settings, cluster: topology.Cluster,
           pods: dict[str, topology.Pod], ztunnels: dict[str, int], haproxy: int,
           grpcload: Path | None, raw_dir: Path) -> None:  # fmt: skip
    """Deploy the waypoint, run the L7 workloads and fill ``doc["l7"]``."""
    section: dict[str, Any] = {"results": {}, "errors": [], "waypoint": {}}
    doc["l7"] = section
    if grpcload is None:
        section["errors"].append("gRPC skipped: the gRPC load tool could not be built")
    print("L7: ambit waypoint apply -n bench-l7 --enroll-namespace", flush=True)
    pid = deploy_waypoint(cluster)
    vip = service_ip(cluster)
    found, targets = scenarios(pods, ztunnels, pid, vip, haproxy)
    section["scenarios"] = {s.name: s.description for s in found}
    section["proxies"] = {s.name: list(s.proxies) for s in found}
    section["waypoint"] = {"pid": pid, "service_ip": vip, "rss_ready_mb": _mb(rss_kib(pid))}
    runner = L7Runner(settings, found, targets, grpcload, raw_dir)
    print("L7: checking every path carries requests", flush=True)
    runner.check_paths()
    time.sleep(2.0)
    section["waypoint"]["rss_idle_before_mb"] = _mb(rss_kib(pid))
    section["results"] = runner.all_workloads()
    section["broken"] = runner.broken
    if "ambit-waypoint" not in runner.broken:
        print("L7: what each resilience feature costs the waypoint (1,000 req/s)", flush=True)
        section["features"] = l7_features.run_features(
            settings, cluster, found[1], raw_dir, with_waypoint
        )
        print("L7: what an open ambit tap costs the waypoint", flush=True)
        section["tap"] = l7_tap.run_tap(settings, cluster, found[1], raw_dir, with_waypoint)
    time.sleep(3.0)
    section["waypoint"]["rss_idle_after_mb"] = _mb(rss_kib(pid))
    if waypoint_pid(cluster) != pid:
        section["errors"].append("the waypoint restarted during the run")
    if settings.profile_seconds and "ambit-waypoint" not in runner.broken:
        print("L7: profiling the waypoint (py-spy)", flush=True)
        section["profile"] = profile_waypoint(
            found[1], targets["ambit-waypoint"], grpcload, raw_dir, settings.profile_seconds
        )


def _mb(kib: float) -> float:
    return kib * 1024 / 1e6


def profile_waypoint(scenario: Scenario, targets: Targets, grpcload: Path | None, raw_dir: Path,
                     seconds: int) -> dict[str, Any]:  # fmt: skip
    """py-spy on the waypoint alone at 1,000 req/s, at the max HTTP/1.1 rate and under gRPC."""
    if not profile.ensure_py_spy():
        return {"error": "py-spy is not installed and pip could not install it"}
    loads: dict[str, Callable[[], Sample]] = {
        "waypoint 1,000 req/s": lambda: workloads.fixed_rate(
            scenario, 1000, seconds + 2, raw_dir / "h2load-l7-profile.tsv"
        ),
        "waypoint max rate": lambda: workloads.max_rate(scenario, seconds + 2),
    }
    if grpcload is not None:
        loads["waypoint gRPC"] = lambda: grpc_rate(grpcload, scenario, targets.grpc, seconds + 2)
    out: dict[str, Any] = {}
    for label, load in loads.items():
        directory = raw_dir / profile_dir_name(label)
        directory.mkdir(parents=True, exist_ok=True)
        procs = profile.record({"waypoint": scenario.proxies["waypoint"]}, seconds, directory)
        time.sleep(0.5)
        try:
            load()
        except BenchError as exc:
            out[label] = {"error": str(exc)}
        profile.finish(procs, timeout=seconds + 20)
        out.setdefault(label, profile.summarize_dir(directory))
        print(f"  profiled the waypoint under {label}", flush=True)
    return out
