"""Local mode as the container runtime: it runs each node's CNI chain for its pods, as
containerd or CRI-O does on a Kubernetes node (the CNI specification, section 3).

A local node's network config, ``<state>/nodes/<node>/net.d``, starts as one conflist
whose first plugin is local mode's own network set-up (type ``ambit-local``: the cluster
makes the pod's namespace, veth and address itself, in process). The node's agent
appends ``ambit-cni`` to that conflist and installs the plugin into
``<state>/nodes/<node>/bin``, exactly as on a node. For each pod the runtime then
executes every plugin after the first, in order, with the spec's environment
(``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` with
the ``K8S_POD_*`` values, ``CNI_PATH``) and the plugin's config with ``prevResult``
(the pod's interface and address) on stdin; ``DEL`` runs them in reverse. The plugin
reads the pod and its namespace from local mode's stand-in API server
(:mod:`k8s.localapi`) and asks the agent over ``cni.sock``.

ADD is retried until the chain succeeds (a kubelet retries a failed sandbox the same
way; the agent may be starting, or not have put ``ambit-cni`` in the chain yet); DEL
is best effort and not retried, as the spec lets it be. Each pod's ADD runs in its own
task under the runtime's nursery, cancelled when the pod goes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from mesh.backoff import Backoff
from node.cni_config import PLUGIN_TYPE, parse_network, plugins_of
from node.cni_install import find_primary

log = structlog.get_logger("k8s.localcni")

PRIMARY_TYPE = "ambit-local"  # the first plugin: done by the local cluster in process
PRIMARY_FILE = "10-ambit-local.conflist"
CNI_VERSION = "1.1.0"
RETRY = Backoff(initial=0.1, maximum=1.0)  # one machine: the agent is seconds away at most
ADD_SECONDS = 25.0  # ambit-cni bounds its ADD by its timeoutSeconds (20 s)
DEL_SECONDS = 5.0
Obj = dict[str, Any]


@dataclass(frozen=True)
class CniPod:
    """A pod as the runtime knows it once its network is set up."""

    node: str
    namespace: str
    name: str
    uid: str
    netns: str  # a path: /run/netns/NAME
    ip: str
    prefix: int = 32  # the length of the pod network's prefix, for prevResult

    @property
    def container_id(self) -> str:
        return f"{self.namespace}_{self.name}_{self.uid}"


@dataclass(frozen=True)
class NodeChain:
    """Where a node's network config and plugins are."""

    conf_dir: Path
    bin_dir: Path


def primary_conflist() -> bytes:
    """The node's network config before its agent adds ``ambit-cni``."""
    network = {"cniVersion": CNI_VERSION, "name": "ambit-local",
               "plugins": [{"type": PRIMARY_TYPE}]}  # fmt: skip
    return (json.dumps(network, indent=2) + "\n").encode()


class ChainError(Exception):
    """The chain could not run, or a plugin failed; the message says which and why."""


def chained(conf_dir: Path) -> tuple[Obj, list[Obj]]:
    """The network config the runtime uses and the plugins after local mode's own."""
    found = find_primary(conf_dir)
    if found is None:
        raise ChainError(f"no network config in {conf_dir}")
    name, data = found
    network = parse_network(data)
    plugins = plugins_of(network) if network is not None else None
    if network is None or not plugins or plugins[0].get("type") != PRIMARY_TYPE:
        raise ChainError(f"{conf_dir / name} is not local mode's conflist ({PRIMARY_TYPE} first)")
    rest = plugins[1:]
    if not any(p.get("type") == PLUGIN_TYPE for p in rest):
        raise ChainError(f"the node agent has not added {PLUGIN_TYPE} to {conf_dir / name} yet")
    return network, rest


def prev_result(pod: CniPod, version: str) -> Obj:
    """What local mode's own plugin would have returned: the pod's interface and address."""
    return {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": pod.netns}],
        "ips": [{"address": f"{pod.ip}/{pod.prefix}", "interface": 0}],
    }


def plugin_env(command: str, pod: CniPod, bin_dir: Path) -> dict[str, str]:
    """The spec's environment for ``pod``, with the arguments a kubelet passes."""
    args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod.namespace};K8S_POD_NAME={pod.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}")  # fmt: skip
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": args,
        "CNI_PATH": str(bin_dir),
    }


async def run_plugin(
    chain: NodeChain, network: Obj, plugin: Obj, command: str, pod: CniPod, prev: Obj
) -> Obj | None:
    """One plugin of the chain: its result (ADD), or None; ``ChainError`` if it fails."""
    kind = str(plugin.get("type"))
    version = str(network.get("cniVersion") or CNI_VERSION)
    conf = {**plugin, "cniVersion": version, "name": network.get("name"), "prevResult": prev}
    seconds = ADD_SECONDS if command == "ADD" else DEL_SECONDS
    try:
        with trio.fail_after(seconds):
            done = await trio.run_process(
                [str(chain.bin_dir / kind)], stdin=json.dumps(conf).encode(),
                capture_stdout=True, capture_stderr=True, check=False,
                env=plugin_env(command, pod, chain.bin_dir),
            )  # fmt: skip
    except OSError as exc:
        raise ChainError(f"cannot run {kind} from {chain.bin_dir}: {exc}") from exc
    except trio.TooSlowError:
        raise ChainError(f"{kind} {command} did not finish within {seconds:g} s") from None
    if done.returncode != 0:
        raise ChainError(f"{kind} {command} failed: {_error_of(done.stdout, done.stderr)}")
    if command != "ADD":
        return None
    try:
        result = json.loads(done.stdout)
    except ValueError as exc:
        raise ChainError(f"{kind} ADD printed no JSON result: {exc}") from exc
    if not isinstance(result, dict):
        raise ChainError(f"{kind} ADD printed {type(result).__name__}, not a result object")
    return result


