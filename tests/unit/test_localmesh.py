"""Local mode as the container runtime, the pure parts: each pod with its network goes
through its node's CNI chain as a kubelet's would (tests/integration/test_local_runtime.py
runs the chain)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from ambit import tables
from k8s.local.config import ClusterConfig
from k8s.local.errors import LocalClusterError
from k8s.local.hooks import LocalSnapshot, MeshState, NodeView, PodView
from k8s.localcni import CniPod, plugin_env, prev_result
from k8s.localmesh import LocalMesh, cni_pods, default_hooks, node_dir
from node.cni_plugin import pod_ips, pod_of

CONFIG = ClusterConfig(
    Path("/nonexistent"), "1a2b",
    ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.96.0.0/16"),
)  # fmt: skip


async def until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` is true, checked every 10 ms."""
    for _ in range(1000):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition never became true")


def view(name: str, node: str = "node-1") -> PodView:
    return PodView(
        namespace="shop", name=name, node=node, ip="10.244.0.20", netns=f"amb-1a2b-shop-{name}",
        identity="spiffe://cluster.local/ns/shop/sa/default", service_account="default",
        meshed=False, labels={}, phase="Running",
    )  # fmt: skip


def pod_document(name: str, uid: str) -> Mapping[str, Any]:
    return {"kind": "Pod", "metadata": {"namespace": "shop", "name": name, "uid": uid}}


def test_every_pod_with_a_uid_goes_through_its_nodes_chain_with_its_netns_path() -> None:
    snapshot = LocalSnapshot(
        CONFIG, (), (view("web"), view("db", "node-2"), view("new")), (), (),
        documents=(pod_document("web", "u-web"), pod_document("db", "u-db")),
    )  # fmt: skip
    assert cni_pods(snapshot) == [
        CniPod("node-1", "shop", "web", "u-web", "/run/netns/amb-1a2b-shop-web", "10.244.0.20", 16),
        CniPod("node-2", "shop", "db", "u-db", "/run/netns/amb-1a2b-shop-db", "10.244.0.20", 16),
    ]


def test_the_runtime_passes_the_plugin_what_a_kubelet_passes() -> None:
    """The plugin reads the pod from CNI_ARGS and its address from prevResult, as on a
    node: the runtime's environment and prevResult parse to the same pod."""
    pod = CniPod("node-1", "shop", "web", "u-web", "/run/netns/x", "10.244.0.20", 16)
    env = plugin_env("ADD", pod, Path("/opt/cni/bin"))
    parsed = pod_of(env)
    assert parsed is not None
    assert (parsed.namespace, parsed.name, parsed.uid) == ("shop", "web", "u-web")
    assert env["CNI_NETNS"] == "/run/netns/x"
    assert env["CNI_CONTAINERID"] == "shop_web_u-web"
    assert pod_ips(prev_result(pod, "1.1.0")) == ["10.244.0.20"]


def test_each_node_runs_an_agent_that_puts_ambit_cni_in_the_nodes_chain(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, state_dir=tmp_path)
    mesh = LocalMesh()
    mesh._config = config  # what on_cluster_started sets
    node = NodeView("node-1", "10.244.0.2", "amb-1a2b-node-1")
    ztunnel = list(mesh.ztunnel_command(node, config) or ())
    agent = list(mesh.node_agent_command(node, config))
    node_dir = tmp_path / "nodes" / "node-1"
    assert ztunnel[ztunnel.index("--pods-socket") + 1] == str(node_dir / "ztunnel.sock")
    assert "--pods-file" not in ztunnel
    assert agent[agent.index("--socket-dir") + 1] == str(node_dir)
    assert agent[agent.index("--source") + 1 :][:3] == [
        "files",
        "-f",
        str(tmp_path / "mesh/objects"),
    ]
    assert "--no-cni-install" not in agent
    assert agent[agent.index("--kubeconfig") + 1] == str(tmp_path / "mesh/localapi/kubeconfig")
    assert agent[agent.index("--cni-conf-dir") + 1] == str(node_dir / "net.d")
    assert agent[agent.index("--cni-bin-dir") + 1] == str(node_dir / "bin")
    # The node's network config before the agent: local mode's own plugin, alone.
    (conflist,) = (node_dir / "net.d").iterdir()
    assert [p["type"] for p in json.loads(conflist.read_text())["plugins"]] == ["ambit-local"]
    assert agent[agent.index("--listen-ip") + 1] == "10.244.0.2"
    assert default_hooks().pod_added is not None


def test_get_pods_shows_why_the_node_agent_could_not_capture_a_pod() -> None:
    failed = {**dataclasses.asdict(view("web")), "meshed": True, "captured": False,
              "capture_error": "capture rules could not be installed: exit status 1"}  # fmt: skip
    table = tables.pods_table([failed], all_namespaces=False)
    assert "no (capture rules could not be installed: exit status 1)" in table
    captured = {**failed, "captured": True, "capture_error": None}
    assert tables.pods_table([captured], all_namespaces=False).split()[-1] == "yes"


async def test_mesh_state_takes_the_agents_reason_until_ztunnel_captures_the_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = "capture rules could not be installed: iptables-restore: exit status 1"
    answers: dict[str, dict[str, Any]] = {
        "/status": {"enrolled": [], "failed": {"shop/web": reason}},
        "/config_dump": {"pods": []},
    }

    async def get_json(netns: str, host: str, port: int, path: str) -> dict[str, Any]:
        return answers[path]

    monkeypatch.setattr("k8s.localmesh.get_json", get_json)
    meshed = dataclasses.replace(view("web"), meshed=True)
    snapshot = LocalSnapshot(CONFIG, (), (meshed,), (NodeView("node-1", "10.244.0.2", "n"),), ())
    state = await LocalMesh().mesh_state(snapshot)
    assert state[("shop", "web")] == MeshState(False, False, reason=reason)
    answers["/status"] = {"enrolled": ["shop/web"], "failed": {}}
    answers["/config_dump"] = {
        "pods": [{"uid": "shop/web", "captured": True, "certificate_expires": "soon"}]
    }
    assert (await LocalMesh().mesh_state(snapshot))[("shop", "web")] == MeshState(True, True)


def test_a_state_directory_too_long_for_the_nodes_sockets_is_refused_saying_so() -> None:
    assert node_dir(Path("/run/ambit"), "node-1") == Path("/run/ambit/nodes/node-1")
    with pytest.raises(LocalClusterError, match="use a shorter --state-dir"):
        node_dir(Path("/tmp/" + "x" * 80), "node-1")


async def test_get_pods_says_why_a_pending_pods_cni_add_has_not_succeeded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def get_json(netns: str, host: str, port: int, path: str) -> dict[str, Any]:
        return {}

    monkeypatch.setattr("k8s.localmesh.get_json", get_json)
    mesh = LocalMesh()
    pending = CniPod("node-1", "shop", "web", "u-web", "/run/netns/x", "10.244.0.20", 16)
    mesh._runtime.pods[("shop", "web")] = (pending, trio.CancelScope())
    why = "ambit-cni ADD failed: the node agent is down (code 11)"
    mesh._runtime.last_error[pending] = why
    meshed = dataclasses.replace(view("web"), meshed=True, phase="Pending")
    snapshot = LocalSnapshot(CONFIG, (), (meshed,), (NodeView("node-1", "10.244.0.2", "n"),), ())
    state = (await mesh.mesh_state(snapshot))[("shop", "web")]
    assert not state.captured
    assert (
        state.reason == "its CNI ADD failed: ambit-cni ADD failed: the node agent is down (code 11)"
    )
