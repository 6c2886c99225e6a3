"""Local mode through the real ``ambit`` command: up, get, exec, apply, delete, down."""

from __future__ import annotations

import ipaddress
import time

import pytest
import trio

from tests.e2e.conftest import Cluster, demo_manifest, kill_daemon

pytestmark = pytest.mark.root

# Runs inside a pod: wait until HOST:PORT accepts connections ("up") or stops
# accepting them ("down"), until an absolute CLOCK_MONOTONIC deadline (the clock
# is the same in every network namespace).
WAIT_FOR = """
import socket, sys, time
host, port, deadline, want = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
while True:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        up = True
    except OSError:
        up = False
    if up == (want == "up"):
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.05)
"""

EXTRA = """\
apiVersion: v1
kind: Pod
metadata:
  name: web2
  namespace: demo
  labels: {app: web2}
spec:
  containers:
  - name: web
    command: [python3, -m, http.server, "9090"]
---
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: demo}
spec:
  selector: {app: web2}
  ports: [{port: 8000, targetPort: 9090}]
"""


async def test_up_runs_pods_on_nodes_and_services_resolve_and_route(cluster: Cluster) -> None:
    up = await cluster.up(cluster.manifest("demo.yaml", demo_manifest()))
    assert b"spiffe://cluster.local/ns/demo/sa/server-sa" in up.stdout
    pod_net = ipaddress.IPv4Network(cluster.pod_cidr)

    pods = {p["name"]: p for p in await cluster.get("pods", "-n", "demo")}
    assert set(pods) == {"client", "server"}
    assert pods["server"]["node"] == "node-2"
    assert pods["client"]["node"] == "node-1"
    assert pods["server"]["identity"] == "spiffe://cluster.local/ns/demo/sa/server-sa"
    assert pods["client"]["identity"] == "spiffe://cluster.local/ns/demo/sa/default"
    assert all(p["phase"] == "Running" and p["captured"] is None for p in pods.values())
    assert all(ipaddress.IPv4Address(p["ip"]) in pod_net for p in pods.values())

    nodes = {n["name"]: n for n in await cluster.get("nodes")}
    assert set(nodes) == {"node-1", "node-2"}
    assert len({n["ip"] for n in nodes.values()} | {p["ip"] for p in pods.values()}) == 4

    (service,) = await cluster.get("services", "-n", "demo")
    assert ipaddress.IPv4Address(service["vip"]) in ipaddress.IPv4Network(cluster.service_cidr)
    assert service["ports"][0]["endpoints"] == [
        {"ip": pods["server"]["ip"], "port": 8080, "pod": "demo/server"}
    ]

    for name in ("server", "server.demo", "server.demo.svc.cluster.local"):
        result = await cluster.exec("client", "curl", "-s", "-m", "5", f"http://{name}:80/")
        assert result.returncode == 0, (name, result.stderr)
        assert b"Directory listing" in result.stdout
    assert b"GET / HTTP/1.1" in (await cluster.ambit("logs", "-n", "demo", "pod/server")).stdout

    # Pod and node IPs are reachable from the host (a refusal is an answer too).
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(pods["server"]["ip"], 8080)
        await stream.aclose()
        with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            await sock.connect((nodes["node-1"]["ip"], 9))

    # Exit codes pass through, like a shell's.
    assert (await cluster.exec("client", "sh", "-c", "exit 7")).returncode == 7
    assert (await cluster.exec("client", "no-such-command-here")).returncode == 127
    # Nothing leaves the machine: no default route inside a pod.
    route = await cluster.exec("client", "ip", "route")
    assert b"default" not in route.stdout


