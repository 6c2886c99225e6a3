"""``ambit ztunnel --pods-socket`` as the process a node runs: the control plane (in this
process, on the test bridge's address) serves config and certificates for pods a and b
of tests/e2e/test_ztunnel.py's network, ztunnel runs in its own "node" namespace joined
to the bridge, and the agent's real client hands it the pods. A second ztunnel on the
same socket path takes over hitlessly: it gets the full set, writes its ready file only
then, and a connection through the first lives on while the first drains after SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from k8s.controlplane_process import ControlPlaneConfig, Ports, run_controlplane
from mesh.zds import PodInfo
from node.zds_client import ZdsClient, socket_key
from tests.e2e.test_zds import PORTS, apps, echoes
from tests.e2e.test_ztunnel import (
    APP_PORT,
    Net,
    app_stream,
    exchange,
    listening_ports,
    pod_network,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def manifest(net: Net) -> str:
    pods = "".join(
        f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, uid: uid-{name}}}
spec:
  nodeName: node-1
  serviceAccountName: {sa}
  containers: [{{name: app, image: app}}]
status: {{podIP: {net.ip(name)}, phase: Running}}
"""
        for name, sa in (("a", "client"), ("b", "server"))
    )
    return f"""apiVersion: v1
kind: Namespace
metadata: {{name: default, labels: {{ambit.io/dataplane-mode: ambient}}}}
{pods}"""


@dataclass
class Node:
    net: Net
    netns: str
    ip: str
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "ztunnel.sock"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """The pods' network, and a node namespace on the bridge (10.N.0.2) for ztunnel."""
    with pod_network() as net:
        ns, veth = f"azn-{net.suffix}", f"v{net.suffix}n"
        try:
            for command in (
                ["ip", "netns", "add", ns],
                ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["ip", "link", "set", veth, "master", net.bridge, "up"],
                ["ip", "-n", ns, "addr", "add", f"10.{net.octet}.0.2/16", "dev", "eth0"],
                ["ip", "-n", ns, "link", "set", "eth0", "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
            ):
                subprocess.run(command, check=True, capture_output=True, timeout=10)
            yield Node(net, ns, f"10.{net.octet}.0.2", tmp_path)
        finally:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


@contextlib.asynccontextmanager
async def control_plane(node: Node) -> AsyncIterator[Ports]:
    manifests = node.dir / "manifests"
    manifests.mkdir()
    (manifests / "pods.yaml").write_text(manifest(node.net))
    (node.dir / "tokens.json").write_text(json.dumps({"node-1": "secret-1"}))
    config = ControlPlaneConfig(
        files=(manifests,), ca_dir=node.dir / "ca", tokens_file=node.dir / "tokens.json",
        host=f"10.{node.net.octet}.0.1", ca_port=0, config_port=0, metrics_port=0,
        poll=0.05, coalesce=0.02, lease=None,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        ports: Ports = await nursery.start(
            lambda task_status: run_controlplane(config, task_status=task_status)
        )
        yield ports
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def ztunnel_process(node: Node, ports: Ports, name: str) -> AsyncIterator[trio.Process]:
    """``ambit ztunnel --pods-socket`` in the node's namespace; killed by PID at the end."""
    (node.dir / "token").write_text("secret-1")
    host = f"10.{node.net.octet}.0.1"
    argv = [
        "ip", "netns", "exec", node.netns, sys.executable, "-m", "ambit.cli",
        "--log-format", "json", "ztunnel", "--node", "node-1",
        "--control-plane", f"{host}:{ports.config}", "--ca", f"{host}:{ports.ca}",
        "--token-file", str(node.dir / "token"),
        "--trust-bundle", str(node.dir / "ca" / "root-cert.pem"),
        "--pods-socket", str(node.socket), "--listen-ip", node.ip, "--drain-seconds", "20",
        "--ready-file", str(node.dir / f"{name}.ready"),
    ]  # fmt: skip
    with (node.dir / f"{name}.log").open("ab") as log:
        process = await trio.lowlevel.open_process(
            argv, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log
        )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()


def events(node: Node, name: str) -> list[dict[str, object]]:
    lines = (node.dir / f"{name}.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_a_ztunnel_process_takes_pods_from_the_socket_and_hands_over_hitlessly(
    node: Node,
) -> None:
    net = node.net
    world_pods = {
        name: PodInfo(f"uid-{name}", "default", name, sa, (net.ip(name),))
        for name, sa in (("a", "client"), ("b", "server"))
    }
    with trio.fail_after(90):
        async with control_plane(node) as ports, apps(net), trio.open_nursery() as nursery:
            client = ZdsClient(node.socket, poll_seconds=0.05)
            await nursery.start(client.run)
            async with ztunnel_process(node, ports, "first") as first:
                for name, pod in world_pods.items():
                    await client.add(pod, f"/run/netns/{net.netns[name]}", seconds=30)
                client.synced()
                await wait_until(lambda: (node.dir / "first.ready").exists(), seconds=30)
                assert listening_ports(net.netns["a"]) >= PORTS
                assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"one") == b"one"
                old_socket = socket_key(node.socket)
                async with await app_stream(net, "a", (net.ip("b"), APP_PORT)) as held:
                    assert await echoes(held, b"through the first")
                    async with ztunnel_process(node, ports, "second") as second:
                        await wait_until(lambda: socket_key(node.socket) != old_socket, seconds=30)
                        await wait_until(lambda: (node.dir / "second.ready").exists(), seconds=30)
                        first.send_signal(signal.SIGTERM)  # the old one drains
                        await wait_until(
                            lambda: any(e["event"] == "ztunnel_draining"
                                        for e in events(node, "first")),
                            seconds=10,
                        )  # fmt: skip
                        for n in range(3):
                            assert await echoes(held, b"still there %d" % n)
                            payload = b"new %d" % n
                            assert await exchange(net, "a", (net.ip("b"), APP_PORT), payload)
                        await held.send_eof()
                        assert await held.receive_some() == b""
                        with trio.fail_after(15):
                            assert await first.wait() == 0
                        assert second.returncode is None
                        drained = [e for e in events(node, "first")
                                   if e["event"] == "ztunnel_drained"]  # fmt: skip
                        assert drained[-1]["cut_at_deadline"] == 0
                        adds = [e for e in events(node, "second")
                                if e["event"] == "pod_captured"]  # fmt: skip
                        assert {e["pod"] for e in adds} == {"default/a", "default/b"}
                        assert client.connected
            nursery.cancel_scope.cancel()
