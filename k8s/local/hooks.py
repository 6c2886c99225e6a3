"""Where the control plane and ztunnel plug into the local cluster.

The daemon builds a :class:`LocalSnapshot` (every object from the manifests
plus what the cluster made of them: pod IPs, nodes, namespaces, service VIPs)
and calls the hooks of :class:`LocalHooks`:

* ``on_cluster_started(nursery, config)``: awaited once, after the bridge
  exists and before any node or pod; start long-lived servers (control plane,
  CA) in ``nursery`` and return once they listen (``await nursery.start``).
  They are cancelled when the cluster goes down.
* ``on_objects_changed(snapshot)``: called after every change (start, apply,
  delete, a pod exiting), in the daemon's Trio thread; must not block.
* ``ztunnel_command(node, config)``: the command line of the ztunnel of
  ``node``, run inside the node's namespace with its output in
  ``logs/ztunnel/<node>.log``; None runs no ztunnel.
* ``node_agent_command(node, config)``: the command line of the node agent of
  ``node``, run inside the node's namespace beside its ztunnel (output in
  ``logs/node-agent/<node>.log``) and started again when it exits; None runs none.
* ``controlplane_command(config)``: the command line of the control plane, run in
  the host's namespace after ``on_cluster_started`` (output in
  ``logs/controlplane.log``) and started again when it exits; None runs none.
* ``object_conditions()``: each object's conditions as the control plane last wrote
  them (``{"Kind/namespace/name": {"uid": ..., "conditions": [...]}}``), shown by
  ``ambit get -o yaml``.
* ``derive_objects(objects, config)``: what controllers make of the objects applied
  (the waypoint deployer: a waypoint Gateway's ServiceAccount, Service and Pod), each a
  :class:`~k8s.manifests.Document` with its object or its error. Called on every apply
  and delete with the objects users applied; what it returns is stored beside them (not
  printed by ``ambit apply``), and what it no longer returns is removed.
* ``pod_component(pod)``: for a pod the mesh runs as a supervised component (restarted
  when it exits, with the cluster's backoff, as ``restartPolicy: Always``), its
  component name and the seconds between SIGTERM and SIGKILL; None for other pods, whose
  exit is reported, not restarted.
* ``runtime_pending()``: what the runtime's part still waits for, one line each (a
  pod's CNI ADD that has not succeeded, and why); ``ambit up`` waits until it is empty.
* ``pod_added(uid, ip)``: awaited after a pod's network namespace, address and rules exist;
  returns once the pod's CNI ``ADD`` succeeded, and only then does the pod's process
  start (a kubelet starts containers after the sandbox's network is set up). Until
  then the pod is Pending. None starts pods at once.
* ``mesh_state(snapshot)``: for meshed pods, whether each is captured and has
  its certificate. When set, ``ambit up`` waits until every meshed pod is both,
  and ``ambit get`` shows it. When None (no ztunnel yet), meshing is not
  waited for and capture shows as unknown.

The defaults do nothing, which is local mode without a mesh;
:func:`k8s.localmesh.default_hooks` wires the mesh in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio

from k8s.local.config import ClusterConfig
from k8s.manifests import Document, K8sObject, Pod

PodRef = tuple[str, str]  # (namespace, name)
PodPhase = Literal["Pending", "Running", "Exited"]


@dataclass(frozen=True)
class PodView:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str
    identity: str
    service_account: str
    meshed: bool
    labels: Mapping[str, str]
    phase: PodPhase
    pid: int | None = None
    exit_code: int | None = None
    captured: bool | None = None
    certificate: bool | None = None
    capture_error: str | None = None  # why the node agent could not capture it
    native_tunnel: bool = False  # a waypoint's pod: in the mesh, never captured
    component: str | None = None  # supervised and restarted under this name

    @property
    def ref(self) -> PodRef:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class NodeView:
    name: str
    ip: str
    netns: str
    ztunnel_pid: int | None = None
    ztunnel_exit_code: int | None = None


@dataclass(frozen=True)
class EndpointView:
    ip: str
    port: int
    pod: str


@dataclass(frozen=True)
class ServicePortView:
    port: int
    target_port: int | str
    protocol: str
    name: str
    endpoints: tuple[EndpointView, ...]


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    vip: str
    selector: Mapping[str, str]
    ports: tuple[ServicePortView, ...]


@dataclass(frozen=True)
class LocalSnapshot:
    """The cluster as it is now. ``objects`` are :mod:`k8s.manifests` objects, Pods and
    Services with their ``pod_ip`` / ``cluster_ip`` filled in as an API server would."""

    config: ClusterConfig
    objects: tuple[K8sObject, ...]
    pods: tuple[PodView, ...]
    nodes: tuple[NodeView, ...]
    services: tuple[ServiceView, ...]
    # Every object as an API server would serve it (``kubectl get -o json``): server
    # metadata, a Pod's IP and phase, a Service's cluster IP. What the control plane reads.
    documents: tuple[Mapping[str, Any], ...] = ()

    def pod(self, namespace: str, name: str) -> PodView | None:
        return next((p for p in self.pods if p.ref == (namespace, name)), None)


@dataclass(frozen=True)
class MeshState:
    captured: bool
    certificate: bool
    reason: str | None = None  # why it is not captured (the node agent's last failure)

    @property
    def ready(self) -> bool:
        return self.captured and self.certificate


def _nothing_changed(snapshot: LocalSnapshot) -> None:
    return None


def _no_ztunnel(node: NodeView, config: ClusterConfig) -> Sequence[str] | None:
    return None


def _no_controlplane(config: ClusterConfig) -> Sequence[str] | None:
    return None


def _no_conditions() -> Mapping[str, Any]:
    return {}


def _no_controllers(objects: Sequence[K8sObject], config: ClusterConfig) -> Sequence[Document]:
    return ()


def _no_components(pod: Pod) -> tuple[str, float] | None:
    return None


def _nothing_pending() -> Sequence[str]:
    return ()


PodAdded = Callable[[str, str], Awaitable[None]]  # (the pod's uid, its IP)


@dataclass(frozen=True)
class LocalHooks:
    on_cluster_started: Callable[[trio.Nursery, ClusterConfig], Awaitable[None]] | None = None
    on_objects_changed: Callable[[LocalSnapshot], None] = _nothing_changed
    ztunnel_command: Callable[[NodeView, ClusterConfig], Sequence[str] | None] = _no_ztunnel
    node_agent_command: Callable[[NodeView, ClusterConfig], Sequence[str] | None] = _no_ztunnel
    mesh_state: Callable[[LocalSnapshot], Awaitable[Mapping[PodRef, MeshState]]] | None = None
    controlplane_command: Callable[[ClusterConfig], Sequence[str] | None] = _no_controlplane
    ztunnel_stop_grace: float = 2.0  # SIGTERM to SIGKILL: above the ztunnel's own drain
    object_conditions: Callable[[], Mapping[str, Any]] = _no_conditions
    derive_objects: Callable[[Sequence[K8sObject], ClusterConfig], Sequence[Document]] = (
        _no_controllers
    )
    pod_component: Callable[[Pod], tuple[str, float] | None] = _no_components
    runtime_pending: Callable[[], Sequence[str]] = _nothing_pending
    # Returns once the pod's CNI ADD succeeded: its process starts only then (None: at once).
    pod_added: PodAdded | None = None