async def test_apply_and_delete_take_effect_within_two_seconds(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("demo.yaml", demo_manifest()))
    extra = cluster.manifest("extra.yaml", EXTRA)

    deadline = time.monotonic() + 2.0
    applied = await cluster.ambit("apply", "-f", str(extra))
    assert applied.returncode == 0, applied.stderr
    assert b"Pod demo/web2 created" in applied.stdout
    reached = await cluster.exec(
        "client", "python3", "-c", WAIT_FOR, "web2", "8000", str(deadline), "up"
    )
    assert reached.returncode == 0, "web2:8000 not reachable within 2s of 'ambit apply'"
    pods = {p["name"]: p for p in await cluster.get("pods", "-n", "demo")}
    assert set(pods) == {"client", "server", "web2"}

    # A changed pod is recreated (with a new address); the Service follows it.
    extra.write_text(EXTRA.replace("9090", "9091"))
    deadline = time.monotonic() + 2.0
    reapplied = await cluster.ambit("apply", "-f", str(extra))
    assert b"Pod demo/web2 configured" in reapplied.stdout
    moved = await cluster.exec(
        "client", "python3", "-c", WAIT_FOR, "web2", "8000", str(deadline), "up"
    )
    assert moved.returncode == 0, "the recreated web2 not reachable within 2s"
    web2 = [p for p in await cluster.get("pods", "-n", "demo") if p["name"] == "web2"]
    assert web2[0]["ip"] != pods["web2"]["ip"]

    deadline = time.monotonic() + 2.0
    deleted = await cluster.ambit("delete", "-f", str(extra))
    assert deleted.returncode == 0, deleted.stderr
    gone = await cluster.exec(
        "client", "python3", "-c", WAIT_FOR, "web2", "8000", str(deadline), "down"
    )
    assert gone.returncode == 0, "web2:8000 still reachable 2s after 'ambit delete'"
    assert {p["name"] for p in await cluster.get("pods", "-n", "demo")} == {"client", "server"}
    assert [s["name"] for s in await cluster.get("services", "-n", "demo")] == ["server"]
    assert not any(n.endswith("-demo-web2") for n in cluster.records[-1].netns)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("kind: Service\napiVersion: v1\nmetadata: {name: s}\nspec:\n  ports: [{port: eighty}]\n",
         "spec.ports[0].port"),
        ("kind: Pod\napiVersion: v1\nmetadata: {name: p}\n"
         "spec:\n  containers: [{name: c, image: x}]\n", "spec.containers[0].command"),
    ],
)  # fmt: skip
async def test_bad_manifest_fails_up_naming_file_and_field(
    cluster: Cluster, document: str, field: str
) -> None:
    path = cluster.manifest("broken.yaml", demo_manifest([document]))
    result = await cluster.up(path, expect_ok=False)
    assert result.returncode != 0
    assert str(path).encode() in result.stderr
    assert field.encode() in result.stderr
    assert not (cluster.state_dir / "state.json").exists()


async def test_up_twice_says_running_and_down_twice_succeeds(cluster: Cluster) -> None:
    manifest = cluster.manifest("demo.yaml", demo_manifest())
    await cluster.up(manifest)
    again = await cluster.up(manifest, expect_ok=False)
    assert again.returncode == 1
    assert b"already running" in again.stderr
    first = await cluster.ambit("down")
    assert first.returncode == 0, first.stderr
    assert cluster.leftovers() == []
    second = await cluster.ambit("down")
    assert second.returncode == 0
    assert b"nothing to remove" in second.stdout


async def test_a_pod_whose_command_exits_fails_up_and_says_where_to_look(cluster: Cluster) -> None:
    crash = """\
apiVersion: v1
kind: Pod
metadata: {name: crash, namespace: demo}
spec:
  containers: [{name: c, command: [sh, -c, "echo bye; exit 3"]}]
"""
    result = await cluster.up(
        cluster.manifest("crash.yaml", demo_manifest([crash])), expect_ok=False
    )
    assert result.returncode == 1
    assert b"pod demo/crash exited with code 3" in result.stderr
    assert b"ambit down" in result.stderr
    logs = await cluster.ambit("logs", "-n", "demo", "pod/crash")
    assert logs.stdout == b"bye\n"


async def test_down_cleans_up_after_a_dead_daemon(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("demo.yaml", demo_manifest()))
    await kill_daemon(cluster)
    assert cluster.leftovers() != []  # the pods and their namespaces outlive the daemon
    down = await cluster.ambit("down")
    assert down.returncode == 0, down.stderr
    assert cluster.leftovers() == []