def _error_of(stdout: bytes, stderr: bytes) -> str:
    """The spec's error (``msg``, ``details``, ``code``) a plugin printed, in one line."""
    try:
        error = json.loads(stdout)
        text = str(error["msg"])
        if error.get("details"):
            text += f": {error['details']}"
        return f"{text} (code {error.get('code')})"
    except (ValueError, KeyError, TypeError):
        said = (stdout + stderr).decode("utf-8", "replace").strip()
        return said[-500:] or "no output"


async def run_chain(chain: NodeChain, command: str, pod: CniPod) -> None:
    """``ADD`` (each plugin after the first, in order, each given the last's result) or
    ``DEL`` (in reverse, each given what the pod's ADD began with)."""
    network, plugins = await trio.to_thread.run_sync(chained, chain.conf_dir)
    prev = prev_result(pod, str(network.get("cniVersion") or CNI_VERSION))
    if command == "DEL":
        failures = []
        for plugin in reversed(plugins):
            try:
                await run_plugin(chain, network, plugin, "DEL", pod, prev)
            except ChainError as exc:
                failures.append(str(exc))
        if failures:
            raise ChainError("; ".join(failures))
        return
    for plugin in plugins:
        prev = await run_plugin(chain, network, plugin, command, pod, prev) or prev


@dataclass
class CniRuntime:
    """Runs each pod's ADD and DEL through its node's chain (``chain_for(node)``)."""

    chain_for: Callable[[str], NodeChain]
    pods: dict[tuple[str, str], tuple[CniPod, trio.CancelScope]] = field(default_factory=dict)
    last_error: dict[CniPod, str] = field(default_factory=dict)
    added: dict[tuple[str, str], trio.Event] = field(default_factory=dict)  # (uid, ip): set
    # once the ADD of the pod with that uid and IP succeeded

    async def wait_added(self, uid: str, ip: str) -> None:
        """Returns once the ADD of the pod with ``uid`` at ``ip`` succeeded (a pod made
        again has another uid or address, so an earlier ADD never counts for it)."""
        await self.added.setdefault((uid, ip), trio.Event()).wait()

    def failing(self) -> dict[tuple[str, str], str]:
        """The last error of each pod whose ADD has not succeeded yet, by (namespace, name)."""
        return {(p.namespace, p.name): self.last_error[p]
                for p, _ in self.pods.values() if p in self.last_error}  # fmt: skip

    def _succeeded(self, pod: CniPod) -> bool:
        event = self.added.get((pod.uid, pod.ip))
        return event is not None and event.is_set()

    def pending(self) -> list[str]:
        """A line for each pod whose ADD has not succeeded yet."""
        lines = []
        for p, _ in self.pods.values():
            if not self._succeeded(p):
                why = self.last_error.get(p, "not run yet")
                lines.append(f"pod {p.namespace}/{p.name}: its CNI ADD has not succeeded: {why}")
        return lines

    def update(self, nursery: trio.Nursery, current: Iterable[CniPod]) -> None:
        """The pods that exist now: ADD for new ones, DEL for those gone or changed."""
        wanted = {(p.namespace, p.name): p for p in current}
        gone: dict[tuple[str, str], CniPod] = {}
        for key, (pod, scope) in list(self.pods.items()):
            if wanted.get(key) != pod:
                scope.cancel()
                del self.pods[key]
                self.last_error.pop(pod, None)
                self.added.pop((pod.uid, pod.ip), None)
                gone[key] = pod
        for key, pod in gone.items():
            if key not in wanted:
                nursery.start_soon(self._delete, pod)
        for key, pod in wanted.items():
            if key not in self.pods:
                scope = trio.CancelScope()
                self.pods[key] = (pod, scope)
                # A pod made again (another uid or address): its DEL first, then its ADD.
                nursery.start_soon(self._add, pod, scope, gone.get(key))

    async def _add(self, pod: CniPod, scope: trio.CancelScope, old: CniPod | None) -> None:
        if old is not None:
            await self._delete(old)
        failures = 0
        with scope:
            while True:
                try:
                    await run_chain(self.chain_for(pod.node), "ADD", pod)
                except ChainError as exc:
                    failures += 1
                    self.last_error[pod] = str(exc)
                    if failures == 1 or failures % 10 == 0:
                        log.warning("cni_add_failed", pod=f"{pod.namespace}/{pod.name}",
                                    node=pod.node, attempts=failures, reason=str(exc))  # fmt: skip
                    await trio.sleep(RETRY.delay(failures))
                    continue
                self.last_error.pop(pod, None)
                self.added.setdefault((pod.uid, pod.ip), trio.Event()).set()
                log.info("cni_add_done", pod=f"{pod.namespace}/{pod.name}", node=pod.node,
                         attempts=failures + 1)  # fmt: skip
                return

    async def _delete(self, pod: CniPod) -> None:
        # The agent also forgets a pod the objects no longer have, on its own.
        try:
            await run_chain(self.chain_for(pod.node), "DEL", pod)
        except ChainError as exc:
            log.info("cni_del_failed", pod=f"{pod.namespace}/{pod.name}", reason=str(exc))
