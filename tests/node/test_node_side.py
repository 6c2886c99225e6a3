"""The node side end to end (issue 15): pods created through the CNI chain (the reference
``bridge``/``host-local`` plugins, then ``ambit-cni``) on two nodes of the real API server,
each node with its ``ambit node-agent`` and ``ambit ztunnel --pods-socket``. Each test
asserts what a user observes: traffic between pods is TLS on the wire and names the
client's identity in the server's ztunnel log, a pod that should not start does not, and
nothing is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from mesh.netns import NetworkNamespace
from tests.e2e.test_ztunnel import APP_PORT
from tests.e2e.test_ztunnel import echo_app as ztunnel_echo_app
from tests.kube.client import KubeAdmin
from tests.kube.cluster import Cluster
from tests.kube.kubelet import pod as kube_pod
from tests.node.harness import SYSTEM_NS, Node, NodeMesh, Pod, missing_cni, node_mesh, sh
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.kube]

AMBIENT = {"ambit.io/dataplane-mode": "ambient"}
SECONDS = 30.0


@pytest.fixture
async def mesh(
    kube_admin: KubeAdmin, kube_cluster: Cluster, tmp_path: Path
) -> AsyncIterator[NodeMesh]:
    reason = missing_cni()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)
    async with node_mesh(kube_admin, kube_cluster, tmp_path) as m:
        yield m


# ---- apps and the wire ------------------------------------------------------------------


async def echo_app(p: Pod, *, task_status: trio.TaskStatus[None]) -> None:
    """An echo server listening inside ``p`` on APP_PORT (the app): tests/e2e's."""
    await ztunnel_echo_app(p.netns, [], task_status=task_status)


async def connect(client: Pod, server: Pod) -> trio.SocketStream:
    """A connection an app inside ``client`` opens to ``server``'s app."""
    with NetworkNamespace.open(client.netns) as handle:
        sock = handle.socket(mark=None)
    try:
        with trio.fail_after(10):
            await sock.connect((server.ip, APP_PORT))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def exchange(client: Pod, server: Pod, payload: bytes) -> bytes:
    with trio.fail_after(15):
        async with await connect(client, server) as stream:
            await stream.send_all(payload)
            await stream.send_eof()
            got = bytearray()
            while data := await stream.receive_some():
                got += data
            return bytes(got)


async def fails(client: Pod, server: Pod) -> bool:
    try:
        return await exchange(client, server, b"hello?") != b"hello?"
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return True


@contextlib.contextmanager
def wire(interface: str) -> Iterator[bytearray]:
    """Every frame crossing ``interface`` (a node's bridge) while the block runs."""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    raw.bind((interface, 0))
    raw.setblocking(False)
    captured = bytearray()
    try:
        yield captured
        while True:
            try:
                captured.extend(raw.recv(65536))
            except BlockingIOError:
                break
    finally:
        raw.close()


def accepted_from(m: NodeMesh, server: Pod) -> list[str]:
    """The client identities ``server``'s ztunnel logged for inbound connections."""
    assert server.node.ztunnel is not None
    return [
        str(line.get("src.identity"))
        for line in server.node.ztunnel.lines()
        if line.get("event") == "connection_complete" and line.get("direction") == "inbound"
    ]


async def until(probe: Callable[[], Awaitable[bool]], seconds: float = SECONDS) -> None:
    """Until ``probe()`` is true, checked every 50 ms, for at most ``seconds``."""
    with trio.fail_after(seconds):
        for _ in range(int(seconds / 0.05) + 1):
            if await probe():
                return
            await trio.sleep(0.05)


async def both_captured(mesh: NodeMesh, ns: str) -> bool:
    n1, n2 = mesh.nodes
    return f"{ns}/client" in await mesh.captured(n1) and f"{ns}/server" in await mesh.captured(n2)


async def released(mesh: NodeMesh, node: Node, key: str) -> bool:
    return key not in await mesh.captured(node)


def rules_in(p: Pod) -> str:
    return sh("ip", "netns", "exec", p.netns, "iptables-save").stdout


# ---- cases ----------------------------------------------------------------------------------


async def test_a_pod_created_in_a_meshed_namespace_is_meshed_before_its_first_packet(
    mesh: NodeMesh,
) -> None:
    ns = await mesh.make_namespace("meshed", AMBIENT)
    n1, n2 = mesh.nodes
    client = await mesh.start_pod(n1, ns, "client")
    server = await mesh.start_pod(n2, ns, "server")
    await mesh.wait_known(client, server)
    # ADD returned: the pods are captured already, with no wait.
    assert f"{ns}/client" in await mesh.captured(n1)
    assert f"{ns}/server" in await mesh.captured(n2)
    assert "AMBIT_OUTPUT" in rules_in(client)
    async with trio.open_nursery() as nursery:
        await nursery.start(echo_app, server)
        marker = b"plaintext-marker-" + ns.encode()
        with wire(n2.bridge) as frames:
            assert await exchange(client, server, marker * 4) == marker * 4
        assert marker not in frames, "plaintext crossed the wire between meshed pods"
        nursery.cancel_scope.cancel()
    await wait_until(
        lambda: f"spiffe://cluster.local/ns/{ns}/sa/default" in accepted_from(mesh, server),
        seconds=SECONDS,
    )


