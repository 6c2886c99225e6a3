"""Traffic through a waypoint in local mode, with the real ``ambit`` command and curl in
the pods: a namespace enrolled with ``ambit waypoint apply --enroll-namespace`` sends its
Service's requests through the waypoint pod (its access log names them, its metrics count
them with Istio's labels), an L7 AuthorizationPolicy bound to the waypoint denies by path
with 403, and a waypoint that is gone fails closed instead of being bypassed."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Cluster, demo_manifest, eventually, run

pytestmark = pytest.mark.root

MESHED = demo_manifest().replace(
    "metadata: {name: demo}", "metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}"
)
DENY_SECRET = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secrets, namespace: demo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/secret*]}}]}]
"""
ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /}, statusCode: 301}
  - backendRefs: [{name: server, port: 80}]
"""


async def curl(cluster: Cluster, *args: str) -> str:
    """``curl -s -o /dev/null -w CODES`` from the client pod, one code per URL given."""
    discard = [arg for _ in args for arg in ("-o", "/dev/null")]  # one per URL
    result = await cluster.exec(
        "client", "curl", "-s", "-m", "5", *discard, "-w", "%{http_code} ", *args
    )
    return result.stdout.decode().strip()


async def waypoint_pod(cluster: Cluster) -> dict[str, Any] | None:
    pods = await cluster.get("pods", "-n", "demo")
    label = "gateway.networking.k8s.io/gateway-name"
    return next((p for p in pods if p["labels"].get(label) == "waypoint"), None)


async def bound(cluster: Cluster) -> bool:
    shown = await cluster.ambit("get", "service", "server", "-n", "demo", "-o", "json")
    conditions = json.loads(shown.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "ambit.io/WaypointBound" and c["status"] == "True" for c in conditions)


async def test_requests_cross_the_waypoint_are_counted_denied_and_fail_closed(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", MESHED))
    assert await curl(cluster, "http://server/") == "200"  # before: straight to the pod
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()
    assert await eventually(lambda: bound(cluster), seconds=30)
    # Two requests on one keep-alive connection, both through the waypoint.
    assert await eventually(
        lambda: _is(curl(cluster, "http://server/", "http://server/"), "200 200"), seconds=20
    )
    pod = await waypoint_pod(cluster)
    assert pod is not None
    logs = await cluster.ambit("logs", "pod/" + pod["name"], "-n", "demo")
    requests = [
        line
        for line in (json.loads(raw) for raw in logs.stdout.splitlines() if raw.startswith(b"{"))
        if line.get("event") == "request"
    ]
    assert requests, "the waypoint logged no request"
    assert requests[-1]["src_identity"] == "spiffe://cluster.local/ns/demo/sa/default"
    assert requests[-1]["dst_service"] == "server.demo.svc.cluster.local"
    metrics = await run(["curl", "-s", "-m", "3", f"http://{pod['ip']}:15020/metrics"])
    counted = [
        line
        for line in metrics.stdout.decode().splitlines()
        if line.startswith("istio_requests_total{")
        and 'reporter="waypoint"' in line
        and 'source_workload="client"' in line
        and 'destination_service="server.demo.svc.cluster.local"' in line
        and 'response_code="200"' in line
    ]
    assert counted, metrics.stdout.decode()[:2000]
    # The server's ztunnel saw the waypoint's identity (its connections, pooled, are open).
    node = {n["name"]: n for n in await cluster.get("nodes")}["node-2"]
    seen = await run(["curl", "-s", "-m", "3", f"http://{node['ip']}:15020/metrics"])
    assert any(
        line.startswith("istio_tcp_connections_opened_total{")
        and 'reporter="destination"' in line
        and 'source_principal="spiffe://cluster.local/ns/demo/sa/waypoint"' in line
        and 'destination_workload="server"' in line
        for line in seen.stdout.decode().splitlines()
    ), seen.stdout.decode()[:3000]

    # L7 policy at the waypoint: a path is denied, the rest still served.
    await cluster.ambit("apply", "-f", str(cluster.manifest("deny.yaml", DENY_SECRET)))
    assert await eventually(lambda: _is(curl(cluster, "http://server/secret"), "403"), seconds=20)
    assert await curl(cluster, "http://server/") == "200"
    denied = await cluster.exec("client", "curl", "-s", "-m", "5", "http://server/secret")
    assert denied.stdout == b"RBAC: access denied"

    # A route: a redirect answered by the waypoint itself.
    await cluster.ambit("apply", "-f", str(cluster.manifest("route.yaml", ROUTE)))
    assert await eventually(lambda: _is(curl(cluster, "http://server/old"), "301"), seconds=20)

    # The waypoint goes away: the Service stays bound and its traffic is refused.
    deleted = await cluster.ambit("waypoint", "delete", "waypoint", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr.decode()
    assert await eventually(lambda: _is(curl(cluster, "http://server/"), "000"), seconds=20)


async def _is(result: Any, expected: str) -> bool:
    return bool(await result == expected)


# A server whose /slow answers after 0.6 s (a waypoint drains 1 s in local mode).
SLOW_SERVER = (
    "import http.server, time\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_GET(self):\n"
    "        if self.path == '/slow': time.sleep(0.6)\n"
    "        body = b'done'\n"
    "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)


async def up_with_a_waypoint(cluster: Cluster, server: str) -> None:
    """The demo, meshed, its server running the Python ``server`` script, and a waypoint
    for namespace demo that serves the server's traffic."""
    manifest = MESHED.replace(
        'command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]',
        "command: [python3, -c, " + json.dumps(server) + "]",
    )
    assert manifest != MESHED
    await cluster.up(cluster.manifest("demo.yaml", manifest))
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()
    assert await eventually(lambda: bound(cluster), seconds=30)
    assert await eventually(lambda: _is(curl(cluster, "http://server/"), "200"), seconds=20)


