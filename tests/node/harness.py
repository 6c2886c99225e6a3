"""Two Kubernetes nodes on one machine, driven the way a kubelet and a container runtime
drive them, with the real parts: the test cluster's API server (tests/kube), ``ambit
controlplane --source kubernetes``, and on each node ``ambit node-agent`` and ``ambit
ztunnel --pods-socket`` as processes, with the CNI reference plugins chained with
``ambit-cni`` (run by ``cnitool``, as a runtime runs them).

A node here is a CNI config directory, a CNI bin directory, a socket directory and a
bridge of its own (made by the ``bridge`` plugin, with ``host-local`` addresses from the
node's /24); the host routes between the nodes' bridges. A pod is a Pod object bound to
its node, a network namespace, a process in a cgroup named after the pod's uid (what the
node agent finds running pods by), the CNI chain's ``ADD``, then the status a kubelet
writes. Everything is removed at the end: processes by PID, namespaces, bridges and
host rules by the names made here."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from ca import CertificateAuthority
from tests.e2e.conftest import free_octet
from tests.kube.client import KubeAdmin, NotFound, Obj
from tests.kube.cluster import REPO, Cluster, free_port
from tests.kube.kubelet import (
    create_node,
    namespace,
    pod,
    remove_pod,
    set_pod_running,
    wait_default_service_account,
)
from tests.kube.planes import PlaneProcess

CNI_BIN = Path(os.environ.get("AMBIT_CNI_BIN", REPO / ".cache" / "cni" / "bin"))
SYSTEM_NS = "ambit-system"  # where ztunnel's ServiceAccount is (its identity names it)
TD = "cluster.local"
READY_SECONDS = 60.0
STOP_SECONDS = 15.0
CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


def missing_cni() -> str | None:
    for name in ("bridge", "host-local", "loopback", "cnitool"):
        if not (CNI_BIN / name).exists():
            return f"the CNI reference plugins are not built ({CNI_BIN / name}): run `make cni`"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def _cgroup_root() -> Path:
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists():
            return root
    raise RuntimeError("no writable cgroup hierarchy (pids controller or cgroup v2)")


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


@dataclass
class Process:
    """A child process with its log file; stopped by PID."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: trio.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with _append(self.log) as out:
            self.process = await trio.lowlevel.open_process(
                self.argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(sig)
            with trio.move_on_after(STOP_SECONDS):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    netns: str
    ip: str
    node: Node
    sleeper: subprocess.Popen[bytes]
    cgroup: Path

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


@dataclass
class Node:
    name: str
    index: int
    octet: int
    directory: Path
    bridge: str
    agent: Process | None = None
    ztunnel: Process | None = None
    admin_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    ready_port: int = field(default_factory=free_port)
    agent_port: int = field(default_factory=free_port)

    @property
    def conf_dir(self) -> Path:
        return self.directory / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    @property
    def socket_dir(self) -> Path:
        """Short: a unix socket's path has at most 107 bytes (pytest's tmp_path is long)."""
        return Path(f"/tmp/ambn-{self.bridge}")

    @property
    def subnet(self) -> str:
        return f"10.{self.octet}.{self.index}.0/24"

    @property
    def network(self) -> str:
        return f"ambit-test-{self.index}"

    def conflist(self) -> dict[str, Any]:
        """The node's primary CNI config, as its cluster's CNI would have written it."""
        return {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.directory / "ipam"),
                    },
                }
            ],
        }


