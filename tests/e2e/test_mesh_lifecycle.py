"""The mesh following a running cluster's changes, end to end through ``ambit``:
labels applied and removed, a meshed pod deleted and applied again, the ztunnel's
admin ports, and a control plane that is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from k8s.local.state import is_alive, read_state
from tests.e2e.conftest import (
    ECHO_SERVER,
    Cluster,
    config_dump,
    curl_status,
    eventually,
    run,
)

pytestmark = pytest.mark.root

CHANGES_SECONDS = 2.0  # "labels, policies, services and pods take effect within 2 seconds"
CLIENT = "spiffe://cluster.local/ns/apps/sa/client"
SERVER = "spiffe://cluster.local/ns/apps/sa/server"

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: LABELS}
"""
AMBIENT = NAMESPACE.replace("LABELS", "{ambit.io/dataplane-mode: ambient}")
PLAIN = NAMESPACE.replace("LABELS", "{}")

SERVER_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: NAME, namespace: apps, labels: {app: NAME}}
spec:
  nodeName: node-2
  serviceAccountName: NAME
  containers:
  - name: NAME
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{containerPort: 8080}]
"""

CLIENT_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: apps, labels: LABELS}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: client, command: [sleep, "600"]}]
"""

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: server, namespace: apps}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"""

ECHO_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: apps}
spec:
  nodeName: node-2
  serviceAccountName: echo
  containers:
  - name: echo
    command: [python3, -c, SCRIPT]
    ports: [{containerPort: 7000}]
"""

# Runs in the client pod: one connection to the echo pod, held open until a line on stdin.
HOLD_OPEN = """\
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=5)
s.sendall(b"ping"); assert s.recv(4) == b"ping"
print("open", flush=True)
sys.stdin.readline()
s.sendall(b"pong"); print("echoed", s.recv(4).decode(), flush=True)
"""

DENY_CLIENT = """\
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: apps}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/client"]}}]}]
"""


def server_pod(name: str = "server") -> str:
    return SERVER_POD.replace("NAME", name)


def client_pod(labels: str = "{}") -> str:
    return CLIENT_POD.replace("LABELS", labels)


def cluster_manifest(namespace: str, *extra: str) -> str:
    return "\n---\n".join([namespace, server_pod(), client_pod(), SERVICE, *extra])


async def pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in await cluster.get("pods", "-n", "apps")}


async def nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in await cluster.get("nodes")}


async def apply(cluster: Cluster, name: str, text: str, verb: str = "apply") -> None:
    result = await cluster.ambit(verb, "-f", str(cluster.manifest(name, text)))
    assert result.returncode == 0, result.stderr.decode()


async def capture_chains(netns: str) -> bool:
    """Whether ztunnel's capture rules are installed in a pod's network namespace."""
    result = await run(["ip", "netns", "exec", netns, "iptables-save", "-t", "nat"])
    return b"-A OUTPUT -j AMBIT_OUTPUT" in result.stdout


async def inbound(cluster: Cluster, node: str = "node-2") -> list[dict[str, Any]]:
    events = await cluster.ztunnel_events(node, "connection_complete")
    return [e for e in events if e["direction"] == "inbound"]


async def wait_inbound(cluster: Cluster, count: int) -> list[dict[str, Any]]:
    """node-2's inbound access log once it has more than ``count`` lines (3 s at most)."""

    async def more() -> bool:
        return len(await inbound(cluster)) > count

    assert await eventually(more, seconds=3), "no new inbound line in node-2's access log"
    return (await inbound(cluster))[count:]


