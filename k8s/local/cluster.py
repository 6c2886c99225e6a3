"""The running local cluster: makes the system match the plan, one change at a time.

:class:`LocalCluster` holds the applied objects, turns them into a plan
(:mod:`k8s.local.plan`) and creates or removes nodes, pods, service rules and
hosts files until the machine matches; changes are serialised by one lock.
It tells the hooks (:mod:`k8s.local.hooks`) after every change and decides
when the cluster is ready. Objects the hooks' controllers derive (a waypoint Gateway's
ServiceAccount, Service and Pod: :mod:`k8s.local.controllers`) are stored with each
change, and the pods the hooks name components (a waypoint's) are supervised like the
control plane and the ztunnels: restarted when they exit.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from k8s import manifests
from k8s.local import network
from k8s.local.components import STABLE_SECONDS, _Component, _name
from k8s.local.config import ClusterConfig
from k8s.local.controllers import derive, with_derived
from k8s.local.errors import LocalClusterError
from k8s.local.handover import hand_over
from k8s.local.hooks import LocalHooks, MeshState, PodAdded, PodRef
from k8s.local.objects import ApplyResult
from k8s.local.plan import (
    Allocation,
    NodePlan,
    PodPlan,
    ServicePlan,
    admit,
    must_recreate,
    plan_cluster,
    render_hosts,
    render_service_jumps,
    render_service_rules,
)
from k8s.local.processes import POD_PATH, Running, Supervisor
from k8s.local.state import StateFile
from k8s.local.status import ClusterStatus, _Node, _Pod
from k8s.manifests import Document
from k8s.store import ObjectRef, ObjectStore, describe, ref_of
from mesh import cgroups

log = structlog.get_logger("ambit.local.cluster")

AGENT = "node-agent/"  # a node's agent is the component node-agent/NODE
RESOLV_CONF = (
    "# ambit local mode: names come from /etc/hosts, there is no DNS\noptions attempts:1\n"
)


class LocalCluster(ClusterStatus):
    def __init__(
        self, config: ClusterConfig, state: StateFile, hooks: LocalHooks, nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.state = state
        self.hooks = hooks
        self._nursery = nursery
        self._lock = trio.Lock()
        self.store = ObjectStore()
        self._allocation = Allocation()
        self._pods: dict[PodRef, _Pod] = {}
        self._nodes: dict[str, _Node] = {}
        self._services: tuple[ServicePlan, ...] = ()
        self._mesh: dict[PodRef, MeshState] = {}
        self._exits = trio.Event()
        self._down = False
        self.supervisor = Supervisor(nursery, state, self._process_exited)
        self.controlplane: Running | None = None
        self._components: dict[str, _Component] = {}
        self._component_pods: dict[str, PodRef] = {}  # supervised pods by component name
        self._derived: set[ObjectRef] = set()  # stored objects the controllers made

    async def start(self) -> None:
        """Create the bridge, run the start hook, then follow pod exits in the background."""
        await network.create_bridge(self.config, self.state)
        if self.hooks.on_cluster_started is not None:
            await self.hooks.on_cluster_started(self._nursery, self.config)
        await self._start_controlplane()
        self._nursery.start_soon(self._follow_exits)

    async def _start_controlplane(self, *, planned: bool = False) -> None:
        argv = self.hooks.controlplane_command(self.config)
        if argv:
            self.controlplane = await self._supervise(
                "controlplane", None, argv, self.config.controlplane_log, planned=planned
            )

    async def _supervise(
        self,
        name: str,
        netns: str | None,
        argv: Sequence[str],
        log_path: Path,
        *,
        stop_grace: float = 2.0,
        planned: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Running:
        """Start component ``name`` (again), keeping its restart count (a ``planned``
        restart, asked for by the operator, is not counted as one)."""
        component = self._components.setdefault(name, _Component(name))
        previous = component.running
        if previous is not None and not planned:
            component.restarts += 1
            ran = (previous.exited_at or 0.0) - previous.started_at
            component.crashes = component.crashes + 1 if ran < STABLE_SECONDS else 0
            log.warning(
                "component_restarting", component=name, exit_code=previous.exit_code,
                restarts=component.restarts,
            )  # fmt: skip
        component.running = await self.supervisor.start(
            name, netns, argv, dict(os.environ if env is None else env), log_path,
            stop_grace=stop_grace,
        )  # fmt: skip
        return component.running

    async def restart(self, name: str, *, ready_timeout: float = 60.0) -> dict[str, Any]:
        """Restart component ``name``: ``ztunnel/NODE`` by a hand-over (the new one listens
        beside the old, with SO_REUSEPORT, until ready; then the old drains: no connection
        refused, none that ends in time lost); the control plane, an agent or a supervised
        pod (``waypoint/NS/NAME``) by stop and start (the proxies keep their config)."""
        async with self._lock:
            self._refuse_if_down()
            component = self._components.get(name)
            if component is None or component.running is None:
                known = ", ".join(sorted(self._components)) or "none"
                raise LocalClusterError(f"no component {name!r}; components: {known}")
            old = component.running
            started = trio.current_time()
            if name == "controlplane":
                await self.supervisor.stop(name)
                await self._start_controlplane(planned=True)
                new = self.controlplane
            elif name.startswith(AGENT):
                await self.supervisor.stop(name)
                new = await self._start_node_agent(self._nodes[name[len(AGENT) :]], planned=True)
            elif name in self._component_pods:
                new = await self._hand_over_pod(name, ready_timeout)
            else:
                node = self._nodes[name.removeprefix("ztunnel/")]
                new = await self._hand_over(node, ready_timeout)
            assert new is not None
            self._components[name].replaced()
            log.info("component_restarted", component=name, old_pid=old.pid, new_pid=new.pid)
            return {
                "name": name, "old_pid": old.pid, "new_pid": new.pid,
                "seconds": round(trio.current_time() - started, 2),
            }  # fmt: skip

    async def _hand_over(self, node: _Node, ready_timeout: float) -> Running:
        name = f"ztunnel/{node.plan.name}"

        async def start() -> Running:
            await self._start_ztunnel(node, planned=True)
            assert node.ztunnel is not None
            return node.ztunnel

        def keep_old(old: Running) -> None:
            self._components[name].running = node.ztunnel = old

        return await hand_over(
            self.supervisor, name, start, self.config.ztunnel_ready_file(node.plan.name),
            ready_timeout=ready_timeout, keep_old=keep_old,
        )  # fmt: skip

    async def _hand_over_pod(self, name: str, ready_timeout: float) -> Running:
        pod = self._pods[self._component_pods[name]]

        async def start() -> Running:
            await self._start_pod_process(pod, planned=True)
            assert pod.process is not None
            return pod.process

        def keep_old(old: Running) -> None:
            self._components[name].running = pod.process = old

        return await hand_over(
            self.supervisor, name, start, self.config.component_ready_file(name),
            ready_timeout=ready_timeout, keep_old=keep_old,
        )  # fmt: skip

    def components(self) -> list[dict[str, Any]]:
        """Each supervised component: name, pid, status, restarts, age (seconds)."""
        return [c.row(down=self._down) for c in sorted(self._components.values(), key=_name)]

    async def apply(self, documents: Iterable[Document]) -> ApplyResult:
        """Create or update the objects of ``documents``, each on its own: a document with
        an error, or an object local mode refuses, is reported and the others still apply.
        One line per object, like ``kubectl apply``."""
        async with self._lock:
            self._refuse_if_down()
            result = ApplyResult()
            candidate = {ref_of(e.obj): e.obj for e in self.store.entries()}
            accepted: list[Document] = []
            for doc in documents:
                if doc.obj is None:
                    result.refused(doc)
                    continue
                problem = admit(self.config, self._allocation, doc.obj, candidate)
                if problem is not None:
                    result.errors.append(problem)
                    continue
                candidate[ref_of(doc.obj)] = doc.obj
                accepted.append(doc)
            derived = derive(self.hooks, self.config, candidate, self._derived)
            with_derived(candidate, derived, self._derived)
            result.errors += derived.errors_of([ref_of(d.obj) for d in accepted if d.obj])

            def commit() -> None:
                for doc in accepted:
                    assert doc.obj is not None
                    verb = self.store.put(doc.obj, document=doc.raw)
                    result.changes.append(f"{describe(ref_of(doc.obj))} {verb}")
                self._store_derived()
                self._listed()

            await self._converge(list(candidate.values()), commit)
            return result

    async def delete(self, documents: Iterable[Document]) -> ApplyResult:
        """Remove objects (a Namespace takes its objects with it)."""
        async with self._lock:
            self._refuse_if_down()
            result = ApplyResult()
            candidate = {ref_of(e.obj): e.obj for e in self.store.entries()}
            gone: list[ObjectRef] = []
            for doc in documents:
                if doc.obj is None:
                    result.refused(doc)
                    continue
                ref = ref_of(doc.obj)
                if candidate.pop(ref, None) is None:
                    result.errors.append(f"{describe(ref)} not found")
                    continue
                gone.append(ref)
                if ref[0] == "Namespace":
                    for other in [r for r in candidate if r[1] == ref[2]]:
                        del candidate[other]
                        gone.append(other)
            with_derived(candidate, derive(self.hooks, self.config, candidate, self._derived),
                         self._derived)  # fmt: skip

            def commit() -> None:
                for ref in gone:
                    if self.store.delete(ref) is not None:
                        result.changes.append(f"{describe(ref)} deleted")
                self._store_derived()

            await self._converge(list(candidate.values()), commit)
            return result

    def _store_derived(self) -> None:
        """Store what the controllers make of the stored objects (derived again now that
        the users' objects have their uids, which the owner references name), and remove
        what they no longer make. Not reported: ``kubectl apply`` prints only what it
        was given."""
        stored = {ref_of(e.obj): e.obj for e in self.store.entries()}
        derived = derive(self.hooks, self.config, stored, self._derived)
        for ref in self._derived - derived.documents.keys():
            self.store.delete(ref)
        for doc in derived.documents.values():
            assert doc.obj is not None
            self.store.put(doc.obj, document=doc.raw)
        self._derived = set(derived.documents)

    def _listed(self) -> None:
        """Local mode is one source that knows every object at once: after the first
        apply, every kind is listed (the control plane may publish)."""
        for kind in self.store.unlisted():
            self.store.mark_listed(kind)

    async def teardown(self) -> None:
        """Stop every process and remove every pod and node (the bridge and host rule
        go with the rest of the record, in :func:`k8s.local.daemon.remove_recorded`)."""
        async with self._lock:
            self._down = True
            await self.supervisor.stop_all()
            plans = [p.plan for p in self._pods.values()] + [n.plan for n in self._nodes.values()]
            for plan in plans:
                try:
                    await network.delete_endpoint(self.state, plan.netns, plan.veth)
                except LocalClusterError as exc:  # still recorded: removed from the record next
                    log.warning("endpoint_removal_failed", netns=plan.netns, reason=str(exc))
            self._pods.clear()
            self._nodes.clear()

    def _refuse_if_down(self) -> None:
        if self._down:
            raise LocalClusterError("the cluster is shutting down; start a new one with 'ambit up'")

    async def _converge(
        self, objects: list[manifests.K8sObject], commit: Callable[[], None] = lambda: None
    ) -> None:
        """Plan ``objects`` (which may refuse them all: then nothing changes), ``commit``
        them to the store, and make the machine match."""
        plan = plan_cluster(self.config, objects, self._allocation)  # may refuse
        wanted = {p.ref: p for p in plan.pods}
        changed = {
            r for r, pod in self._pods.items() if r in wanted and must_recreate(pod.plan, wanted[r])
        }
        if changed:  # recreated pods get new addresses, so no peer keeps a stale ARP entry
            ips = {r: ip for r, ip in plan.allocation.pod_ips.items() if r not in changed}
            fresh = dataclasses.replace(plan.allocation, pod_ips=ips)
            plan = plan_cluster(self.config, objects, fresh)
            wanted = {p.ref: p for p in plan.pods}
        commit()
        self._allocation = plan.allocation
        for node_plan in plan.nodes:
            if node_plan.name not in self._nodes:
                await self._create_node(node_plan)
        for ref, pod in list(self._pods.items()):
            new = wanted.get(ref)
            if new is None or must_recreate(pod.plan, new):
                await self._remove_pod(ref)
            else:
                pod.plan = new
        for ref, pod_plan in wanted.items():
            if ref not in self._pods:
                await self._create_pod(pod_plan)
        await self._refresh()

    async def _create_node(self, plan: NodePlan) -> None:
        log.info("node_creating", node=plan.name, ip=plan.ip, netns=plan.netns)
        node = self._nodes[plan.name] = _Node(plan)
        await network.create_endpoint(self.config, self.state, plan.netns, plan.veth, plan.ip)
        network.write_netns_file(self.state, plan.netns, "resolv.conf", RESOLV_CONF)
        await self._start_ztunnel(node)
        await self._start_node_agent(node)

    async def _restart_due(self) -> None:
        """A component whose backoff is over is started again: a node's ztunnel (as its
        DaemonSet would), the control plane (as its Deployment would)."""
        now = trio.current_time()
        for component in list(self._components.values()):
            due = component.restart_due()
            if due is None or due > now:
                continue
            if component.name == "controlplane":
                await self._start_controlplane()
            elif component.name in self._component_pods:
                pod = self._pods.get(self._component_pods[component.name])
                if pod is not None:
                    await self._start_pod_process(pod)
            elif component.name.startswith(AGENT):
                if (node := self._nodes.get(component.name[len(AGENT) :])) is not None:
                    await self._start_node_agent(node)
            else:
                node = self._nodes.get(component.name.removeprefix("ztunnel/"))
                if node is not None:
                    await self._start_ztunnel(node)

    async def _start_ztunnel(self, node: _Node, *, planned: bool = False) -> None:
        argv = self.hooks.ztunnel_command(self._node_view(node), self.config)
        if argv:
            node.ztunnel = await self._supervise(
                f"ztunnel/{node.plan.name}",
                node.plan.netns,
                argv,
                self.config.ztunnel_log(node.plan.name),
                stop_grace=self.hooks.ztunnel_stop_grace,
                planned=planned,
            )

    async def _start_node_agent(self, node: _Node, *, planned: bool = False) -> Running | None:
        """The node's agent, in the node's namespace beside its ztunnel (a DaemonSet's pod
        with the node's network)."""
        argv = self.hooks.node_agent_command(self._node_view(node), self.config)
        if not argv:
            return None
        return await self._supervise(
            AGENT + node.plan.name, node.plan.netns, argv,
            self.config.node_agent_log(node.plan.name), planned=planned,
        )  # fmt: skip

    async def _create_pod(self, plan: PodPlan) -> None:
        spec = plan.spec
        log.info(
            "pod_creating", namespace=spec.namespace, pod=spec.name, node=plan.node, ip=plan.ip
        )
        stored = self.store.get(ref_of(spec))  # committed before the pods are made
        pod = self._pods[plan.ref] = _Pod(plan, uid=stored.obj.uid if stored else "")
        await network.create_endpoint(self.config, self.state, plan.netns, plan.veth, plan.ip)
        network.write_netns_file(self.state, plan.netns, "resolv.conf", RESOLV_CONF)
        pod.hosts = render_hosts(plan, self._services)
        network.write_netns_file(self.state, plan.netns, "hosts", pod.hosts)
        pod.rules = render_service_rules(self.config, self._services)
        await network.apply_rules(plan.netns, render_service_jumps() + pod.rules)
        if self.hooks.pod_added is None:
            await self._start_pod_process(pod)
        else:  # as a kubelet: the containers start once the sandbox's CNI ADD succeeded
            self._nursery.start_soon(self._start_after_add, pod, self.hooks.pod_added)

    async def _start_after_add(self, pod: _Pod, added: PodAdded) -> None:
        with pod.waiting:
            await added(pod.uid, pod.plan.ip)
            async with self._lock:
                if self._down or self._pods.get(pod.plan.ref) is not pod or pod.process:
                    return
                try:
                    await self._start_pod_process(pod)
                    await self._refresh()
                except LocalClusterError as exc:
                    log.error("pod_start_failed", pod="/".join(pod.plan.ref), reason=str(exc))

    async def _start_pod_process(self, pod: _Pod, *, planned: bool = False) -> None:
        """Run the pod's command: once, or as a supervised component (started again when
        it exits) when the hooks name it one."""
        spec = pod.plan.spec
        env = {"PATH": POD_PATH, "HOSTNAME": spec.name, **dict(spec.env)}
        log_path = self.config.pod_log(spec.namespace, spec.name)
        component = self.hooks.pod_component(spec)
        if component is None:
            key = f"pod/{spec.namespace}/{spec.name}"
            pod.cgroup = cgroups.for_pod(self.config.prefix, pod.uid)
            pod.process = await self.supervisor.start(
                key, pod.plan.netns, spec.argv, env, log_path, cgroup=pod.cgroup
            )
            return
        pod.component, grace = component
        self._component_pods[pod.component] = pod.plan.ref
        # A restart waits for this file before the old process drains (a hand-over).
        env["AMBIT_READY_FILE"] = str(self.config.component_ready_file(pod.component))
        pod.process = await self._supervise(
            pod.component, pod.plan.netns, spec.argv, log_path, stop_grace=grace,
            planned=planned, env=env,
        )  # fmt: skip

    async def _remove_pod(self, ref: PodRef) -> None:
        pod = self._pods.pop(ref)
        pod.waiting.cancel()
        log.info("pod_removing", namespace=ref[0], pod=ref[1])
        if pod.component is not None:
            self._component_pods.pop(pod.component, None)
            self._components.pop(pod.component, None)
        await self.supervisor.stop(pod.component or f"pod/{ref[0]}/{ref[1]}")
        cgroups.remove(pod.cgroup)
        await network.delete_endpoint(self.state, pod.plan.netns, pod.plan.veth)

    async def _refresh(self) -> None:
        """Service chains and hosts files everywhere, endpoints from running pods only."""
        running = {ref for ref, pod in self._pods.items() if pod.phase == "Running"}
        plan = plan_cluster(self.config, self.store.objects(), self._allocation, ready=running)
        self._services = plan.services
        rules = render_service_rules(self.config, plan.services)
        for pod in self._pods.values():
            if pod.rules != rules:
                await network.apply_rules(pod.plan.netns, rules)
                pod.rules = rules
            hosts = render_hosts(pod.plan, plan.services)
            if pod.hosts != hosts:
                network.write_netns_file(self.state, pod.plan.netns, "hosts", hosts)
                pod.hosts = hosts
        for node in self._nodes.values():
            hosts = render_hosts(None, plan.services)
            if node.hosts != hosts:
                network.write_netns_file(self.state, node.plan.netns, "hosts", hosts)
                node.hosts = hosts
        try:
            self.hooks.on_objects_changed(self.snapshot())
        except Exception:  # the hook's bug must not take the cluster down
            log.exception("hook_failed", hook="on_objects_changed")

    def _process_exited(self, running: Running) -> None:
        self._exits.set()

    async def _follow_exits(self) -> None:
        while True:
            dues = [d for c in self._components.values() if (d := c.restart_due()) is not None]
            with trio.move_on_at(min(dues, default=math.inf)):
                await self._exits.wait()  # another exit may be due earlier
            self._exits = trio.Event()
            async with self._lock:
                if self._down:
                    return
                try:
                    await self._restart_due()
                    await self._refresh()
                # e.g. iptables-restore failed; the next change retries
                except LocalClusterError as exc:
                    log.error("refresh_failed", reason=str(exc))