@dataclass
class NodeMesh:
    admin: KubeAdmin
    cluster: Cluster
    directory: Path
    ns_prefix: str
    plane: PlaneProcess
    nodes: list[Node]
    octet: int
    pods: list[Pod] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    host_rules: list[list[str]] = field(default_factory=list)
    last_error: subprocess.CompletedProcess[str] | None = None  # of a failed ADD

    # ---- node processes -------------------------------------------------------------

    def agent_argv(self, node: Node) -> list[str]:
        return [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "node-agent",
            "--node", node.name, "--kubeconfig", str(self.cluster.kubeconfig),
            "--cni-bin-dir", str(node.bin_dir), "--cni-conf-dir", str(node.conf_dir),
            "--host-cni-conf-dir", str(node.conf_dir), "--socket-dir", str(node.socket_dir),
            "--state-dir", str(node.directory / "agent-state"),
            "--exclude-namespaces", f"kube-system,{SYSTEM_NS}",
            "--listen-ip", "127.0.0.1", "--readiness-port", str(node.agent_port),
            "--uninstall-on-exit",
        ]  # fmt: skip

    def ztunnel_argv(self, node: Node) -> list[str]:
        token = node.directory / "ztunnel-token"
        token.write_text(self.tokens[node.name])
        return [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "ztunnel",
            "--node", node.name, "--control-plane", f"127.0.0.1:{self.plane.config_port}",
            "--ca", f"127.0.0.1:{self.plane.ca_port}", "--token-file", str(token),
            "--trust-bundle", str(self.directory / "bundle.pem"),
            "--pods-socket", str(node.socket_dir / "ztunnel.sock"),
            "--listen-ip", "127.0.0.1", "--admin-port", str(node.admin_port),
            "--metrics-port", str(node.metrics_port), "--readiness-port", str(node.ready_port),
            "--drain-seconds", "3",
        ]  # fmt: skip

    async def start_agent(self, node: Node, env: Mapping[str, str] | None = None) -> Process:
        """``node``'s agent; ``env`` as a DaemonSet's downward API gives it (POD_NAME...).
        Its readiness port is picked now: one picked earlier may have become a client
        connection's local port meanwhile (the agent it served killed), and then the new
        agent could not bind it."""
        node.agent_port = free_port()
        node.agent = Process(
            f"agent-{node.name}",
            self.agent_argv(node),
            node.directory / "agent.log",
            dict(env or {}),
        )
        await node.agent.start()
        await self.wait_http(node.agent_port, "/healthz/ready", node.agent)
        return node.agent

    async def start_ztunnel(self, node: Node, log_name: str = "ztunnel.log") -> Process:
        process = Process(
            f"ztunnel-{node.name}", self.ztunnel_argv(node), node.directory / log_name
        )
        await process.start()
        node.ztunnel = process
        return process

    async def wait_http(self, port: int, path: str, process: Process) -> None:
        with trio.move_on_after(READY_SECONDS):
            while process.running:
                if await http_status(port, path) == 200:
                    return
                await trio.sleep(0.1)
        raise AssertionError(f"{process.name} never answered 200 on {path}\n{process.tail()}")

    async def config_dump(self, node: Node) -> dict[str, Any]:
        status, body = await http_get(node.admin_port, "/config_dump")
        assert status == 200, body[:300]
        doc: dict[str, Any] = json.loads(body)
        return doc

    async def captured(self, node: Node) -> set[str]:
        """The pods ``node``'s ztunnel serves now (``namespace/name``)."""
        try:
            dump = await self.config_dump(node)
        except (OSError, AssertionError):
            return set()
        return {p["uid"] for p in dump.get("pods", []) if p.get("captured")}

    async def meshed_in_config(self, node: Node) -> set[str]:
        """The workloads ``node``'s ztunnel was told are in the mesh (HBONE)."""
        try:
            dump = await self.config_dump(node)
        except (OSError, AssertionError, trio.TooSlowError):
            return set()
        workloads = (dump.get("config") or {}).get("workloads") or []
        return {str(w.get("uid")) for w in workloads if w.get("protocol") == "HBONE"}

    async def wait_known(self, *pods: Pod, seconds: float = 30.0) -> None:
        """Until every node's ztunnel has ``pods`` in its config as meshed: what a client
        needs before its first connection to them goes over HBONE (before that, as in
        Istio, an address the mesh does not know yet is passthrough)."""
        keys = {f"{p.namespace}/{p.name}" for p in pods}
        with trio.move_on_after(seconds):
            for node in self.nodes:
                for _ in range(int(seconds / 0.05) + 1):
                    if keys <= await self.meshed_in_config(node):
                        break
                    await trio.sleep(0.05)
            return
        known = {n.name: sorted(keys & await self.meshed_in_config(n)) for n in self.nodes}
        raise AssertionError(
            f"after {seconds} s the nodes' ztunnels know {known} of {sorted(keys)} as meshed;"
            f" the control plane's log ends:\n{self.plane.log_tail()}"
        )

    # ---- pods -------------------------------------------------------------------------

    async def make_namespace(self, suffix: str, labels: Mapping[str, str] | None = None) -> str:
        name = f"{self.ns_prefix}-{suffix}"
        await self.admin.create(namespace(name, labels))
        await wait_default_service_account(self.admin, name)
        return name

    async def label_namespace(self, name: str, labels: Mapping[str, str | None]) -> None:
        await self.admin.patch("v1", "Namespace", name, {"metadata": {"labels": dict(labels)}})

    def cni(
        self, node: Node, command: str, p: Pod | None = None, **over: str
    ) -> subprocess.CompletedProcess[str]:
        """``cnitool COMMAND`` on ``node``'s network for ``p``, as a container runtime calls
        the chain (its env: the pod's K8S_ args, the node's config and bin dirs)."""
        assert p is not None
        env = {
            **os.environ,
            "CNI_PATH": str(node.bin_dir),
            "NETCONFPATH": str(node.conf_dir),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={p.namespace};"
            f"K8S_POD_NAME={p.name};K8S_POD_UID={p.uid}",
            "CNI_IFNAME": "eth0",
            **over,
        }
        return subprocess.run(
            [str(CNI_BIN / "cnitool"), command, node.network, p.netns_path],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    async def start_pod(
        self,
        node: Node,
        ns: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        expect_add: bool = True,
    ) -> Pod:
        """Create the Pod bound to ``node``, its sandbox (netns, a process in the pod's
        cgroup) and run the CNI chain's ADD; then write Running with the IP the chain gave.
        With ``expect_add`` False the ADD's failure is returned in ``Pod.ip`` as ''."""
        created = await self.admin.create(
            pod(ns, name, labels=labels, node=node.name, service_account=service_account)
        )
        uid = str(created["metadata"]["uid"])
        p = self._sandbox(node, ns, name, uid)
        self.pods.append(p)
        done = await trio.to_thread.run_sync(lambda: self.cni(node, "add", p))
        if done.returncode != 0:
            if expect_add:
                raise AssertionError(f"ADD of {ns}/{name} failed: {done.stdout} {done.stderr}")
            p.ip = ""
            self.last_error = done
            return p
        result = json.loads(done.stdout)
        p.ip = str(result["ips"][0]["address"]).split("/")[0]
        await set_pod_running(self.admin, ns, name, p.ip)
        return p

    def _sandbox(self, node: Node, ns: str, name: str, uid: str) -> Pod:
        """The pod's network namespace (lo up, as the loopback plugin leaves it) and a
        process in it, in a cgroup named after the pod's uid (the pause container)."""
        netns = f"anp-{secrets.token_hex(3)}"
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        cgroup = _cgroup_root() / f"ambtest-{self.ns_prefix}" / f"pod{uid}"
        cgroup.mkdir(parents=True, exist_ok=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
        (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
        return Pod(ns, name, uid, netns, "", node, sleeper, cgroup)

    async def delete_pod(self, p: Pod, *, run_del: bool = True, keep_netns: bool = False) -> None:
        """What a kubelet does when a pod goes: DEL through the chain, the sandbox gone,
        the object removed."""
        if run_del:
            done = await trio.to_thread.run_sync(lambda: self.cni(p.node, "del", p))
            assert done.returncode == 0, f"DEL failed: {done.stdout} {done.stderr}"
        with suppress(NotFound):
            await remove_pod(self.admin, p.namespace, p.name)
        self._end_sandbox(p, keep_netns=keep_netns)

    def _end_sandbox(self, p: Pod, *, keep_netns: bool = False) -> None:
        if p.sleeper.poll() is None:
            p.sleeper.kill()
            p.sleeper.wait(timeout=10)
        with suppress(OSError):
            p.cgroup.rmdir()
        if not keep_netns:
            sh("ip", "netns", "del", p.netns, check=False)

    # ---- teardown ------------------------------------------------------------------------

    async def forget(self, tag: str) -> None:
        """Remove from the API server what this mesh made there: its pods (at once, as a
        kubelet confirms a stopped pod), its namespaces, its ztunnel pods and its nodes."""
        for p in self.pods:
            with suppress(NotFound):
                await remove_pod(self.admin, p.namespace, p.name)
        for node in self.nodes:
            with suppress(NotFound):
                await remove_pod(self.admin, SYSTEM_NS, f"ztunnel-{tag}-{node.name}")
        for ns in await self.admin.list("v1", "Namespace"):
            name = str(ns["metadata"]["name"])
            if name.startswith(f"{self.ns_prefix}-"):
                with suppress(NotFound):
                    await self.admin.delete("v1", "Namespace", name)
        for node in self.nodes:
            with suppress(NotFound):
                await self.admin.delete("v1", "Node", node.name)

    async def close(self) -> None:
        for node in self.nodes:
            for process in (node.agent, node.ztunnel):
                if process is not None:
                    await process.stop()
        for p in self.pods:
            self._end_sandbox(p)
        for node in self.nodes:
            sh("ip", "link", "del", node.bridge, check=False)
            shutil.rmtree(node.socket_dir, ignore_errors=True)
        for rule in reversed(self.host_rules):
            sh("iptables", "-D", *rule, check=False)
        with suppress(OSError):
            (_cgroup_root() / f"ambtest-{self.ns_prefix}").rmdir()


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def http_status(port: int, path: str) -> int:
    try:
        return (await http_get(port, path))[0]
    except (OSError, trio.TooSlowError, IndexError, ValueError):
        return 0


async def free_pod_octet(admin: KubeAdmin) -> int:
    """A second octet N for the nodes' pod subnets (10.N.x.0/24) that neither this host's
    routes nor any Pod's IP in the API server uses: the control plane keeps the older of
    two Pods with one IP and leaves the newer out of the mesh, so a test whose pods took
    the IPs of an earlier test's pods would wait for them in vain."""
    taken = {
        str(p.get("status", {}).get("podIP", "")).split(".")[1]
        for p in (await admin.request("GET", "/api/v1/pods"))["items"]
        if str(p.get("status", {}).get("podIP", "")).startswith("10.")
    }
    for _ in range(100):
        octet = free_octet()
        if str(octet) not in taken:
            return octet
    raise RuntimeError(f"no 10.N.0.0/16 free of host routes and pod IPs (taken: {taken})")


async def _system_namespace(admin: KubeAdmin) -> None:
    with suppress(Exception):
        await admin.create(namespace(SYSTEM_NS))
    await wait_default_service_account(admin, SYSTEM_NS)
    with suppress(Exception):
        await admin.create({"apiVersion": "v1", "kind": "ServiceAccount",
                            "metadata": {"name": "ztunnel", "namespace": SYSTEM_NS}})  # fmt: skip


async def _ztunnel_token(admin: KubeAdmin, node: str, tag: str) -> str:
    """The token the kubelet would project into ``node``'s ztunnel pod (audience
    ambit-ca, bound to the pod)."""
    name = f"ztunnel-{tag}-{node}"
    created: Obj = await admin.create(pod(SYSTEM_NS, name, node=node, service_account="ztunnel"))
    await set_pod_running(admin, SYSTEM_NS, name, "10.254.0.9")
    request = {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["ambit-ca"], "expirationSeconds": 3600, "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod", "name": name, "uid": created["metadata"]["uid"]}},
    }  # fmt: skip
    answer = await admin.post_subresource("v1", "ServiceAccount", "ztunnel", "token", request,
                                          SYSTEM_NS)  # fmt: skip
    return str(answer["status"]["token"])


@asynccontextmanager
async def node_mesh(
    admin: KubeAdmin, cluster: Cluster, directory: Path, *, nodes: int = 2
) -> AsyncIterator[NodeMesh]:
    """The control plane and ``nodes`` nodes, each with its agent and ztunnel running;
    on the way out, the processes, sandboxes, pods, namespaces and nodes it made go."""
    tag = secrets.token_hex(3)
    octet = await free_pod_octet(admin)
    await _system_namespace(admin)
    made: list[Node] = []
    for i in range(1, nodes + 1):
        name = f"n{i}-{tag}"
        await create_node(admin, name)
        node = Node(name, i, octet, directory / name, f"anb{tag}{i}")
        for sub in (node.conf_dir, node.bin_dir, node.socket_dir):
            sub.mkdir(parents=True)
        (node.conf_dir / "10-test.conflist").write_text(json.dumps(node.conflist(), indent=2))
        for plugin in ("bridge", "host-local", "loopback"):
            (node.bin_dir / plugin).symlink_to(CNI_BIN / plugin)
        made.append(node)
    tokens = {n.name: await _ztunnel_token(admin, n.name, tag) for n in made}
    plane = PlaneProcess(
        directory / "plane",
        ["--source", "kubernetes", "--kubeconfig", str(cluster.kubeconfig),
         "--ztunnel-service-account", f"{SYSTEM_NS}/ztunnel"],
        dict(tokens),
    )  # fmt: skip
    mesh = NodeMesh(admin, cluster, directory, f"nd{tag}", plane, made, octet, tokens=tokens)
    try:
        # The host routes between the nodes' bridges, as a cluster's network does.
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        for node in made:
            for rule in (["FORWARD", "-i", node.bridge, "-j", "ACCEPT"],
                         ["FORWARD", "-o", node.bridge, "-j", "ACCEPT"]):  # fmt: skip
                sh("iptables", "-I", *rule)
                mesh.host_rules.append(rule)
        await plane.start()
        bundle = CertificateAuthority.load(plane.ca_dir).trust_bundle
        (directory / "bundle.pem").write_bytes(bundle.pem())
        for node in made:
            await mesh.start_ztunnel(node)
            await mesh.start_agent(node)
        yield mesh
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            await mesh.close()
            await plane.stop()
            await mesh.forget(tag)