async def test_labels_applied_to_a_running_cluster_capture_and_release_pods(
    cluster: Cluster,
) -> None:
    with trio.fail_after(90):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(PLAIN)))
        before = await pods(cluster)
        assert all((p["meshed"], p["captured"]) == (False, None) for p in before.values())
        assert await curl_status("http://server/", before["client"]["netns"]) == "200"
        assert await inbound(cluster) == []  # nothing went through ztunnel

        # The namespace is labelled: both pods are captured, in place, within 2 s.
        await apply(cluster, "ns.yaml", AMBIENT)

        async def captured() -> bool:
            now = await pods(cluster)
            return all(p["captured"] is True for p in now.values())

        assert await eventually(captured, seconds=CHANGES_SECONDS), await pods(cluster)
        now = await pods(cluster)
        assert {n: p["ip"] for n, p in now.items()} == {n: p["ip"] for n, p in before.items()}
        assert all([await capture_chains(p["netns"]) for p in now.values()])
        assert await curl_status("http://server/", now["client"]["netns"]) == "200"
        (line,) = await wait_inbound(cluster, 0)
        assert (line["src.identity"], line["dst.identity"]) == (CLIENT, SERVER)

        # A Pod-level opt-out in the meshed namespace: the client leaves the mesh (it is
        # recreated with its new labels) and reaches the meshed server in plaintext.
        await apply(cluster, "client.yaml", client_pod("{ambit.io/dataplane-mode: none}"))

        async def opted_out() -> bool:
            client = (await pods(cluster)).get("client", {})
            return client.get("phase") == "Running" and client.get("meshed") is False

        assert await eventually(opted_out, seconds=CHANGES_SECONDS), await pods(cluster)
        now = await pods(cluster)
        assert (now["client"]["captured"], now["server"]["captured"]) == (None, True)
        assert not await capture_chains(now["client"]["netns"])
        count = len(await inbound(cluster))
        assert await curl_status("http://server/", now["client"]["netns"]) == "200"
        (line,) = await wait_inbound(cluster, count)
        assert line["src.identity"] is None  # plaintext, into the server's 15006
        assert line["src.addr"].startswith(f"{now['client']['ip']}:")

        # The namespace label is removed: the server is released within 2 s.
        await apply(cluster, "ns.yaml", PLAIN)

        async def released() -> bool:
            server = (await pods(cluster))["server"]
            return (server["meshed"], server["captured"]) == (False, None)

        assert await eventually(released, seconds=CHANGES_SECONDS), await pods(cluster)
        node2 = (await nodes(cluster))["node-2"]

        async def not_in_config_dump() -> bool:
            return not (await config_dump(node2["netns"]))["pods"]

        assert await eventually(not_in_config_dump, seconds=CHANGES_SECONDS)
        assert not await capture_chains(now["server"]["netns"])
        count = len(await inbound(cluster))
        assert await curl_status("http://server/", now["client"]["netns"]) == "200"
        await trio.sleep(0.5)
        assert len(await inbound(cluster)) == count  # no longer through ztunnel


async def metrics(node_ip: str) -> str:
    return (await run(["curl", "-s", "-m", "3", f"http://{node_ip}:15020/metrics"])).stdout.decode()


async def test_ztunnel_admin_ports_readiness_metrics_and_config_dump(cluster: Cluster) -> None:
    with trio.fail_after(60):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT)))
        the_nodes = await nodes(cluster)
        for node in the_nodes.values():
            assert await curl_status(f"http://{node['ip']}:15021/healthz/ready") == "200"
            # The admin port is not on the node's address: only its namespace's loopback.
            assert await curl_status(f"http://{node['ip']}:15000/config_dump") == "000"

        node1, node2 = the_nodes["node-1"], the_nodes["node-2"]
        assert "istio_tcp_connections_opened_total{" not in await metrics(node2["ip"])
        the_pods = await pods(cluster)
        assert await curl_status("http://server/", the_pods["client"]["netns"]) == "200"

        async def counted() -> bool:
            return "istio_tcp_connections_opened_total{" in await metrics(node2["ip"])

        assert await eventually(counted, seconds=3)
        opened = [
            line for line in (await metrics(node2["ip"])).splitlines()
            if line.startswith("istio_tcp_connections_opened_total{")
        ]  # fmt: skip
        assert len(opened) == 1, opened
        assert 'reporter="destination"' in opened[0]
        assert f'source_principal="{CLIENT}"' in opened[0]
        assert f'destination_principal="{SERVER}"' in opened[0]
        assert opened[0].endswith(" 1.0")
        assert 'reporter="source"' in await metrics(node1["ip"])

        for node, name in ((node1, "client"), (node2, "server")):
            dump = await config_dump(node["netns"])
            assert dump["node"] == node["name"]
            (pod,) = dump["pods"]
            assert pod["uid"] == f"apps/{name}"
            assert pod["ip"] == the_pods[name]["ip"]
            assert pod["identity"] == the_pods[name]["identity"]
            assert pod["captured"] is True
            assert pod["certificate_expires"] is not None
            workloads = {w["uid"]: w for w in dump["config"]["workloads"]}
            assert {"apps/client", "apps/server"} <= set(workloads)