async def test_a_waypoint_restart_lets_the_requests_in_flight_finish(cluster: Cluster) -> None:
    await up_with_a_waypoint(cluster, SLOW_SERVER)
    script = (
        "for i in 1 2 3 4 5 6; do curl -s -m 10 -o /dev/null -w '%{http_code}\\n'"
        " http://server/slow & done; wait"
    )
    codes: list[str] = []

    async def requests() -> None:
        done = await cluster.exec("client", "sh", "-c", script)
        codes.extend(done.stdout.decode().split())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(requests)
        await trio.sleep(0.3)  # the six are in flight at the waypoint now
        restarted = await cluster.ambit("restart", "waypoint/demo/waypoint")
        assert restarted.returncode == 0, restarted.stderr.decode()
    assert codes == ["200"] * 6
    # The new waypoint serves the next requests.
    assert await eventually(lambda: _is(curl(cluster, "http://server/"), "200"), seconds=20)


OUTSIDER = """\
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec:
  nodeName: node-1
  containers:
  - name: outsider
    command: [sleep, "600"]
"""


async def test_a_waypoint_for_workloads_takes_pod_ip_traffic_plaintext_included(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", demo_manifest([OUTSIDER]).replace(
        "metadata: {name: demo}",
        "metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}",
    )))  # fmt: skip
    applied = await cluster.ambit(
        "waypoint", "apply", "-n", "demo", "--enroll-namespace", "--for", "all"
    )
    assert applied.returncode == 0, applied.stderr.decode()
    assert await eventually(lambda: bound(cluster), seconds=30)
    server = next(p for p in await cluster.get("pods", "-n", "demo") if p["name"] == "server")
    url = f"http://{server['ip']}:8080/?from={{}}"  # http.server lists / whatever the query

    async def waypoint_saw(path: str) -> bool:
        logs = await cluster.ambit("logs", "waypoint/demo/waypoint")
        return f'"path": "{path}"' in logs.stdout.decode()

    async def through(client: str, namespace: str, path: str) -> bool:
        argv = ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
        done = await cluster.exec(client, *argv, url.format(path), namespace=namespace)
        return done.stdout == b"200" and await waypoint_saw(f"/?from={path}")

    # A meshed client dialling the pod's IP, and a client outside the mesh (plaintext):
    # both answered by the app, both through the waypoint.
    assert await eventually(lambda: through("client", "demo", "meshed"), seconds=20)
    assert await eventually(lambda: through("outsider", "outside", "plain"), seconds=20)
