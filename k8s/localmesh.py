"""The mesh in local mode: the hooks that put the control plane, and a ztunnel and a node
agent per node, into the one-machine cluster of :mod:`k8s.local`.

- When the cluster starts: the CA's keys are made in ``<state>/ca`` and its
  bundle written; node tokens go to ``<state>/mesh/tokens.json``. The control
  plane is its own process, ``ambit controlplane --source files``, started (and
  restarted when it exits) by the cluster, listening on the bridge address (CA
  15012, config stream 15010, metrics 15014). It watches
  ``<state>/mesh/objects/`` and writes each object's conditions to
  ``<state>/mesh/status.json``.
- Each node runs, as on a Kubernetes node, ``ambit ztunnel --pods-socket`` and
  ``ambit node-agent --source files`` (docs/node.md), both in the node's namespace,
  their sockets in ``<state>/nodes/<node>/``. The agent installs ``ambit-cni`` into the
  node's CNI config (``net.d/``, ``bin/`` there), follows the objects file, installs
  the capture rules in each meshed pod's namespace (:mod:`mesh.capture`: the
  node-level part that outlives ztunnel, so a pod's traffic fails closed while its
  ztunnel is down) and hands the pod to ztunnel.
- On every change: every object, as an API server would serve it, goes to
  ``<state>/mesh/objects/cluster.json`` (what the control plane translates and the
  agents follow) and to the plugin's stand-in API server (:mod:`k8s.localapi`); then
  the cluster plays the container runtime: it runs each pod's CNI chain, ``ADD`` and
  ``DEL``, with ``ambit-cni`` in it (:mod:`k8s.localcni`). Each pod's processes are in
  a cgroup named after its uid, as a kubelet's, which is how the agent finds a running
  pod whose namespace is labelled later.
- The waypoint deployer (:mod:`k8s.waypoint_deployer`) is local mode's controller: a
  waypoint Gateway becomes its ServiceAccount, Service and Pod, stored by the cluster
  beside it. The pod runs ``ambit waypoint run`` as the component ``waypoint/NS/NAME``
  (restarted when it exits; stopped with a grace above its 1 s drain) with the bearer
  token of its service account: made here, written 0600 to
  ``<state>/mesh/serviceaccounts/NS/SA/token`` and to the tokens file under
  ``system:serviceaccount:NS:SA``, which the CA lets have only that account's identity.
  It is labelled ``dataplane-mode: none``, as on Kubernetes: it speaks HBONE itself and
  the agent never captures it.
- ``ambit tap``: a token of the cluster's admin, made when the cluster starts, goes to
  ``<state>/mesh/tap-tokens.json`` (the control plane's ``--tap-tokens-file``) and, with
  the tap API's address and the control plane's identity, to ``<state>/mesh/tap.json``
  (what the CLI reads), both 0600: whoever may read the state dir (root) may tap.
- Readiness: each ztunnel's ``/config_dump`` (loopback port 15000 inside the
  node's namespace) says which pods are captured and have a certificate; each agent's
  ``/status`` (port 15031 on the node's address) says why a pod is not captured.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h11
import structlog
import trio

from ca import CaConfig, CertificateAuthority
from ca.auth import service_account_caller
from k8s import manifests
from k8s.local.config import ClusterConfig, objects_dir
from k8s.local.errors import LocalClusterError
from k8s.local.hooks import LocalHooks, LocalSnapshot, MeshState, NodeView, PodRef
from k8s.localapi import LocalApi
from k8s.localcni import PRIMARY_FILE, CniPod, CniRuntime, NodeChain, primary_conflist
from k8s.waypoint_deployer import DeployerSettings, deploy, managed
from mesh.constants import (
    ADMIN_PORT,
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    LABEL_GATEWAY_NAME,
    TAP_PORT,
)
from mesh.files import write_atomically
from mesh.http_get import BodyTooLarge, get
from mesh.identity import control_plane_identity
from mesh.netns import NetnsError, NetworkNamespace, netns_path
from mesh.tokens import TokenTable

log = structlog.get_logger("k8s.localmesh")

CONFIG_DUMP_LIMIT = 16 * 1024 * 1024
TAP_TOKENS_FILE = "tap-tokens.json"  # under <state>/mesh: who may tap (the control plane's)
TAP_CLIENT_FILE = "tap.json"  # under <state>/mesh: where and how to tap (ambit tap's)
LOCAL_TAP_CALLER = "local-admin"


AGENT_PORT = 15031  # the node agent's /healthz/ready and /status, on the node's address
ZTUNNEL_DRAIN_SECONDS = 5.0  # open connections' time to finish when a ztunnel stops
WAYPOINT_DRAIN_SECONDS = 1.0  # requests' time to finish when a waypoint pod stops
# The source tree this daemon runs: a waypoint pod runs the same code.
SOURCE_ROOT = Path(__file__).resolve().parents[1]


class LocalMesh:
    def __init__(self) -> None:
        self.tokens = TokenTable()  # one per node: the CA's and the config stream's proof
        self._config: ClusterConfig | None = None
        self._latest: LocalSnapshot | None = None
        self._changed = trio.Event()
        self._runtime = CniRuntime(self.node_chain)
        self._api: LocalApi | None = None
        self._nodes: list[str] = []
        self._accounts: list[tuple[str, str]] = []  # waypoints' service accounts with a token

    def hooks(self) -> LocalHooks:
        return LocalHooks(
            on_cluster_started=self.on_cluster_started,
            on_objects_changed=self.on_objects_changed,
            ztunnel_command=self.ztunnel_command,
            node_agent_command=self.node_agent_command,
            mesh_state=self.mesh_state,
            controlplane_command=self.controlplane_command,
            ztunnel_stop_grace=ZTUNNEL_DRAIN_SECONDS + 1.0,
            object_conditions=self.object_conditions,
            derive_objects=self.derive_objects,
            pod_component=self.pod_component,
            runtime_pending=self._runtime.pending,
            pod_added=self._runtime.wait_added,
        )

    def _dir(self) -> Path:
        return self._state_dir() / "mesh"

    def _state_dir(self) -> Path:
        assert self._config is not None
        return self._config.state_dir

    def node_dir(self, node: str) -> Path:
        """The node's sockets (``cni.sock``, ``ztunnel.sock``) and its agent's state. Short:
        a unix socket's path has at most 107 bytes."""
        assert self._config is not None
        return node_dir(self._config.state_dir, node)

    def node_chain(self, node: str) -> NodeChain:
        """The node's CNI config and plugin directories."""
        return NodeChain(self.node_dir(node) / "net.d", self.node_dir(node) / "bin")

    async def on_cluster_started(self, nursery: trio.Nursery, config: ClusterConfig) -> None:
        self._config = config
        authority = await trio.to_thread.run_sync(
            lambda: CertificateAuthority.load_or_create(
                config.state_dir / "ca", CaConfig(trust_domain=config.trust_domain)
            )
        )
        write_atomically(self._dir() / "bundle.pem", authority.trust_bundle.pem())
        objects_dir(config.state_dir).mkdir(parents=True, exist_ok=True)
        self._write_tokens()
        self._write_tap_access(config)
        self._api = LocalApi(self._dir() / "localapi")
        await nursery.start(self._api.serve)  # before the agents: they read its kubeconfig
        nursery.start_soon(self._publish_changes)

    def controlplane_command(self, config: ClusterConfig) -> Sequence[str]:
        mesh = self._dir()
        return [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "controlplane",
            "--source", "files", "-f", str(objects_dir(config.state_dir)),
            "--ca-dir", str(config.state_dir / "ca"),
            "--tokens-file", str(mesh / "tokens.json"),
            "--tap-tokens-file", str(mesh / TAP_TOKENS_FILE),
            "--status-file", str(mesh / "status.json"),
            "--host", str(config.host_ip),
            "--trust-domain", config.trust_domain,
            "--drain-seconds", "1",  # below the 2 s the cluster waits before SIGKILL
        ]  # fmt: skip

    def object_conditions(self) -> Mapping[str, Any]:
        """What the control plane last wrote of each object's conditions."""
        try:
            status = json.loads((self._dir() / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        objects = status.get("objects") if isinstance(status, dict) else None
        return objects if isinstance(objects, dict) else {}

    def _write_tokens(self, directory: Path | None = None) -> None:
        callers = [*self._nodes, *(service_account_caller(*a) for a in self._accounts)]
        tokens = {caller: self.tokens.token_for(caller) for caller in callers}
        path = (directory or self._dir()) / "tokens.json"
        write_atomically(path, json.dumps(tokens).encode(), 0o600)

    def _write_tap_access(self, config: ClusterConfig) -> None:
        """Who may tap (the control plane's file) and how to (the CLI's), both 0600."""
        token = secrets.token_urlsafe(32)
        tokens = json.dumps({LOCAL_TAP_CALLER: token}).encode()
        write_atomically(self._dir() / TAP_TOKENS_FILE, tokens, 0o600)
        client = {
            "server": f"{config.host_ip}:{TAP_PORT}",
            "identity": str(control_plane_identity(config.trust_domain)),
            "token": token,
        }
        write_atomically(self._dir() / TAP_CLIENT_FILE, json.dumps(client).encode(), 0o600)

    def deployer_settings(self, config: ClusterConfig) -> DeployerSettings:
        host = str(config.host_ip)
        return DeployerSettings(
            control_plane=f"{host}:{CONFIG_STREAM_PORT}",
            ca=f"{host}:{CONTROL_PLANE_PORT}",
            token_dir=config.state_dir / "mesh" / "serviceaccounts",
            trust_bundle=config.state_dir / "mesh" / "bundle.pem",
            trust_domain=config.trust_domain,
            drain_seconds=WAYPOINT_DRAIN_SECONDS,
            python=sys.executable,
            env=(("PYTHONPATH", str(SOURCE_ROOT)),),
        )

    def derive_objects(
        self, objects: Sequence[manifests.K8sObject], config: ClusterConfig
    ) -> Sequence[manifests.Document]:
        """The waypoint deployer's objects; each waypoint pod's token is written before the
        pod can start (the control plane re-reads the tokens file)."""
        settings = self.deployer_settings(config)
        documents = deploy(objects, settings)
        new = False
        for doc in documents:
            pod = doc.obj
            if not isinstance(pod, manifests.Pod):
                continue
            account = (pod.namespace, pod.service_account)
            token = self.tokens.token_for(service_account_caller(*account)).encode()
            write_atomically(settings.token_file(*account), token, 0o600)
            if account not in self._accounts:
                self._accounts.append(account)
                new = True
        if new:
            self._write_tokens(config.state_dir / "mesh")
        return documents

    def pod_component(self, pod: manifests.Pod) -> tuple[str, float] | None:
        """A waypoint's pod is supervised as ``waypoint/NS/NAME``."""
        gateway = dict(pod.labels).get(LABEL_GATEWAY_NAME)
        if gateway is None or not managed(pod):
            return None
        return f"waypoint/{pod.namespace}/{gateway}", WAYPOINT_DRAIN_SECONDS + 1.0

    def on_objects_changed(self, snapshot: LocalSnapshot) -> None:
        """Every object goes to the control plane's file now, before ``ambit apply`` is
        answered (``ambit why`` then waits for the control plane to have read it); the
        rest follows in :meth:`_publish_changes`."""
        write_atomically(
            objects_dir(self._state_dir()) / "cluster.json",
            "\n---\n".join(json.dumps(d) for d in snapshot.documents).encode(),
            sync=False,  # rewritten on every change; the daemon holds the objects
        )
        self._latest = snapshot
        self._changed.set()

    async def _publish_changes(self) -> None:
        """Apply each change in order: serve every object on the plugin's API, then send
        the runtime's CNI ADD and DEL for the pods that came and went."""
        async with trio.open_nursery() as nursery:
            while True:
                await self._changed.wait()
                self._changed = trio.Event()
                snapshot = self._latest
                assert snapshot is not None
                if self._api is not None:
                    self._api.update(snapshot.documents)
                self._runtime.update(nursery, cni_pods(snapshot))

    def ztunnel_command(self, node: NodeView, config: ClusterConfig) -> Sequence[str] | None:
        token_file = self._dir() / "tokens" / node.name
        if node.name not in self._nodes:
            self._nodes.append(node.name)
            self._write_tokens()  # before the ztunnel starts: the control plane re-reads it
        write_atomically(token_file, self.tokens.token_for(node.name).encode(), 0o600)
        host = str(config.host_ip)
        return [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "ztunnel",
            "--node", node.name,
            "--control-plane", f"{host}:{CONFIG_STREAM_PORT}",
            "--ca", f"{host}:{CONTROL_PLANE_PORT}",
            "--token-file", str(token_file),
            "--trust-bundle", str(self._dir() / "bundle.pem"),
            "--pods-socket", str(self.node_dir(node.name) / "ztunnel.sock"),
            "--listen-ip", node.ip,
            "--trust-domain", config.trust_domain,
            # The cluster gives a ztunnel ZTUNNEL_DRAIN_SECONDS + 1 between SIGTERM and SIGKILL.
            "--drain-seconds", str(ZTUNNEL_DRAIN_SECONDS),
            "--ready-file", str(config.ztunnel_ready_file(node.name)),
        ]  # fmt: skip

    def node_agent_command(self, node: NodeView, config: ClusterConfig) -> Sequence[str]:
        """The node's agent, as on a Kubernetes node, but following the objects file; it
        gives the plugin the stand-in API server's kubeconfig. The node's network config
        (local mode's own plugin, first) is written here when the node has none."""
        directory = self.node_dir(node.name)
        chain = self.node_chain(node.name)
        if not (chain.conf_dir / PRIMARY_FILE).exists():
            chain.conf_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(chain.conf_dir / PRIMARY_FILE, primary_conflist())
        return [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "node-agent",
            "--node", node.name,
            "--source", "files", "-f", str(objects_dir(self._state_dir())),
            "--kubeconfig", str(self._dir() / "localapi" / "kubeconfig"),
            "--cni-conf-dir", str(chain.conf_dir), "--host-cni-conf-dir", str(chain.conf_dir),
            "--cni-bin-dir", str(chain.bin_dir),
            "--socket-dir", str(directory),
            "--state-dir", str(directory / "agent"),
            "--exclude-namespaces", "",  # local mode: the labels alone decide
            "--listen-ip", node.ip,
            "--readiness-port", str(AGENT_PORT),
        ]  # fmt: skip

    async def mesh_state(self, snapshot: LocalSnapshot) -> Mapping[PodRef, MeshState]:
        state: dict[PodRef, MeshState] = {
            p.ref: MeshState(captured=False, certificate=False)
            for p in snapshot.pods
            if p.meshed and not p.native_tunnel
        }
        for ref, why in self._runtime.failing().items():  # the ADD has not succeeded yet
            if ref in state:
                state[ref] = MeshState(False, False, reason=f"its CNI ADD failed: {why}")
        for node in snapshot.nodes:
            agent = await get_json(node.netns, node.ip, AGENT_PORT, "/status")
            for key, reason in ((agent or {}).get("failed") or {}).items():
                namespace, _, name = str(key).partition("/")
                if (namespace, name) in state:
                    state[(namespace, name)] = MeshState(False, False, reason=str(reason))
            dump = await get_json(node.netns, "127.0.0.1", ADMIN_PORT, "/config_dump")
            for pod in (dump or {}).get("pods", []):
                namespace, _, name = str(pod.get("uid", "")).partition("/")
                if (namespace, name) in state:
                    captured = bool(pod.get("captured"))
                    state[(namespace, name)] = MeshState(
                        captured=captured,
                        certificate=pod.get("certificate_expires") is not None,
                        reason=None if captured else state[(namespace, name)].reason,
                    )
        return state


# A unix socket's path has at most 107 bytes; ztunnel binds ".ztunnel.sock.XXXXXXXX" first.
SOCKET_PATH_MAX = 107 - len("/.ztunnel.sock.12345678")


def node_dir(state_dir: Path, node: str) -> Path:
    """``<state>/nodes/<node>``: the node's sockets and its agent's state."""
    path = state_dir / "nodes" / node
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise LocalClusterError(
            f"{path} is too long for the node's unix sockets (at most {SOCKET_PATH_MAX}"
            " bytes): use a shorter --state-dir"
        )
    return path


def cni_pods(snapshot: LocalSnapshot) -> list[CniPod]:
    """Every pod whose network is set up: the runtime runs its node's chain for it."""
    uids = {
        ((d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")):
        str((d.get("metadata") or {}).get("uid") or "")
        for d in snapshot.documents if d.get("kind") == "Pod"
    }  # fmt: skip
    return [
        CniPod(
            p.node,
            p.namespace,
            p.name,
            uids.get(p.ref, ""),
            str(netns_path(p.netns)),
            p.ip,
            snapshot.config.pod_cidr.prefixlen,
        )
        for p in snapshot.pods
        if uids.get(p.ref)
    ]


def default_hooks() -> LocalHooks:
    """The hooks ``ambit local-daemon`` uses: the control plane and a ztunnel per node."""
    return LocalMesh().hooks()


async def config_dump(netns: str, *, seconds: float = 2.0) -> dict[str, Any] | None:
    """GET /config_dump from the ztunnel in ``netns`` (its admin port is loopback-only)."""
    return await get_json(netns, "127.0.0.1", ADMIN_PORT, "/config_dump", seconds=seconds)


async def get_json(
    netns: str, host: str, port: int, path: str, *, seconds: float = 2.0
) -> dict[str, Any] | None:
    """GET ``path`` from ``host:port`` inside ``netns``; None when it does not answer 200
    with a JSON object in time."""
    try:
        with NetworkNamespace.open(netns) as handle:
            sock = handle.socket(mark=None)
    except NetnsError:  # the namespace is gone: nothing to report
        return None
    status, body = 0, b""
    with sock, trio.move_on_after(seconds):
        try:
            await sock.connect((host, port))
            status, body = await get(trio.SocketStream(sock), host, path, limit=CONFIG_DUMP_LIMIT)
        except (BodyTooLarge, OSError, trio.BrokenResourceError, h11.ProtocolError):
            return None
    if status != 200:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
