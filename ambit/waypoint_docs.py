"""What ``ambit waypoint`` knows of a waypoint's Gateway document, whichever cluster it
reads it from (the local one, :mod:`ambit.cmd_waypoint`; Kubernetes,
:mod:`ambit.cmd_waypoint_cluster`): the document ``generate`` and ``apply`` write, whether
a Gateway is a waypoint, its conditions and traffic, ``list``'s table, and what ``status``
says of a waypoint that does not exist: the Services whose labels still bind them to it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ambit import tables
from mesh.constants import LABEL_WAYPOINT_FOR, WAYPOINT_CLASSES

WAYPOINT_CLASS: Final = "ambit-waypoint"
_FOR_LABELS: Final = (LABEL_WAYPOINT_FOR, "istio.io/waypoint-for")


def gateway_document(namespace: str, name: str, for_traffic: str) -> dict[str, Any]:
    """A waypoint's Gateway, as ``istioctl waypoint generate`` writes Istio's."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_WAYPOINT_FOR: for_traffic},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def is_waypoint(doc: dict[str, Any]) -> bool:
    return (doc.get("spec") or {}).get("gatewayClassName") in WAYPOINT_CLASSES


def condition(doc: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = (doc.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def waypoint_for(doc: dict[str, Any]) -> str:
    labels = doc["metadata"].get("labels") or {}
    return next((labels[k] for k in _FOR_LABELS if k in labels), "service")


def print_waypoints(waypoints: list[dict[str, Any]], namespace: str | None) -> None:
    """``ambit waypoint list``'s table (``namespace`` None: every namespace's)."""
    if not waypoints:
        print("No waypoints found" + ("" if namespace is None else f" in namespace {namespace}"))
        return
    header = ["NAME", "CLASS", "FOR", "PROGRAMMED", "AGE"]
    rows = []
    for doc in waypoints:
        programmed = condition(doc, "Programmed")
        rows.append([
            doc["metadata"]["name"], doc["spec"]["gatewayClassName"], waypoint_for(doc),
            programmed["status"] if programmed else "Unknown", tables.age(doc),
        ])  # fmt: skip
        if namespace is None:
            rows[-1].insert(0, doc["metadata"]["namespace"])
    print(tables.table((["NAMESPACE"] if namespace is None else []) + header, rows))


def bound_services(
    key: str, namespaces: Iterable[dict[str, Any]], services: Iterable[dict[str, Any]]
) -> list[str]:
    """The Services (``namespace/name``) whose ``use-waypoint`` labels bind them to waypoint
    ``key`` (``namespace/name``), as the control plane binds them
    (:func:`k8s.translate_l7.use_waypoint`): the Service's own labels (``ambit.io/`` or
    ``istio.io/use-waypoint``, with its ``-namespace`` label; ``none`` opts out), else its
    Namespace's. The waypoint's own Service never goes through it."""
    from k8s.translate_l7 import use_waypoint

    def named(doc: dict[str, Any], namespace: str) -> str | None:
        return use_waypoint(tuple(((doc.get("metadata") or {}).get("labels") or {}).items()),
                            namespace)  # fmt: skip

    by_namespace = {d["metadata"]["name"]: named(d, d["metadata"]["name"]) for d in namespaces}
    found = []
    for doc in services:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        wanted = named(doc, ns)
        if wanted is None:
            wanted = by_namespace.get(ns)
        if wanted == key and f"{ns}/{name}" != key:
            found.append(f"{ns}/{name}")
    return sorted(found)


def missing_waypoint(namespace: str, name: str, users: Iterable[str]) -> str:
    """What ``status`` says of waypoint ``namespace/name`` that does not exist, naming the
    Services still bound to it (``users``, :func:`bound_services`): their traffic is
    refused, never sent around the waypoint."""
    lines = [f"no waypoint {name} in namespace {namespace}"]
    lines += [f"  Service {user} still uses it: its traffic is refused until the waypoint"
              " exists or the label is removed" for user in users]  # fmt: skip
    return "\n".join(lines)
