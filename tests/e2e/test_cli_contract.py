"""The ``ambit`` command as a user meets it: ``up`` refusing what it cannot do (not
root, no iptables, addresses in use) with a message that says what is wrong; what
``get`` and ``logs`` print; ``down`` leaving no host rule; the bundled demo."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import REPO, Cluster, eventually, host_routes_of, host_rules_of, run

pytestmark = pytest.mark.root

DEMO_YAML = REPO / "examples" / "demo.yaml"
CLIENT = "spiffe://cluster.local/ns/demo/sa/client"
SERVER = "spiffe://cluster.local/ns/demo/sa/server"

SHOP = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-2
  serviceAccountName: web
  containers:
  - name: web
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: client, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec:
  nodeName: node-1
  containers: [{name: old, command: [sleep, "600"]}]
"""


def up_args(cluster: Cluster) -> list[str]:
    return [
        "up", "-f", str(DEMO_YAML),
        "--pod-cidr", cluster.pod_cidr, "--service-cidr", cluster.service_cidr,
    ]  # fmt: skip


def assert_nothing_started(cluster: Cluster) -> None:
    assert not (cluster.state_dir / "state.json").exists()
    assert cluster.records == []


async def test_up_as_an_unprivileged_user_fails_saying_it_needs_root(cluster: Cluster) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    assert (await run([*nobody, "id", "-u"])).stdout == b"65534\n"  # really unprivileged
    result = await cluster.ambit(*up_args(cluster), run_as=nobody)
    assert result.returncode == 1, result.stderr.decode()
    message = result.stderr.decode()
    assert message.startswith("ambit up: local mode needs root"), message
    assert "sudo ambit up" in message
    assert "Traceback" not in message
    assert_nothing_started(cluster)


def path_without_iptables(bin_dir: Path) -> str:
    """A PATH as on this machine without the iptables package: every command of PATH
    except iptables*, ip6tables*, xtables* (local mode looks them up on PATH)."""
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for tool in Path(directory).iterdir():
            target = bin_dir / tool.name
            if "tables" in tool.name or target.exists() or not os.access(tool, os.X_OK):
                continue
            target.symlink_to(tool)
    return str(bin_dir)


async def test_up_without_iptables_fails_naming_what_to_install(
    cluster: Cluster, tmp_path: Path
) -> None:
    path = path_without_iptables(tmp_path / "bin")
    assert shutil.which("ip", path=path)
    assert shutil.which("curl", path=path)
    assert shutil.which("iptables", path=path) is None

    result = await cluster.ambit(*up_args(cluster), env={"PATH": path})
    assert result.returncode == 1, result.stderr.decode()
    message = result.stderr.decode()
    assert "ambit up: iptables, iptables-restore not found on PATH" in message, message
    assert "apt-get install iproute2 iptables" in message
    assert_nothing_started(cluster)


@asynccontextmanager
async def host_route(network: ipaddress.IPv4Network) -> AsyncIterator[str]:
    """A link (an empty bridge) on the host with an address in ``network`` (so a route to it)."""
    device = f"amt{secrets.token_hex(3)}"
    address = f"{network[254]}/{network.prefixlen}"
    try:
        for argv in (
            ["ip", "link", "add", device, "type", "bridge"],
            ["ip", "addr", "add", address, "dev", device],
            ["ip", "link", "set", device, "up"],
        ):
            done = await run(argv)
            assert done.returncode == 0, done.stderr.decode()
        yield device
    finally:
        with trio.CancelScope(shield=True):
            await run(["ip", "link", "del", device])


@pytest.mark.parametrize("which", ["pod", "service"])
async def test_up_refuses_a_cidr_that_overlaps_a_route_on_the_host(
    cluster: Cluster, which: str
) -> None:
    cidr = cluster.pod_cidr if which == "pod" else cluster.service_cidr
    taken = next(ipaddress.IPv4Network(cidr).subnets(new_prefix=24))
    async with host_route(taken) as device:
        result = await cluster.ambit(*up_args(cluster))
    assert result.returncode == 1, result.stderr.decode()
    message = result.stderr.decode()
    assert f"addresses in use: the {which} CIDR {cidr} overlaps route {taken} dev {device}" in (
        message
    ), message
    assert f"--{which}-cidr" in message
    assert_nothing_started(cluster)


def table(text: str) -> list[list[str]]:
    """Rows of a table ``ambit get`` prints (columns are separated by 3+ spaces)."""
    return [re.split(r" {3,}", line.strip()) for line in text.splitlines()]


