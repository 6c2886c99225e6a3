"""What ``ambit waypoint`` knows of a waypoint's Gateway document, whichever cluster it
reads it from (the local one, :mod:`ambit.cmd_waypoint`; Kubernetes,
:mod:`ambit.cmd_waypoint_cluster`): the document ``generate`` and ``apply`` write, whether
a Gateway is a waypoint, its conditions and traffic, and ``list``'s table."""

from __future__ import annotations

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