async def test_a_deleted_meshed_pod_is_released_and_a_pod_applied_again_is_captured(
    cluster: Cluster,
) -> None:
    with trio.fail_after(60):
        extra = cluster.manifest("extra.yaml", server_pod("extra"))
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT)), extra)
        node2 = (await nodes(cluster))["node-2"]
        first = (await pods(cluster))["extra"]
        uids = {p["uid"] for p in (await config_dump(node2["netns"]))["pods"]}
        assert uids == {"apps/server", "apps/extra"}

        await apply(cluster, "extra.yaml", server_pod("extra"), verb="delete")

        async def released() -> bool:
            listed = {p["uid"] for p in (await config_dump(node2["netns"]))["pods"]}
            return listed == {"apps/server"}

        assert await eventually(released, seconds=CHANGES_SECONDS)
        assert not await trio.Path("/run/netns", first["netns"]).exists()
        assert "extra" not in {w["name"] for w in await cluster.get("workloads", "-n", "apps")}
        assert "apps/extra" in {
            e["pod"] for e in await cluster.ztunnel_events("node-2", "pod_released")
        }

        await apply(cluster, "extra.yaml", server_pod("extra"))

        async def captured() -> bool:
            extra = (await pods(cluster)).get("extra", {})
            return extra.get("captured") is True and extra.get("certificate") is True

        assert await eventually(captured, seconds=CHANGES_SECONDS), await pods(cluster)
        again = (await pods(cluster))["extra"]
        (pod,) = [
            p for p in (await config_dump(node2["netns"]))["pods"] if p["uid"] == "apps/extra"
        ]
        assert pod["captured"] is True
        assert pod["certificate_expires"] is not None
        assert pod["ip"] == again["ip"] != first["ip"]
        client_netns = (await pods(cluster))["client"]["netns"]
        count = len(await inbound(cluster))
        # Its app may need a moment to listen after the capture (a refusal is "000").
        assert await eventually(
            lambda: _is_200(f"http://{again['ip']}:8080/", client_netns), seconds=CHANGES_SECONDS
        )
        lines = await wait_inbound(cluster, count)
        assert (lines[-1]["src.identity"], lines[-1]["dst.identity"]) == (
            CLIENT,
            "spiffe://cluster.local/ns/apps/sa/extra",
        )


async def _is_200(url: str, netns: str) -> bool:
    return await curl_status(url, netns) == "200"


@asynccontextmanager
async def held_connection(
    netns: str, echo_ip: str
) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """A connection from a pod (``netns``) to an echo pod, open and proven end to end on
    entry; the callable sends one more line over it and returns what came back."""
    proc = await trio.lowlevel.open_process(
        ["ip", "netns", "exec", netns, "python3", "-c", HOLD_OPEN, echo_ip],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    out = bytearray()

    async def carry_on() -> bytes:
        await stdin.send_all(b"go\n")
        while b"echoed" not in out or not out.endswith(b"\n"):  # the whole line
            out.extend(await stdout.receive_some())
        assert await proc.wait() == 0
        return bytes(out)

    try:
        while b"open" not in out:
            out.extend(await stdout.receive_some())
        yield carry_on
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def kill_component(cluster: Cluster, name: str) -> int:
    """SIGKILL a supervised process of the local cluster (``controlplane``,
    ``ztunnel/NODE``); returns its PID."""
    record = read_state(cluster.state_dir / "state.json")
    assert record is not None
    (process,) = [p for p in record.processes if p.what == name]
    os.kill(process.pid, signal.SIGKILL)
    with trio.fail_after(5):
        while is_alive(process):  # noqa: ASYNC110 - not our child: nothing to wait on
            await trio.sleep(0.02)
    return process.pid


async def components(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in await cluster.get("components")}


async def kill_control_plane(cluster: Cluster) -> None:
    """SIGKILL the control plane's process (``ambit controlplane``, a child of the local
    cluster, which starts it again)."""
    await kill_component(cluster, "controlplane")

    async def noticed() -> bool:
        return all(
            [
                bool(await cluster.ztunnel_events(n, "config_stream_lost"))
                for n in ("node-1", "node-2")
            ]
        )

    assert await eventually(noticed, seconds=5), "the ztunnels did not notice"


async def test_meshed_traffic_keeps_flowing_after_the_control_plane_is_killed(
    cluster: Cluster,
) -> None:
    echo = ECHO_POD.replace("SCRIPT", json.dumps(ECHO_SERVER))
    with trio.fail_after(60):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT, echo)))
        the_pods = await pods(cluster)
        node_ips = [n["ip"] for n in (await nodes(cluster)).values()]
        client_netns = the_pods["client"]["netns"]
        async with held_connection(client_netns, the_pods["echo"]["ip"]) as carry_on:
            await kill_control_plane(cluster)
            assert b"echoed pong" in await carry_on()  # the open connection still carries data

        count = len(await inbound(cluster))
        for _ in range(3):  # new connections: still over mTLS, on the last config
            assert await curl_status("http://server/", client_netns) == "200"
        lines = await wait_inbound(cluster, count)
        assert {(e["src.identity"], e["dst.identity"]) for e in lines} == {(CLIENT, SERVER)}
        for ip in node_ips:  # and the ztunnels still call themselves ready
            assert await curl_status(f"http://{ip}:15021/healthz/ready") == "200"


