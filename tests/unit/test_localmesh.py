"""Local mode as the container runtime, the pure parts and the socket: each pod with its
network goes to its node's agent as the CNI plugin's ADD would, and DEL when it goes."""

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
from k8s.localcni import CniPod, CniRuntime, cni_request
from k8s.localmesh import LocalMesh, cni_pods, default_hooks, node_dir
from node.cni_plugin import Pod, agent_request
from node.cni_server import serve_cni

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


def test_every_pod_with_a_uid_goes_to_its_node_agent_with_its_netns_path() -> None:
    snapshot = LocalSnapshot(
        CONFIG, (), (view("web"), view("db", "node-2"), view("new")), (), (),
        documents=(pod_document("web", "u-web"), pod_document("db", "u-db")),
    )  # fmt: skip
    assert cni_pods(snapshot) == [
        CniPod("node-1", "shop", "web", "u-web", "/run/netns/amb-1a2b-shop-web", "10.244.0.20"),
        CniPod("node-2", "shop", "db", "u-db", "/run/netns/amb-1a2b-shop-db", "10.244.0.20"),
    ]


def test_the_runtime_sends_what_the_plugin_sends() -> None:
    pod = CniPod("node-1", "shop", "web", "u-web", "/run/netns/x", "10.244.0.20")
    env = {"CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
    plugin = agent_request("ADD", env, Pod("shop", "web", "u-web"), ["10.244.0.20"])
    ours = cni_request("ADD", pod)
    assert ours.keys() == plugin.keys()
    assert {**ours, "containerId": "c"} == plugin


def test_each_node_runs_an_agent_beside_its_ztunnel_which_takes_pods_from_it(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(CONFIG, state_dir=tmp_path)
    mesh = LocalMesh()
    mesh._config = config  # what on_cluster_started sets
    node = NodeView("node-1", "10.244.0.2", "amb-1a2b-node-1")
    ztunnel = list(mesh.ztunnel_command(node, config) or ())
    agent = list(mesh.node_agent_command(node, config))
    sockets = tmp_path / "nodes" / "node-1"
    assert ztunnel[ztunnel.index("--pods-socket") + 1] == str(sockets / "ztunnel.sock")
    assert "--pods-file" not in ztunnel
    assert agent[agent.index("--socket-dir") + 1] == str(sockets)
    assert agent[agent.index("--source") + 1 :][:3] == [
        "files",
        "-f",
        str(tmp_path / "mesh/objects"),
    ]
    assert "--no-cni-install" in agent
    assert agent[agent.index("--listen-ip") + 1] == "10.244.0.2"
    assert default_hooks().node_agent_command is not None


async def test_add_is_retried_until_the_agent_answers_and_del_follows_the_pod(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, str]] = []
    answers = iter([{"error": "ztunnel did not take the pod"}, {"result": "enrolled"}])

    async def add(request: Mapping[str, Any]) -> dict[str, Any]:
        seen.append(("ADD", request["pod"]["name"]))
        return next(answers)

    async def delete(request: Mapping[str, Any]) -> dict[str, Any]:
        seen.append(("DEL", request["pod"]["name"]))
        return {"result": "released"}

    sock = tmp_path / "cni.sock"
    runtime = CniRuntime(lambda node: sock)
    pod = CniPod("node-1", "shop", "web", "u-web", "/run/netns/x", "10.244.0.20")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime.update(nursery, [pod])  # the agent is not listening yet: retried
            await trio.sleep(0.3)
            await nursery.start(serve_cni, sock, {"ADD": add, "DEL": delete})
            assert runtime.pending() == [
                "pod shop/web: its node agent has not answered its CNI ADD yet"
            ]  # what 'ambit up' waits for
            await until(lambda: seen.count(("ADD", "web")) >= 2)
            await until(lambda: not runtime.pending())
            runtime.update(nursery, [])
            await until(lambda: ("DEL", "web") in seen)
            nursery.cancel_scope.cancel()
    assert seen == [("ADD", "web"), ("ADD", "web"), ("DEL", "web")]
    assert json.dumps(cni_request("DEL", pod))  # plain JSON


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
