"""The bench topology: one local ambit cluster, two nodes, meshed and plain pods.

``bench-mesh`` (ambient) and ``bench-plain`` (not meshed) each have a
``client`` pod on node-1 and a ``server`` pod on node-2, so every scenario
crosses the bridge between two network namespaces, and the meshed pair goes
through both nodes' ztunnels (HBONE, mutual TLS). ``bench-l7`` (ambient) is
the same pair behind a Service ``server``, for the L7 section: its namespace
is enrolled to a waypoint (:mod:`bench.compare.l7`), so ``bench-mesh`` stays
the untouched L4 path. The cluster has its own state directory, so it never
touches another cluster, and is removed by ``ambit down`` whatever happens.
Servers (nginx with a 1 KiB file, HTTP/1.1 keep-alive on 8080 and h2c with
prior knowledge on 8081; ``iperf3 -s``; a gRPC server answering any unary
call with 1 KiB) run in the server pods' namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.compare.system import BenchError, Daemons, in_netns, run, wait_listening

REPO = Path(__file__).resolve().parents[2]
HTTP_PORT = 8080
H2C_PORT = 8081
GRPC_PORT = 50051
IPERF_PORT = 5201
BODY_BYTES = 1024
PATH_1K = "/1k"

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: bench-mesh, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-plain}
---
apiVersion: v1
kind: Namespace
metadata: {name: bench-l7, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: bench-l7}
spec:
  selector: {app: server}
  ports:
  - {name: http, port: 8080, targetPort: 8080, appProtocol: http}
  - {name: http2, port: 8081, targetPort: 8081, appProtocol: kubernetes.io/h2c}
  - {name: grpc, port: 50051, targetPort: 50051, appProtocol: grpc}
"""
NAMESPACES = ("bench-mesh", "bench-plain", "bench-l7")
MESHED = ("bench-mesh", "bench-l7")
POD = """\
---
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: NS, labels: {app: NAME}}
spec:
  nodeName: NODE
  serviceAccountName: NAME
  containers: [{name: NAME, command: [sleep, "7200"]}]
"""

NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
pid {pid};
error_log {log} warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 600s;
  client_header_timeout 600s;
  server {{
    listen {port} reuseport backlog=4096;
    location / {{ root {root}; }}
  }}
  server {{
    listen {h2_port} http2 reuseport backlog=4096;
    http2_max_requests 10000000;
    http2_max_concurrent_streams 256;
    location / {{ root {root}; }}
  }}
}}
"""


def manifest() -> str:
    pods = [
        POD.replace("NAME", name).replace("NS", ns).replace("NODE", node)
        for ns in NAMESPACES
        for name, node in (("server", "node-2"), ("client", "node-1"))
    ]
    return MANIFEST + "".join(pods)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    ip: str
    netns: str
    node: str
    captured: bool


class Cluster:
    """``ambit up`` / ``ambit down`` of the bench cluster, through the ``ambit`` command."""

    def __init__(self, workdir: Path, pod_cidr: str, service_cidr: str) -> None:
        self.state_dir = workdir / "ambit-state"
        self.workdir = workdir
        self.pod_cidr = pod_cidr
        self.service_cidr = service_cidr
        self.is_up = False

    def ambit(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "AMBIT_STATE_DIR": str(self.state_dir), "PYTHONPATH": str(REPO)}
        try:
            return subprocess.run(
                [sys.executable, "-m", "ambit.cli", *args],
                capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"ambit {args[0]} did not finish within {timeout:.0f} s") from exc

    def up(self) -> None:
        path = self.workdir / "bench-cluster.yaml"
        path.write_text(manifest())
        self.is_up = True  # even a failed up may leave state that down removes
        result = self.ambit(
            "up", "-f", str(path), "--pod-cidr", self.pod_cidr,
            "--service-cidr", self.service_cidr, "--timeout", "90", timeout=150,
        )  # fmt: skip
        if result.returncode != 0:
            raise BenchError(
                f"ambit up failed: {result.stderr.strip()[-400:]} "
                "(other CIDRs: --pod-cidr/--service-cidr)"
            )

    def down(self) -> None:
        if not self.is_up:
            return
        result = self.ambit("down", timeout=120)
        self.is_up = False
        if result.returncode != 0:
            print(f"ambit down failed: {result.stderr.strip()[-400:]}", file=sys.stderr)

    def get(self, kind: str) -> list[dict[str, Any]]:
        result = self.ambit("get", kind, "-A", "-o", "json")
        if result.returncode != 0:
            raise BenchError(f"ambit get {kind}: {result.stderr.strip()[-300:]}")
        data: Any = json.loads(result.stdout)
        items = data if isinstance(data, list) else data.get("items", [])
        return list(items)

    def pods(self) -> dict[str, Pod]:
        return {
            f"{p['namespace']}/{p['name']}": Pod(
                p["namespace"], p["name"], p["ip"], p["netns"], p["node"], bool(p.get("captured"))
            )
            for p in self.get("pods")
        }

    def ztunnel_pids(self) -> dict[str, int]:
        pids = {n["name"]: n.get("ztunnel_pid") for n in self.get("nodes")}
        missing = [name for name, pid in pids.items() if not pid]
        if missing:
            raise BenchError(f"no ztunnel running on {', '.join(missing)}")
        return {name: int(pid) for name, pid in pids.items() if pid}


def free_cidrs(preferred: int = 201) -> tuple[str, str]:
    """``10.N.0.0/17`` and ``10.N.128.0/17`` for the first N from ``preferred`` not routed here."""
    routes = run(["ip", "-4", "route", "show", "table", "all"], timeout=10).stdout
    for octet in range(preferred, 251):
        if f"10.{octet}." not in routes:
            return f"10.{octet}.0.0/17", f"10.{octet}.128.0/17"
    raise BenchError("no free 10.N.0.0/16 on this host: pass --pod-cidr and --service-cidr")


def start_servers(
    daemons: Daemons, workdir: Path, pods: dict[str, Pod], grpc_server: Path | None
) -> None:
    """nginx (1 KiB file, HTTP/1.1 and h2c), ``iperf3 -s`` and, when built, the gRPC server
    (``grpcload serve``) in each server pod's netns; wait until they listen."""
    root = workdir / "www"
    root.mkdir(exist_ok=True)
    (root / PATH_1K.lstrip("/")).write_bytes(b"x" * BODY_BYTES)
    root.chmod(0o755)
    for ns in NAMESPACES:
        pod = pods[f"{ns}/server"]
        conf = workdir / f"nginx-{ns}.conf"
        conf.write_text(
            NGINX_CONF.format(
                pid=workdir / f"nginx-{ns}.pid",
                log=workdir / f"nginx-{ns}.error.log",
                port=HTTP_PORT,
                h2_port=H2C_PORT,
                root=root,
            )
        )
        error_log = str(workdir / f"nginx-{ns}.error.log")
        daemons.start(
            f"nginx-{ns}", in_netns(pod.netns, ["nginx", "-e", error_log, "-c", str(conf)])
        )
        daemons.start(f"iperf3-{ns}", in_netns(pod.netns, ["iperf3", "-s", "-p", str(IPERF_PORT)]))
        if grpc_server is not None:
            argv = [str(grpc_server), "serve", "-addr", f":{GRPC_PORT}"]
            daemons.start(f"grpc-{ns}", in_netns(pod.netns, argv))
    for ns in NAMESPACES:
        ports = (HTTP_PORT, H2C_PORT, IPERF_PORT) + ((GRPC_PORT,) if grpc_server else ())
        for port in ports:
            wait_listening(pods[f"{ns}/server"].netns, port)
    daemons.check_alive()
