"""The L7 section's topology held up for work on the waypoint's speed:
``python -m bench.compare.l7_dev [--rounds N] [--watch DIR] [--profile SECONDS]``.

Brings up the bench cluster (``ambit up``, nginx and the gRPC server in the server
pods, the waypoint of ``bench-l7``) once, then runs rounds. Each round restarts the
waypoint (and with ``--restart-ztunnels`` the ztunnels: they run this checkout's code,
so a round measures the code as it is now), then runs the L7 section's workloads on
the waypoint path (and HTTP/1.1 on ambit's L4 path, for the ratio), printing one line
each: the rate and the waypoint's CPU µs per request. With ``--watch DIR`` it waits
between rounds for a file ``DIR/go`` (a round; its first line may be a label) or
``DIR/stop``, so an edit can be measured in a minute without bringing the cluster up
again. With ``--profile S`` each round ends with a py-spy recording of the waypoint
(S seconds) under each load, summarized. A round whose label ends ``+tcp`` runs with
the Service's HTTP port declared ``tcp`` (put back after it; ``--tcp`` runs each of
``--rounds`` that way too): the waypoint relays the same requests as bytes over the
same HBONE legs, the floor under its L7 work. Not a benchmark of record: ``python -m
bench.compare --l7-only`` is; this is its workloads, repeated quickly on one cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.compare import l7, profile, topology, workloads
from bench.compare.system import BenchError, Daemons, cpu_seconds, ensure_tools, rss_kib
from bench.compare.workloads import Sample, Scenario

SECONDS = 5


def _restart(pid: int, find: Callable[[], int | None]) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.5)
        new = find()
        if new is not None and new != pid:
            return new
    raise BenchError("the component did not come back within 60 s")


def _busy() -> tuple[float, float]:
    """Busy and total jiffies of the machine (``/proc/stat``'s first line)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def _ztunnel_of(cluster: topology.Cluster, node: str) -> Callable[[], int | None]:
    return lambda: cluster.ztunnel_pids().get(node)


def _cost(pids: dict[str, int], work: Callable[[], Sample]) -> tuple[Sample, dict[str, float]]:
    """``work``'s sample, each process's CPU seconds over it, and ``machine``: the share of
    the machine's CPUs that were busy."""
    before = {name: sum(cpu_seconds(pid)) for name, pid in pids.items()}
    busy0, total0 = _busy()
    sample = work()
    busy1, total1 = _busy()
    cost = {name: sum(cpu_seconds(pid)) - before[name] for name, pid in pids.items()}
    cost["machine"] = (busy1 - busy0) / max(1, total1 - total0)
    return sample, cost


HTTP_PORT_LINE = "{name: http, port: 8080, targetPort: 8080, appProtocol: http}"


def declare_http_port(cluster: topology.Cluster, out: Path, protocol: str) -> None:
    """``bench-l7``'s Service with its HTTP port (8080) declared ``protocol``."""
    manifest = topology.manifest()
    start = manifest.index("kind: Service\nmetadata: {name: server, namespace: bench-l7}")
    service = manifest[start:].split("\n---", 1)[0]
    if HTTP_PORT_LINE not in service:
        raise BenchError("the bench-l7 Service's HTTP port is not where l7_dev expects it")
    path = out / "service.yaml"
    path.write_text("apiVersion: v1\n" + service.replace(
        HTTP_PORT_LINE, HTTP_PORT_LINE.replace("name: http,", f"name: {protocol},")
        .replace("appProtocol: http", f"appProtocol: {protocol}")))  # fmt: skip
    done = cluster.ambit("apply", "-f", str(path))
    if done.returncode != 0:
        raise BenchError(f"ambit apply: {done.stderr.strip()[-300:]}")
    time.sleep(2.0)  # for the waypoint to have the config


def one_round(label: str, found: dict[str, Scenario],
              targets: l7.Targets, grpcload: Path | None, out: Path,
              profile_seconds: int) -> None:  # fmt: skip
    wp = found["ambit-waypoint"]
    pid = wp.proxies["waypoint"]
    loads: dict[str, Callable[[], Sample]] = {
        "h1 max": lambda: workloads.max_rate(wp, SECONDS),
        "h1 1k/s": lambda: workloads.fixed_rate(wp, 1000, 2 * SECONDS, out / "h2load.tsv"),
        "h2c max": lambda: l7.h2_rate(wp, targets.h2_url, SECONDS),
    }
    if grpcload is not None:
        loads["grpc"] = lambda: l7.grpc_rate(grpcload, wp, targets.grpc, SECONDS)
    l4_path = found["ambit-l4"]
    l4, l4cost = _cost(l4_path.proxies, lambda: workloads.max_rate(l4_path, SECONDS))
    zt4 = sum(v for k, v in l4cost.items() if k.startswith("ztunnel")) / l4["requests"] * 1e6
    lines = [
        f"== {label} ({time.strftime('%H:%M:%S')}): L4 h1 {l4['rps']:.0f} req/s, ztunnels"
        f" {zt4:.0f} us/req, machine {l4cost['machine']:.0%} busy"
    ]
    for name, load in loads.items():
        try:
            sample, cost = _cost(wp.proxies, load)
        except BenchError as exc:
            lines.append(f"  {name:8} FAILED {exc}")
            continue
        rate = sample.get("rps") or sample.get("achieved_rps", 0.0)
        done = sample.get("requests") or rate * SECONDS
        extra = (f" p50 {sample['p50_ms']:.2f} p99 {sample['p99_ms']:.2f} ms"
                 if "p99_ms" in sample else "")  # fmt: skip
        ratio = f" ({rate / l4['rps']:.2f}x L4)" if name == "h1 max" else ""
        zt = sum(v for k, v in cost.items() if k.startswith("ztunnel"))
        wp_us, zt_us = cost["waypoint"] / done * 1e6, zt / done * 1e6
        lines.append(f"  {name:8} {rate:8.0f}/s{ratio}  waypoint {wp_us:4.0f} us/req, ztunnels"
                     f" {zt_us:4.0f}, machine {cost['machine']:.0%} busy"
                     f"  rss {rss_kib(pid) / 1024:.1f} MiB{extra}")  # fmt: skip
    if profile_seconds:
        for name, load in loads.items():
            directory = out / f"profile-{label}-{name.replace(' ', '_').replace('/', '')}"
            directory.mkdir(parents=True, exist_ok=True)
            procs = profile.record({"waypoint": pid}, profile_seconds, directory)
            time.sleep(0.5)
            with contextlib.suppress(BenchError):
                load()
            profile.finish(procs, timeout=profile_seconds + 20)
            summary = profile.summarize_dir(directory)
            lines.append(f"  profile {name}: {directory}")
            for key, value in list(summary.items())[:3]:
                lines.append(f"    {key}: {value}")
    text = "\n".join(lines)
    print(text, flush=True)
    with (out / "rounds.log").open("a") as f:
        f.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare.l7_dev", description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--watch", type=Path, help="wait for DIR/go or DIR/stop between rounds")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS")
    parser.add_argument("--restart-ztunnels", action="store_true")
    parser.add_argument("--tcp", action="store_true",
                        help="each round again with the HTTP port declared tcp (+tcp)")  # fmt: skip
    args = parser.parse_args(argv)
    out = args.watch or Path(tempfile.mkdtemp(prefix="l7dev-"))
    out.mkdir(parents=True, exist_ok=True)
    ensure_tools([])
    if args.profile and not profile.ensure_py_spy():
        raise SystemExit("py-spy could not be installed")
    workdir = Path(tempfile.mkdtemp(prefix="ambit-l7dev-"))
    workdir.chmod(0o755)
    pod_cidr, service_cidr = topology.free_cidrs()
    cluster = topology.Cluster(workdir, pod_cidr, service_cidr)
    daemons = Daemons(workdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        grpcload = l7.build_grpcload(workdir) if l7.go_binary() else None
        cluster.up()
        pods = cluster.pods()
        topology.start_servers(daemons, workdir, pods, grpcload)
        ztunnels = cluster.ztunnel_pids()
        pid = l7.deploy_waypoint(cluster)
        vip = l7.service_ip(cluster)
        total = 10_000 if args.watch else args.rounds * (2 if args.tcp else 1)
        for n in range(total):
            label = f"round {n + 1}"
            if args.tcp and not args.watch:  # each round as it is, then as a byte relay
                label = f"round {n // 2 + 1}" + ("+tcp" if n % 2 else "")
            if args.watch:
                print(f"waiting for {out}/go or {out}/stop", flush=True)
                while not (out / "go").exists() and not (out / "stop").exists():
                    time.sleep(0.5)
                if (out / "stop").exists():
                    (out / "stop").unlink()
                    break
                label = (out / "go").read_text().strip() or label
                (out / "go").unlink()
                profile_seconds = args.profile if label.endswith("+prof") else 0
            else:
                profile_seconds = args.profile
            if n or args.watch:
                if args.restart_ztunnels:
                    for node, zpid in list(ztunnels.items()):
                        ztunnels[node] = _restart(zpid, _ztunnel_of(cluster, node))
                pid = _restart(pid, lambda: l7.waypoint_pid(cluster))
                time.sleep(2.0)
            found_list, targets = l7.scenarios(pods, ztunnels, pid, vip, 0)
            found = {s.name: s for s in found_list}
            relay = label.removesuffix("+prof").endswith("+tcp")
            try:
                if relay:
                    declare_http_port(cluster, out, "tcp")
                one_round(label, found, targets["ambit-waypoint"], grpcload, out,
                          profile_seconds)  # fmt: skip
            except Exception as exc:  # a failed round leaves the cluster up for the next
                print(f"round failed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                if relay:
                    declare_http_port(cluster, out, "http")
    finally:
        daemons.stop_all()
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
