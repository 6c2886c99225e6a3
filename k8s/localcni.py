"""Local mode as the container runtime: what the CNI plugin sends a node agent on a
Kubernetes node, the local cluster sends its node's agent itself (docs/node.md,
"Plugin to agent": ``cni.sock``, one JSON line each way).

For every pod (meshed or not) with its network namespace and address, :class:`CniRuntime`
sends ``ADD`` once, and again until the agent answers ``enrolled`` or ``skipped`` (a
kubelet retries a failed sandbox the same way; the agent may be starting or
restarting); when the pod goes, or comes back with another uid or address, ``DEL``.
Each pod's ADD runs in its own task under the runtime's nursery, cancelled when the pod
goes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from mesh.backoff import Backoff
from mesh.jsonline import receive_object

log = structlog.get_logger("k8s.localcni")

RETRY = Backoff(initial=0.1, maximum=1.0)  # one machine: the agent is seconds away at most
ANSWER_SECONDS = 25.0  # the agent answers an ADD within its own bounds (20 s)
DEL_SECONDS = 2.0
MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class CniPod:
    """A pod as the runtime knows it once its network is set up."""

    node: str
    namespace: str
    name: str
    uid: str
    netns: str  # a path: /run/netns/NAME
    ip: str


def cni_request(command: str, pod: CniPod) -> dict[str, Any]:
    """The plugin's request for ``pod`` (pure)."""
    return {
        "command": command,
        "containerId": f"{pod.namespace}_{pod.name}_{pod.uid}",
        "netns": pod.netns,
        "ifname": "eth0",
        "pod": {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
        "ips": [pod.ip],
    }


async def send(path: Path, request: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """One request to the agent's socket at ``path``: its answer, or ``{"error": ...}``
    when it cannot be asked or does not answer in time."""
    try:
        with trio.fail_after(seconds):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(json.dumps(request).encode() + b"\n")
                return await receive_object(stream, MAX_ANSWER)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        return {"error": f"the node agent at {path} did not answer: {exc or 'timed out'}"}
    except ValueError as exc:
        return {"error": f"the node agent at {path} answered no JSON object: {exc}"}


@dataclass
class CniRuntime:
    """Sends each pod's ADD and DEL to its node's agent (``socket_for(node)``)."""

    socket_for: Callable[[str], Path]
    pods: dict[tuple[str, str], tuple[CniPod, trio.CancelScope]] = field(default_factory=dict)
    answered: set[CniPod] = field(default_factory=set)  # ADD answered enrolled or skipped

    def pending(self) -> list[str]:
        """A line for each pod whose ADD the agent has not answered yet."""
        return [
            f"pod {p.namespace}/{p.name}: its node agent has not answered its CNI ADD yet"
            for p, _ in self.pods.values()
            if p not in self.answered
        ]

    def update(self, nursery: trio.Nursery, current: Iterable[CniPod]) -> None:
        """The pods that exist now: ADD for new ones, DEL for those gone or changed."""
        wanted = {(p.namespace, p.name): p for p in current}
        gone: dict[tuple[str, str], CniPod] = {}
        for key, (pod, scope) in list(self.pods.items()):
            if wanted.get(key) != pod:
                scope.cancel()
                del self.pods[key]
                self.answered.discard(pod)
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
                answer = await send(self.socket_for(pod.node), cni_request("ADD", pod),
                                    ANSWER_SECONDS)  # fmt: skip
                if answer.get("result") in ("enrolled", "skipped"):
                    self.answered.add(pod)
                    log.info("cni_add_done", pod=f"{pod.namespace}/{pod.name}", node=pod.node,
                             result=answer["result"], reason=answer.get("reason"))  # fmt: skip
                    return
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("cni_add_failed", pod=f"{pod.namespace}/{pod.name}",
                                node=pod.node, attempts=failures,
                                reason=str(answer.get("error")))  # fmt: skip
                await trio.sleep(RETRY.delay(failures))

    async def _delete(self, pod: CniPod) -> None:
        # As the plugin's DEL: bounded, and never retried (the agent forgets a pod the
        # objects no longer have on its own).
        answer = await send(self.socket_for(pod.node), cni_request("DEL", pod), DEL_SECONDS)
        if "error" in answer:
            log.info("cni_del_unanswered", pod=f"{pod.namespace}/{pod.name}",
                     reason=str(answer["error"]))  # fmt: skip
