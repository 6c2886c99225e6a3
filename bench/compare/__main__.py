"""``python -m bench.compare [--quick] [--l7-only]``: run everything side by side and write
the results: the L4 section, then the L7 section (:mod:`bench.compare.l7`: a waypoint).

Needs root (network namespaces, iptables, apt-get for missing tools). Writes
``bench/results/<YYYY-MM-DD-HHMM>[-quick]/`` with ``results.md``,
``results.json``, ``latency_vs_rate.png``, ``throughput.png`` and ``raw/``
(per-request logs, py-spy stacks; not committed). Whatever fails, the
processes started here are stopped by PID and the cluster is removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.compare import l7, l7_report, peers, plots, profile, stats, topology
from bench.compare.report import render
from bench.compare.run import (
    FULL,
    QUICK,
    Runner,
    Settings,
    http_target,
    idle_rss,
    profile_dir_name,
    profile_pass,
)
from bench.compare.system import (
    BenchError,
    Daemons,
    ensure_python_package,
    ensure_tools,
    machine,
    rss_kib,
    source_version,
    tool_versions,
)
from bench.compare.workloads import Scenario

RESULTS = Path(__file__).resolve().parents[1] / "results"

DESCRIPTIONS = {
    "direct": "plain pods, client (node-1) to server (node-2) across the bridge: no proxy",
    "ambit": "meshed pods: client -> ztunnel node-1 (15001 capture) -> HBONE (mutual TLS 1.3, "
    "HTTP/2 CONNECT on a pooled connection) -> ztunnel node-2 (15008) -> server",
    "stunnel": "plain pods: client -> stunnel in the client pod -> mutual TLS 1.3, one TLS "
    "connection per client connection -> stunnel in the server pod -> server",
    "haproxy": "plain pods: client -> haproxy (HTTP mode, 1 thread, in the client pod; "
    "keep-alive and connection reuse to the server) -> server; one hop, HTTP only",
}


def scenarios(pods: dict[str, topology.Pod], ztunnels: dict[str, int],
              pids: peers.PeerPids) -> list[Scenario]:  # fmt: skip
    plain_c, plain_s = pods["bench-plain/client"], pods["bench-plain/server"]
    mesh_c, mesh_s = pods["bench-mesh/client"], pods["bench-mesh/server"]
    path = topology.PATH_1K
    http, iperf = topology.HTTP_PORT, topology.IPERF_PORT
    return [
        Scenario("direct", DESCRIPTIONS["direct"], plain_c.netns,
                 f"http://{plain_s.ip}:{http}{path}", (plain_s.ip, iperf)),
        Scenario("ambit", DESCRIPTIONS["ambit"], mesh_c.netns,
                 f"http://{mesh_s.ip}:{http}{path}", (mesh_s.ip, iperf),
                 {f"ztunnel {node}": pid for node, pid in sorted(ztunnels.items())}),
        Scenario("stunnel", DESCRIPTIONS["stunnel"], plain_c.netns,
                 f"http://127.0.0.1:{peers.STUNNEL_HTTP}{path}", ("127.0.0.1", peers.STUNNEL_IPERF),
                 {"stunnel client": pids.stunnel[0], "stunnel server": pids.stunnel[1]}),
        Scenario("haproxy", DESCRIPTIONS["haproxy"], plain_c.netns,
                 f"http://127.0.0.1:{peers.HAPROXY_HTTP}{path}", None,
                 {"haproxy": pids.haproxy[0]}),
    ]  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about a minute: 1 short run each")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy passes")
    parser.add_argument(
        "--l7-only", action="store_true",
        help="only the L7 section (waypoint, ambit-l4, haproxy): no L4 workloads",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="parent of the dated folder")
    parser.add_argument("--pod-cidr", help="default: the first free 10.N.0.0/17 from N=201")
    parser.add_argument("--service-cidr", help="default: 10.N.128.0/17 beside the pod CIDR")
    parser.add_argument(
        "--render", type=Path, metavar="DIR",
        help="measure nothing: write DIR's results.md and plots again from its results.json",
    )  # fmt: skip
    return parser.parse_args(argv)


def _terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_again(args.render)
    if os.geteuid() != 0:
        print("bench.compare needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    settings = QUICK if args.quick else FULL
    if args.no_profile:
        settings = dataclasses.replace(settings, profile_seconds=0)
    started = datetime.datetime.now(datetime.UTC)
    out_dir = args.out / (started.strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else ""))
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    doc: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"), "quick": args.quick,
        "settings": settings.as_dict(), "rates": settings.rates, "machine": machine(),
        "installed": [], "errors": [], "results": {}, "idle": {}, "scenarios": {}, "proxies": {},
    }  # fmt: skip
    ensure_tools(doc["installed"])
    have_plots = ensure_python_package("matplotlib", "matplotlib", doc["installed"])
    doc["tools"] = tool_versions()
    doc["commit"] = source_version(topology.REPO)
    workdir = Path(tempfile.mkdtemp(prefix="ambit-bench-"))
    workdir.chmod(0o755)  # nginx workers (nobody) read the 1 KiB file under it
    pod_cidr, service_cidr = (
        (args.pod_cidr, args.service_cidr) if args.pod_cidr and args.service_cidr
        else topology.free_cidrs()
    )  # fmt: skip
    cluster = topology.Cluster(workdir, pod_cidr, service_cidr)
    (raw_dir / "logs").mkdir(exist_ok=True)
    daemons = Daemons(raw_dir / "logs")
    try:
        run_everything(doc, settings, cluster, daemons, workdir, raw_dir, args.l7_only)
    except BenchError as exc:
        doc["errors"].append(f"aborted: {exc}")
        print(f"aborted: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        doc["errors"].append("interrupted")
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        daemons.stop_all()
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    return write(doc, out_dir, have_plots)


def run_everything(doc: dict[str, Any], settings: Settings, cluster: topology.Cluster,
                   daemons: Daemons, workdir: Path, raw_dir: Path,
                   l7_only: bool = False) -> None:  # fmt: skip
    grpcload: Path | None = None
    try:
        print("building the gRPC load tool (go build bench/compare/grpcload)", flush=True)
        grpcload = l7.build_grpcload(workdir)
    except BenchError as exc:
        doc["errors"].append(f"gRPC workloads skipped: {exc}")
    print(f"ambit up (pod CIDR {cluster.pod_cidr})", flush=True)
    cluster.up()
    pods = cluster.pods()
    uncaptured = [
        k for k, p in pods.items() if k.split("/")[0] in topology.MESHED and not p.captured
    ]
    if uncaptured:
        raise BenchError(f"meshed pods not captured by their ztunnel: {', '.join(uncaptured)}")
    ztunnels = cluster.ztunnel_pids()
    topology.start_servers(daemons, workdir, pods, grpcload)
    pids = peers.start_peers(
        daemons, workdir, pods["bench-plain/client"], pods["bench-plain/server"]
    )
    found = scenarios(pods, ztunnels, pids)
    doc["scenarios"] = {s.name: s.description for s in found}
    doc["proxies"] = {s.name: list(s.proxies) for s in found}
    doc["rss_at_start_mb"] = _rss_mb(found)
    if not l7_only:
        run_l4(doc, settings, found, daemons, raw_dir)
    l7.run_l7(doc, settings, cluster, pods, ztunnels, pids.haproxy[0], grpcload, raw_dir)
    daemons.check_alive()


def run_l4(doc: dict[str, Any], settings: Settings, found: list[Scenario], daemons: Daemons,
           raw_dir: Path) -> None:  # fmt: skip
    runner = Runner(settings, found, raw_dir)
    print("checking every path carries requests", flush=True)
    runner.check_paths()
    by_name = {s.name: s for s in found}
    doc["results"] = runner.all_workloads()
    # After the workloads, so their peak RSS is not the idle connections' leftover.
    print(f"idle connections {list(settings.idle_levels)}: RSS of the proxies", flush=True)
    for name in settings.idle_scenarios:
        if name not in runner.broken:
            scenario = by_name[name]
            doc["idle"][name] = idle_rss(
                scenario, http_target(scenario), settings.idle_levels, raw_dir, daemons
            )
    if settings.profile_seconds and "ambit" not in runner.broken:
        print("profiling the ztunnels (py-spy)", flush=True)
        doc["profile"] = profile_pass(by_name["ambit"], raw_dir, settings.profile_seconds)


def _rss_mb(found: list[Scenario]) -> dict[str, float]:
    return {role: rss_kib(pid) * 1024 / 1e6 for s in found for role, pid in s.proxies.items()}


def render_again(out_dir: Path) -> int:
    """Rewrite a run's outputs from its JSON (and its raw py-spy stacks, when kept)."""
    doc = json.loads((out_dir / "results.json").read_text())
    for label in doc.get("profile", {}):
        directory = out_dir / "raw" / profile_dir_name(label)
        if directory.is_dir():
            doc["profile"][label] = profile.summarize_dir(directory)
    for label in doc.get("l7", {}).get("profile", {}):
        directory = out_dir / "raw" / profile_dir_name(label)
        if directory.is_dir():
            doc["l7"]["profile"][label] = profile.summarize_dir(directory)
    return write(doc, out_dir, have_plots=True, finished=doc.get("finished"))


def write(doc: dict[str, Any], out_dir: Path, have_plots: bool, finished: str | None = None) -> int:
    doc["finished"] = finished or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    doc["verdicts"] = [
        {"target": v.target, "measured": v.measured, "met": v.met, "verdict": v.word}
        for v in stats.verdicts(doc["results"], doc["idle"])
    ]
    if doc.get("l7"):
        doc["l7"]["verdicts"] = [
            {"target": v.target, "measured": v.measured, "met": v.met, "verdict": v.word}
            for v in l7_report.verdicts(doc["l7"], doc["settings"]["rate_seconds"])
        ]
    doc["plots"] = []
    if have_plots and doc["results"]:
        try:
            doc["plots"] = plots.plot_all(doc, out_dir)
        except Exception as exc:  # a plot must never lose the numbers
            doc["errors"].append(f"plots: {type(exc).__name__}: {exc}")
    elif not have_plots:
        doc["errors"].append("plots skipped: matplotlib could not be installed")
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    (out_dir / "results.md").write_text(text)
    print()
    print(text)
    print(f"results in {out_dir}")
    return 1 if any(e.startswith(("aborted", "interrupted")) for e in doc["errors"]) else 0


if __name__ == "__main__":
    sys.exit(main())