async def test_a_killed_control_plane_comes_back_and_resyncs_the_ztunnels(
    cluster: Cluster,
) -> None:
    """The control plane (and, in local mode, the CA in it) is SIGKILLed: the cluster
    starts it again, the ztunnels resync (a new policy takes effect) and certificates
    are issued again (a new pod gets one)."""
    with trio.fail_after(60):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT)))
        client_netns = (await pods(cluster))["client"]["netns"]
        await kill_control_plane(cluster)

        async def restarted() -> bool:
            plane = (await components(cluster))["controlplane"]
            return bool(plane["status"] == "Running" and plane["restarts"] == 1)

        assert await eventually(restarted, seconds=5), await components(cluster)
        await apply(cluster, "deny.yaml", DENY_CLIENT)

        async def denied() -> bool:
            return await curl_status("http://server/", client_netns) == "000"

        assert await eventually(denied, seconds=CHANGES_SECONDS)

        # The CA came back with it: a new meshed pod gets its certificate.
        await apply(cluster, "extra.yaml", server_pod("extra"))

        async def certified() -> bool:
            extra = (await pods(cluster)).get("extra")
            return bool(extra and extra["captured"] and extra["certificate"])

        assert await eventually(certified, seconds=10), (await pods(cluster)).get("extra")


async def test_a_killed_ztunnel_comes_back_and_other_nodes_are_untouched(
    cluster: Cluster,
) -> None:
    """SIGKILL node-2's ztunnel: its pods' new connections work again within seconds (the
    cluster restarts it; it asks for new certificates), a connection that never touches
    node-2 carries on, and the restart is counted."""
    near = (
        ECHO_POD.replace("name: echo, namespace", "name: near, namespace")
        .replace("node-2", "node-1")
        .replace("SCRIPT", json.dumps(ECHO_SERVER))
    )
    with trio.fail_after(90):
        await cluster.up(cluster.manifest("apps.yaml", cluster_manifest(AMBIENT, near)))
        the_pods = await pods(cluster)
        client_netns = the_pods["client"]["netns"]
        assert await curl_status("http://server/", client_netns) == "200"
        before = await components(cluster)
        assert {before[n]["status"] for n in before} == {"Running"}
        assert {before[n]["restarts"] for n in before} == {0}
        async with held_connection(client_netns, the_pods["near"]["ip"]) as carry_on:
            old_pid = await kill_component(cluster, "ztunnel/node-2")

            async def served() -> bool:
                return await curl_status("http://server/", client_netns) == "200"

            assert await eventually(served, seconds=10), "node-2's pods not served again"
            assert b"echoed pong" in await carry_on()  # node-1 only: never interrupted
        after = await components(cluster)
        assert after["ztunnel/node-2"]["restarts"] == 1
        assert after["ztunnel/node-2"]["status"] == "Running"
        assert after["ztunnel/node-2"]["pid"] != old_pid
        assert after["ztunnel/node-1"]["restarts"] == 0
        assert after["controlplane"]["restarts"] == 0
        table = await cluster.ambit("get", "components")
        assert table.stdout.decode().split("\n")[0].split() == [
            "NAME",
            "PID",
            "STATUS",
            "RESTARTS",
            "AGE",
        ]