async def test_labelling_a_namespace_meshes_its_running_pods_and_unlabelling_releases(
    mesh: NodeMesh,
) -> None:
    ns = await mesh.make_namespace("later")
    n1, n2 = mesh.nodes
    client = await mesh.start_pod(n1, ns, "client")
    server = await mesh.start_pod(n2, ns, "server")
    marker = b"before-the-label-" + ns.encode()
    async with trio.open_nursery() as nursery:
        await nursery.start(echo_app, server)
        with wire(n2.bridge) as frames:
            assert await exchange(client, server, marker) == marker
        assert marker in frames  # control: out of the mesh, the payload is on the wire

        await mesh.label_namespace(ns, AMBIENT)
        start = trio.current_time()
        # No ADD comes for running pods: the agent finds them by their processes.
        await until(lambda: both_captured(mesh, ns))
        await mesh.wait_known(client, server)
        took = trio.current_time() - start
        print(f"running pods meshed {took:.2f} s after the label")
        marker = b"after-the-label-" + ns.encode()
        with wire(n2.bridge) as frames:
            assert await exchange(client, server, marker) == marker
        assert marker not in frames

        await mesh.label_namespace(ns, {"ambit.io/dataplane-mode": None})
        await until(lambda: released(mesh, n1, f"{ns}/client"))
        await wait_until(lambda: "AMBIT_OUTPUT" not in rules_in(client), seconds=SECONDS)
        marker = b"label-removed-" + ns.encode()
        with wire(n2.bridge) as frames:
            assert await exchange(client, server, marker) == marker
        assert marker in frames
        nursery.cancel_scope.cancel()


async def test_with_the_agent_down_plain_pods_start_and_meshed_pods_wait(mesh: NodeMesh) -> None:
    n1 = mesh.nodes[0]
    assert n1.agent is not None
    await n1.agent.stop(signal.SIGKILL)  # down, not uninstalled: the plugin stays in the chain
    plain_ns = await mesh.make_namespace("plain")
    plain = await mesh.start_pod(n1, plain_ns, "legacy")
    assert plain.ip, "a pod out of the mesh starts whatever the agent's state"
    assert "AMBIT_OUTPUT" not in rules_in(plain)
    meshed_ns = await mesh.make_namespace("waits", AMBIENT)
    waiting = await mesh.start_pod(n1, meshed_ns, "app", expect_add=False)
    assert waiting.ip == "", "a meshed pod must not start without its capture"
    failed = mesh.last_error
    assert failed is not None
    # cnitool prints the plugin's message (its code, 11, is tests/node/test_cni_chain.py's).
    said = failed.stdout + failed.stderr
    assert "node agent" in said, said
    assert "is not reachable" in said, said
    # DEL always succeeds, even with the agent gone.
    done = await trio.to_thread.run_sync(lambda: mesh.cni(n1, "del", waiting))
    assert done.returncode == 0, done.stdout


async def test_ztunnel_down_fails_closed_and_a_restart_is_hitless(mesh: NodeMesh) -> None:
    ns = await mesh.make_namespace("ztdown", AMBIENT)
    n1, n2 = mesh.nodes
    client = await mesh.start_pod(n1, ns, "client")
    server = await mesh.start_pod(n2, ns, "server")
    await mesh.wait_known(client, server)
    async with trio.open_nursery() as nursery:
        await nursery.start(echo_app, server)
        assert await exchange(client, server, b"warm") == b"warm"
        # Hitless: a new ztunnel starts beside the old one, takes the pods, the old drains.
        held = await connect(client, server)
        old = n1.ztunnel
        assert old is not None
        new = await mesh.start_ztunnel(n1, "ztunnel-2.log")
        await wait_until(lambda: f"{ns}/client" in _served_by(new), seconds=SECONDS)
        old.send(signal.SIGTERM)  # it drains: open connections go on, new ones go to `new`
        await held.send_all(b"still here")
        assert await held.receive_some() == b"still here"
        assert await exchange(client, server, b"during") == b"during"
        await held.aclose()
        await old.stop()
        assert await exchange(client, server, b"after") == b"after"

        # Killed: new connections fail, and no plaintext leaves the pod.
        await new.stop(signal.SIGKILL)
        marker = b"while-ztunnel-is-down-" + ns.encode()
        down = (OSError, trio.BrokenResourceError, trio.TooSlowError)
        with wire(n1.bridge) as frames, contextlib.suppress(*down):
            await exchange(client, server, marker)
        assert marker not in frames
        assert await fails(client, server)
        third = await mesh.start_ztunnel(n1, "ztunnel-3.log")
        # Ready: its config is in and the agent handed it every pod (what a kubelet waits for).
        await mesh.wait_http(n1.ready_port, "/healthz/ready", third)
        try:
            assert await exchange(client, server, b"back") == b"back"
        except trio.TooSlowError:
            raise AssertionError(f"no answer through the new ztunnel\n{third.tail(40)}") from None
        nursery.cancel_scope.cancel()


