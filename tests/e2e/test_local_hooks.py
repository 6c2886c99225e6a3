"""The daemon's integration hooks, with the daemon run in-process: the control plane
sees every change, a ztunnel runs in each node's namespace, and meshed pods hold
``ambit up`` back until the mesh says they are captured and certified."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import trio

from k8s import manifests
from k8s.local import api
from k8s.local.config import ClusterConfig, new_cluster_id
from k8s.local.daemon import run_daemon
from k8s.local.hooks import LocalHooks, LocalSnapshot, MeshState, NodeView, PodRef
from k8s.local.state import is_alive, read_state
from mesh.netns import NetworkNamespace, netns_path
from tests.e2e.conftest import free_octet

pytestmark = pytest.mark.root

MESHED = """\
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels: {ambit.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: mesh, labels: {app: app}}
spec:
  serviceAccountName: app-sa
  containers: [{name: app, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: outside
  namespace: mesh
  labels: {ambit.io/dataplane-mode: none}
spec:
  containers: [{name: c, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: mesh}
spec:
  selector: {app: app}
  ports: [{port: 80, targetPort: 8080}]
"""


async def _wait_phase(config: ClusterConfig, phase: str) -> None:
    with trio.fail_after(15):
        while True:
            record = read_state(config.state_file)
            if record is not None and record.phase == phase:
                return
            await trio.sleep(0.02)


async def test_hooks_see_changes_start_ztunnels_and_gate_readiness(tmp_path: Path) -> None:
    octet = free_octet()
    config = ClusterConfig(
        tmp_path / "state", new_cluster_id(),
        ipaddress.IPv4Network(f"10.{octet}.0.0/17"), ipaddress.IPv4Network(f"10.{octet}.128.0/17"),
    )  # fmt: skip
    manifest = tmp_path / "mesh.yaml"
    manifest.write_text(MESHED)
    snapshots: list[LocalSnapshot] = []
    started: list[str] = []
    mesh_ready = trio.Event()

    async def on_cluster_started(nursery: trio.Nursery, cfg: ClusterConfig) -> None:
        started.append(str(cfg.host_ip))

    def ztunnel_command(node: NodeView, cfg: ClusterConfig) -> Sequence[str]:
        return ["sleep", "600"]

    async def mesh_state(snapshot: LocalSnapshot) -> Mapping[PodRef, MeshState]:
        ready = mesh_ready.is_set()
        return {
            p.ref: MeshState(captured=ready, certificate=ready) for p in snapshot.pods if p.meshed
        }

    hooks = LocalHooks(
        on_cluster_started=on_cluster_started,
        on_objects_changed=snapshots.append,
        ztunnel_command=ztunnel_command,
        mesh_state=mesh_state,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_daemon, config, [str(manifest)], hooks, 20.0)
        await _wait_phase(config, "starting")
        with trio.move_on_after(0.8):  # the meshed pod is not captured yet: not ready
            await _wait_phase(config, "ready")
        record = read_state(config.state_file)
        assert record is not None
        assert record.phase == "starting"
        mesh_ready.set()
        await _wait_phase(config, "ready")

        assert started == [str(config.host_ip)]
        last = snapshots[-1]
        pods = {p.name: p for p in last.pods}
        assert pods["app"].meshed
        assert not pods["outside"].meshed
        assert pods["app"].identity == "spiffe://cluster.local/ns/mesh/sa/app-sa"
        # The control plane gets typed objects with the addresses an API server would show.
        (pod_object,) = [
            o for o in last.objects if isinstance(o, manifests.Pod) and o.name == "app"
        ]
        assert pod_object.pod_ip == pods["app"].ip
        (service_object,) = [o for o in last.objects if isinstance(o, manifests.Service)]
        assert service_object.cluster_ip == last.services[0].vip

        got = await api.call(config.socket_path, {"op": "get"})
        nodes = {n["name"]: n for n in got["nodes"]}
        assert set(nodes) == {"node-1", "node-2"}
        for node in nodes.values():
            assert node["ztunnel_pid"] is not None
            assert node["ztunnel_exit_code"] is None
            ztunnel_netns = NetworkNamespace.open(f"/proc/{node['ztunnel_pid']}/ns/net")
            with ztunnel_netns, NetworkNamespace.open(node["netns"]) as node_netns:
                assert ztunnel_netns.key == node_netns.key
        assert {p["name"]: p["captured"] for p in got["pods"]} == {"app": True, "outside": None}

        changes = len(snapshots)
        await api.call(config.socket_path, {"op": "delete", "paths": [str(manifest)]})
        assert len(snapshots) > changes
        assert snapshots[-1].pods == ()

        record = read_state(config.state_file)
        assert record is not None
        await api.call(config.socket_path, {"op": "down"})
    assert not config.state_dir.exists()
    assert not [p for p in record.processes if is_alive(p)]
    assert not [n for n in record.netns if netns_path(n).exists()]
