"""What the local cluster reports, read-only: whether it is ready (every pod runs and
listens, every meshed pod captured with its certificate), the snapshot the hooks see,
each object as an API server would serve it (``ambit get -o yaml``), and the views of
pods, nodes and Services. A mixin over :class:`k8s.local.cluster.LocalCluster`'s state
(declared below)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from k8s import manifests
from k8s.local import network
from k8s.local.config import ClusterConfig
from k8s.local.errors import LocalClusterError
from k8s.local.hooks import (
    EndpointView,
    LocalHooks,
    LocalSnapshot,
    MeshState,
    NodeView,
    PodPhase,
    PodRef,
    PodView,
    ServicePortView,
    ServiceView,
)
from k8s.local.plan import Allocation, NodePlan, PodPlan, ServicePlan
from k8s.local.processes import Running
from k8s.status_docs import served_json
from k8s.store import Entry, ObjectStore
from mesh.netns import NetnsError, NetworkNamespace

# A pod counts as running once its command has lived this long (a command that
# fails at once, e.g. not found, is reported instead of a ready cluster).
SETTLE_SECONDS = 0.3


@dataclass
class _Pod:
    plan: PodPlan
    process: Running | None = None
    rules: str | None = None
    hosts: str | None = None
    component: str | None = None  # supervised, restarted under this name when it exits
    uid: str = ""  # the stored Pod's
    cgroup: Path | None = None  # its processes', as a kubelet's: <group>/pod<uid>
    waiting: trio.CancelScope = field(default_factory=trio.CancelScope)  # for its CNI ADD

    @property
    def phase(self) -> PodPhase:
        if self.process is None:
            return "Pending"
        return "Exited" if self.process.exited.is_set() else "Running"


@dataclass
class _Node:
    plan: NodePlan
    ztunnel: Running | None = None
    hosts: str | None = None


class ClusterStatus:
    """Readiness and views over the cluster's state (the attributes below are
    :class:`~k8s.local.cluster.LocalCluster`'s)."""

    config: ClusterConfig
    hooks: LocalHooks
    store: ObjectStore
    _allocation: Allocation
    _pods: dict[PodRef, _Pod]
    _nodes: dict[str, _Node]
    _services: tuple[ServicePlan, ...]
    _mesh: dict[PodRef, MeshState]

    async def wait_ready(self, poll: float = 0.05) -> None:
        """Return when every pod runs and listens on its declared ports and, with a
        ztunnel, every meshed pod is captured and has its certificate. Raises
        :class:`LocalClusterError` at once if a pod's command exits. Unbounded:
        the caller puts a deadline around it."""
        while True:
            pending = await self.not_ready()
            if not pending:
                return
            await trio.sleep(poll)

    async def not_ready(self) -> list[str]:
        # A supervised pod that exited is started again: not ready, but not fatal.
        exited = [p for p in self._pods.values() if p.phase == "Exited" and not p.component]
        if exited:
            raise LocalClusterError(
                "; ".join(
                    f"pod {p.plan.spec.namespace}/{p.plan.spec.name} exited with code"
                    f" {p.process.exit_code if p.process else '?'} (see 'ambit logs -n"
                    f" {p.plan.spec.namespace} pod/{p.plan.spec.name}')"
                    for p in exited
                )
            )
        pending: list[str] = []
        for pod in self._pods.values():
            where = f"pod {pod.plan.spec.namespace}/{pod.plan.spec.name}"
            if pod.phase != "Running" or pod.process is None:
                pending.append(f"{where} is not running")
                continue
            if pod.process.running_for() < SETTLE_SECONDS:
                pending.append(f"{where} started less than {SETTLE_SECONDS}s ago")
                continue
            try:
                with NetworkNamespace.open(pod.plan.netns) as netns:
                    listening = await netns.run(network.listening_tcp_ports)
            except NetnsError as exc:
                pending.append(f"{where}: {exc}")
                continue
            missing = sorted(set(pod.plan.spec.tcp_ports) - listening)
            if missing:
                pending.append(f"{where} does not listen on port(s) {missing} yet")
        pending += self.hooks.runtime_pending()
        if self.hooks.mesh_state is not None:
            await self.refresh_mesh_state()
            for pod in self._pods.values():
                state = self._mesh.get(pod.plan.ref)
                captured = pod.plan.meshed and not pod.plan.native_tunnel
                if captured and not (state and state.ready):
                    pending.append(
                        f"meshed pod {pod.plan.spec.namespace}/{pod.plan.spec.name} is not"
                        " captured by ztunnel or has no certificate yet"
                    )
        return pending

    async def refresh_mesh_state(self) -> None:
        """Ask the mesh again which meshed pods are captured and have their certificate
        (what :meth:`snapshot` shows; labels and pods change after ``ambit up``)."""
        if self.hooks.mesh_state is not None:
            self._mesh = dict(await self.hooks.mesh_state(self.snapshot()))

    def snapshot(self) -> LocalSnapshot:
        return LocalSnapshot(
            config=self.config,
            objects=tuple(self._with_addresses(obj) for obj in self.store.objects()),
            documents=tuple(self._document(e) for e in self.store.entries()),
            pods=tuple(self._pod_view(p) for p in self._pods.values()),
            nodes=tuple(self._node_view(n) for n in self._nodes.values()),
            services=tuple(_service_view(s) for s in self._services),
        )

    def objects_json(
        self, kind: str, namespace: str | None, name: str | None
    ) -> list[dict[str, Any]]:
        """The stored objects of ``kind`` (in ``namespace``, all when None; only ``name``
        when given) as ``kubectl get -o yaml`` shows them, with what the cluster made of
        them: a Pod's IP and phase, a Service's cluster IP."""
        info = manifests.kind_info(kind)
        if info is None:
            raise LocalClusterError(f"unknown kind {kind!r}")
        conditions = self.hooks.object_conditions()
        out = []
        for entry in self.store.entries(info.kind, namespace if info.namespaced else None):
            if name is not None and entry.obj.name != name:
                continue
            doc = self._document(entry)
            kind, ns, name_ = entry.ref
            written = conditions.get(f"{kind}/{ns}/{name_}")
            if isinstance(written, dict) and written.get("uid") == entry.obj.uid:
                doc["status"] = {**doc.get("status", {}), "conditions": written["conditions"]}
            out.append(doc)
        return out

    def _document(self, entry: Entry) -> dict[str, Any]:
        """``entry`` as an API server serves it: a Pod with its IP and phase, a Service
        with its cluster IP."""
        doc = served_json(entry)
        ref = (entry.obj.namespace, entry.obj.name)
        if isinstance(entry.obj, manifests.Pod) and ref in self._pods:
            pod = self._pods[ref]
            exit_code = pod.process.exit_code if pod.process else None
            phase = {"Exited": "Succeeded" if exit_code == 0 else "Failed"}.get(
                pod.phase, pod.phase
            )
            ready = {"type": "Ready", "status": "True" if pod.phase == "Running" else "False"}
            doc["status"] = {
                **doc.get("status", {}), "phase": phase, "podIP": pod.plan.ip, "conditions": [ready]
            }  # fmt: skip
            doc["spec"] = {**doc.get("spec", {}), "nodeName": pod.plan.node}  # as scheduled
        if isinstance(entry.obj, manifests.Service) and ref in self._allocation.service_ips:
            vip = self._allocation.service_ips[ref]
            doc["spec"] = {**doc.get("spec", {}), "clusterIP": vip}
        return doc

    def _with_addresses(self, obj: manifests.K8sObject) -> manifests.K8sObject:
        """Pods and Services as the API server would show them: with their IPs."""
        ref = (obj.namespace, obj.name)
        if isinstance(obj, manifests.Pod) and ref in self._pods:
            return obj.with_ip(self._pods[ref].plan.ip)
        if isinstance(obj, manifests.Service) and ref in self._allocation.service_ips:
            return obj.with_cluster_ip(self._allocation.service_ips[ref])
        return obj

    def _pod_view(self, pod: _Pod) -> PodView:
        plan, process = pod.plan, pod.process
        mesh = self._mesh.get(plan.ref) if self.hooks.mesh_state is not None else None
        return PodView(
            namespace=plan.spec.namespace,
            name=plan.spec.name,
            node=plan.node,
            ip=plan.ip,
            netns=plan.netns,
            identity=plan.identity,
            service_account=plan.spec.service_account,
            meshed=plan.meshed,
            labels=dict(plan.spec.labels),
            phase=pod.phase,
            pid=process.pid if process else None,
            exit_code=process.exit_code if process else None,
            captured=mesh.captured if mesh else None,
            certificate=mesh.certificate if mesh else None,
            capture_error=mesh.reason if mesh else None,
            native_tunnel=plan.native_tunnel,
            component=pod.component,
        )

    def _node_view(self, node: _Node) -> NodeView:
        ztunnel = node.ztunnel
        return NodeView(
            name=node.plan.name,
            ip=node.plan.ip,
            netns=node.plan.netns,
            ztunnel_pid=ztunnel.pid if ztunnel else None,
            ztunnel_exit_code=ztunnel.exit_code if ztunnel else None,
        )


def _service_view(service: ServicePlan) -> ServiceView:
    return ServiceView(
        namespace=service.spec.namespace,
        name=service.spec.name,
        vip=service.vip,
        selector=dict(service.spec.selector or ()),
        ports=tuple(
            ServicePortView(
                port=p.port.port,
                target_port=p.port.target_port,
                protocol=p.port.protocol,
                name=p.port.name,
                endpoints=tuple(EndpointView(e.ip, e.port, e.pod) for e in p.endpoints),
            )
            for p in service.ports
        ),
    )
