"""What the node agent knows of a pod, and the one decision it makes about it: whether
its traffic is captured on this node. Pure functions over the API's JSON."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from k8s.translate_parts import meshed_by_labels

Raw = Mapping[str, Any]


@dataclass(frozen=True)
class PodView:
    uid: str
    namespace: str
    name: str
    service_account: str
    node: str
    ips: tuple[str, ...]
    host_network: bool
    phase: str
    labels: Mapping[str, str]
    deleting: bool

    @property
    def key(self) -> str:
        """``namespace/name``: the workload's uid in the mesh model and in ztunnel."""
        return f"{self.namespace}/{self.name}"


def pod_view(raw: Raw) -> PodView:
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    return PodView(
        uid=str(meta.get("uid") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        service_account=str(spec.get("serviceAccountName") or "default"),
        node=str(spec.get("nodeName") or ""),
        ips=tuple(ips),
        host_network=bool(spec.get("hostNetwork")),
        phase=str(status.get("phase") or "Pending"),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        deleting=meta.get("deletionTimestamp") is not None,
    )


def skip_reason(
    pod: PodView, namespace_labels: Mapping[str, str] | None, excluded: Collection[str]
) -> str | None:
    """None when ``pod`` is captured on its node; otherwise why not, in words.

    The label rule is the mesh's one rule (:func:`k8s.translate_parts.meshed_by_labels`):
    a waypoint's pod is labelled out of the mesh by its deployer (it speaks HBONE itself)."""
    if pod.namespace in excluded:
        return f"namespace {pod.namespace} is excluded from the mesh on nodes"
    if pod.host_network:
        return "the pod uses the host's network"
    if pod.phase in ("Succeeded", "Failed"):
        return f"the pod has finished ({pod.phase})"
    if not meshed_by_labels(pod.labels, namespace_labels):
        return "not in the mesh (no dataplane-mode=ambient on the pod or its namespace)"
    return None


def ipv4s(ips: Collection[str]) -> tuple[str, ...]:
    """The IPv4 addresses among ``ips`` (the mesh is IPv4 today), in order, deduplicated."""
    out: list[str] = []
    for ip in ips:
        try:
            if ipaddress.ip_address(ip).version == 4 and ip not in out:
                out.append(ip)
        except ValueError:
            continue
    return tuple(out)


def ips_of_result(result: Raw) -> tuple[str, ...]:
    """The pod's addresses in a CNI result (``ips[].address``, CIDR notation)."""
    found: list[str] = []
    for entry in result.get("ips") or []:
        address = str((entry or {}).get("address") or "")
        if address:
            found.append(address.split("/", 1)[0])
    return ipv4s(found)