async def test_get_shows_identity_and_capture_and_logs_shows_the_control_plane(
    cluster: Cluster,
) -> None:
    with trio.fail_after(60):
        await cluster.up(cluster.manifest("shop.yaml", SHOP))
        workloads = {
            f"{w['namespace']}/{w['name']}": w for w in await cluster.get("workloads", "-A")
        }
        assert set(workloads) == {"shop/web", "shop/client", "legacy/old"}
        web, old = workloads["shop/web"], workloads["legacy/old"]
        assert web["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
        assert (web["meshed"], web["captured"], web["certificate"]) == (True, True, True)
        assert workloads["shop/client"]["captured"] is True
        assert old["identity"] == "spiffe://cluster.local/ns/legacy/sa/default"
        assert (old["meshed"], old["captured"]) == (False, None)

        listed = await cluster.ambit("get", "workloads", "-A")
        assert listed.returncode == 0, listed.stderr.decode()
        rows = table(listed.stdout.decode())
        assert rows[0] == ["NAMESPACE", "NAME", "IP", "NODE", "IDENTITY", "PROTOCOL", "CAPTURED"]
        assert ["shop", "web", web["ip"], "node-2", web["identity"], "HBONE", "yes"] in rows
        assert ["legacy", "old", old["ip"], "node-1", old["identity"], "TCP", "-"] in rows

        pods = await cluster.ambit("get", "pods", "-n", "shop")
        rows = table(pods.stdout.decode())
        assert rows[0] == ["NAME", "STATUS", "IP", "NODE", "IDENTITY", "CAPTURED"]
        assert sorted(r[0] for r in rows[1:]) == ["client", "web"]
        assert ["web", "Running", web["ip"], "node-2", web["identity"], "yes"] in rows
        every = table((await cluster.ambit("get", "pods", "-A")).stdout.decode())
        assert every[0] == ["NAMESPACE", "NAME", "STATUS", "IP", "NODE", "IDENTITY", "CAPTURED"]
        assert ["legacy", "old", "Running", old["ip"], "node-1", old["identity"], "-"] in every

        logs = await cluster.ambit("logs", "controlplane")
        assert logs.returncode == 0, logs.stderr.decode()
        events: list[dict[str, Any]] = [json.loads(line) for line in logs.stdout.splitlines()]
        names = {e["event"] for e in events}
        assert {"control_plane_listening", "config_published", "controlplane_started"} <= names
        daemon = await cluster.ambit("logs", "daemon")
        assert b'"cluster_ready"' in daemon.stdout
        joined = {e["node"] for e in events if e["event"] == "config_subscriber_joined"}
        assert joined == {"node-1", "node-2"}
        tail = await cluster.ambit("logs", "controlplane", "--tail", "2")
        assert tail.stdout.splitlines() == logs.stdout.splitlines()[-2:]


async def test_down_leaves_no_host_iptables_rule_route_or_namespace(cluster: Cluster) -> None:
    with trio.fail_after(60):
        await cluster.up(cluster.manifest("shop.yaml", SHOP))
        record = cluster.records[-1]
        bridge = f"amb-{record.cluster_id}"
        # What the cluster adds on the host: the bridge's FORWARD rule and its route.
        assert f"-A FORWARD -i {bridge} -o {bridge} -j ACCEPT" in host_rules_of(record)
        assert any(r.startswith(f"{record.pod_cidr} dev {bridge}") for r in host_routes_of(record))
        # Service DNAT lives in each pod's namespace (kube-proxy's job), not on the host.
        web = (await run(["ip", "netns", "exec", f"{bridge}-shop-web", "iptables-save"])).stdout
        assert b"-A AMBIT-SERVICES -d " in web
        assert b"DNAT" in web

        down = await cluster.ambit("down")
        assert down.returncode == 0, down.stderr.decode()
        assert host_rules_of(record) == []
        assert host_routes_of(record) == []
        assert cluster.leftovers() == []
        assert not cluster.state_dir.exists()


def demo_request() -> list[str]:
    """The ``ambit ...`` arguments of the request ``make demo`` shows, from the Makefile."""
    makefile = (REPO / "Makefile").read_text()
    for line in makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0].splitlines():
        command = line.strip().removeprefix("@")
        if command.startswith("$(BIN)/ambit exec"):
            return shlex.split(command)[1:]
    raise AssertionError("the demo target of the Makefile runs no 'ambit exec'")


async def test_the_bundled_demo_answers_200_and_node_2_logs_both_identities(
    cluster: Cluster,
) -> None:
    with trio.fail_after(60):
        up = await cluster.up(DEMO_YAML)
        assert b"is ready" in up.stdout
        request = demo_request()
        assert request[:4] == ["exec", "-n", "demo", "client"]
        answer = await cluster.ambit(*request)
        assert answer.returncode == 0, answer.stderr.decode()
        assert answer.stdout == b"HTTP 200\n"
        # NS/NAME, as ambit why and tap name a pod, is the same pod.
        same = await cluster.ambit("exec", "demo/client", *request[4:])
        assert (same.returncode, same.stdout) == (0, b"HTTP 200\n"), same.stderr.decode()

        async def logged() -> bool:
            return bool(await cluster.ztunnel_events("node-2", "connection_complete"))

        assert await eventually(logged, seconds=3)
        line = (await cluster.ztunnel_events("node-2", "connection_complete"))[-1]
        assert line["direction"] == "inbound"
        assert (line["src.identity"], line["dst.identity"]) == (CLIENT, SERVER)
        assert line["dst.service"] == "server.demo.svc.cluster.local"