def _served_by(process: object) -> set[str]:
    """Pods a ztunnel process logged as captured and not released since."""
    from tests.node.harness import Process

    assert isinstance(process, Process)
    served: set[str] = set()
    for line in process.lines():
        if line.get("event") == "pod_captured":
            served.add(str(line.get("pod")))
        elif line.get("event") == "pod_released":
            served.discard(str(line.get("pod")))
    return served


async def test_an_agent_restart_touches_no_traffic_and_cleans_up_after_pods_that_left(
    mesh: NodeMesh,
) -> None:
    ns = await mesh.make_namespace("agentdown", AMBIENT)
    n1, n2 = mesh.nodes
    client = await mesh.start_pod(n1, ns, "client")
    leaving = await mesh.start_pod(n1, ns, "leaving")
    server = await mesh.start_pod(n2, ns, "server")
    await mesh.wait_known(client, server)
    assert n1.agent is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(echo_app, server)
        held = await connect(client, server)
        await n1.agent.stop(signal.SIGKILL)
        # While it is down, a pod goes: DEL cannot reach it, the namespace lingers.
        await mesh.delete_pod(leaving, keep_netns=True)
        await held.send_all(b"during")
        assert await held.receive_some() == b"during"
        await mesh.start_agent(n1)
        await wait_until(lambda: "AMBIT_OUTPUT" not in rules_in(leaving), seconds=SECONDS)
        await held.send_all(b"after")
        assert await held.receive_some() == b"after"
        await held.aclose()
        assert f"{ns}/client" in await mesh.captured(n1)
        assert f"{ns}/leaving" not in await mesh.captured(n1)
        assert await exchange(client, server, b"new") == b"new"
        nursery.cancel_scope.cancel()
    sh("ip", "netns", "del", leaving.netns, check=False)


async def test_a_deleted_pod_is_released_and_its_rules_removed(mesh: NodeMesh) -> None:
    ns = await mesh.make_namespace("deleted", AMBIENT)
    n1 = mesh.nodes[0]
    p = await mesh.start_pod(n1, ns, "short")
    assert f"{ns}/short" in await mesh.captured(n1)
    done = await trio.to_thread.run_sync(lambda: mesh.cni(n1, "del", p))
    assert done.returncode == 0, done.stdout
    assert f"{ns}/short" not in await mesh.captured(n1)
    assert "AMBIT_OUTPUT" not in rules_in(p)
    await mesh.delete_pod(p, run_del=False)


async def test_uninstall_leaves_the_cni_config_exactly_as_it_was(mesh: NodeMesh) -> None:
    n1 = mesh.nodes[0]
    conflist = n1.conf_dir / "10-test.conflist"
    before = json.dumps(n1.conflist(), indent=2).encode()
    installed = json.loads(conflist.read_text())
    assert installed["plugins"][-1]["type"] == "ambit-cni"
    assert (n1.bin_dir / "ambit-cni").exists()
    assert n1.agent is not None
    await n1.agent.stop()  # --uninstall-on-exit
    assert conflist.read_bytes() == before
    assert not (n1.bin_dir / "ambit-cni").exists()
    leftovers = sorted(p.name for p in n1.conf_dir.iterdir())
    assert leftovers == ["10-test.conflist"], leftovers


async def test_the_agent_reports_its_node_on_its_own_pod(mesh: NodeMesh) -> None:
    """What ``ambit check`` reads: the ``ambit.io/node-status`` annotation the agent writes
    on its own pod (through ``pods/status``), naming the plugin's conflist and the pods
    it enrolled."""
    n1 = mesh.nodes[0]
    name = f"ambit-node-agent-{n1.name}"
    await mesh.admin.create(kube_pod(SYSTEM_NS, name, node=n1.name))
    try:
        assert n1.agent is not None
        await n1.agent.stop(signal.SIGKILL)
        await mesh.start_agent(n1, {"POD_NAME": name, "POD_NAMESPACE": SYSTEM_NS})
        ns = await mesh.make_namespace("status", AMBIENT)
        await mesh.start_pod(n1, ns, "app")

        async def reported() -> bool:
            found = await mesh.admin.get("v1", "Pod", name, SYSTEM_NS)
            annotations = found["metadata"].get("annotations") or {}
            doc = json.loads(annotations.get("ambit.io/node-status", "{}"))
            return f"{ns}/app" in doc.get("enrolled", []) and doc["cni"]["installed"] is True

        await until(reported)
        found = await mesh.admin.get("v1", "Pod", name, SYSTEM_NS)
        doc = json.loads(found["metadata"]["annotations"]["ambit.io/node-status"])
        assert doc["cni"]["conflist"].endswith("10-test.conflist")
        assert doc["ztunnel"] == {"connected": True}
        assert doc["failed"] == {}
    finally:
        await mesh.admin.delete("v1", "Pod", name, SYSTEM_NS, grace_period_seconds=0)
