"""How ``ambit get`` prints: kubectl-style tables of pods, workloads, Services, nodes,
routes (with their ``Accepted`` and ``ResolvedRefs``) and objects, and the one-word
STATUS and AGE columns, and YAML (:func:`yaml_text`). Output only."""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Sequence
from typing import Any, Final

LOCAL_REPLIES: Final = "ambit.io/LocalReplies"  # k8s.local_replies: the waypoints' flags
# The kinds whose table shows it beside the routes'.
TRAFFIC_KINDS: Final = ("DestinationRule", "BackendTrafficPolicy", "FaultInjection",
                        "LocalRateLimit")  # fmt: skip


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def status(item: dict[str, Any]) -> str:
    """One word for the conditions: the reason of the first that is not True, or, when
    all are True, the pod's phase or the last condition's reason. ``ambit.io/LocalReplies``
    says what traffic met, not how the object is: left out (:func:`local_replies`)."""
    status = item.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != LOCAL_REPLIES]
    for c in conditions:
        if c.get("status") != "True":
            return f"{c.get('reason')} ({c.get('type')})"
    if "phase" in status:
        return str(status["phase"])
    return str(conditions[-1].get("reason")) if conditions else "-"


def local_replies(item: dict[str, Any]) -> str:
    """The counts of a True ``ambit.io/LocalReplies`` (``80 UO,3 URX``), else ``-``."""
    for c in (item.get("status") or {}).get("conditions") or []:
        if c.get("type") == LOCAL_REPLIES and c.get("status") == "True":
            counts = re.findall(r"(\d+) ([A-Z]+)\b", str(c.get("message")).partition(": ")[2])
            return ",".join(f"{n} {flag}" for n, flag in counts) or "-"
    return "-"


def age(item: dict[str, Any]) -> str:
    created = item["metadata"].get("creationTimestamp")
    try:
        then = datetime.datetime.strptime(str(created), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return "-"
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return duration((now - then).total_seconds())


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "   ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _pod_status(pod: dict[str, Any]) -> str:
    if pod["phase"] == "Exited":
        return f"Exited({pod['exit_code']})"
    return str(pod["phase"])


def _captured(pod: dict[str, Any]) -> str:
    if not pod["meshed"]:
        return "-"
    if pod.get("native_tunnel"):
        return "native"  # a waypoint: speaks HBONE itself
    if pod["captured"] is False and pod.get("capture_error"):
        return f"no ({pod['capture_error']})"  # the node agent's reason
    return {True: "yes", False: "no", None: "unknown"}[pod["captured"]]


def pods_table(pods: list[dict[str, Any]], all_namespaces: bool) -> str:
    header = ["NAME", "STATUS", "IP", "NODE", "IDENTITY", "CAPTURED"]
    rows = [
        [p["name"], _pod_status(p), p["ip"], p["node"], p["identity"], _captured(p)] for p in pods
    ]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
        for row, pod in zip(rows, pods, strict=True):
            row.insert(0, pod["namespace"])
    return table(header, rows)


def workloads_table(pods: list[dict[str, Any]]) -> str:
    return table(
        ["NAMESPACE", "NAME", "IP", "NODE", "IDENTITY", "PROTOCOL", "CAPTURED"],
        [
            [
                p["namespace"],
                p["name"],
                p["ip"],
                p["node"],
                p["identity"],
                "HBONE" if p["meshed"] and (p["captured"] or p.get("native_tunnel")) else "TCP",
                _captured(p),
            ]
            for p in pods
        ],
    )


def services_table(services: list[dict[str, Any]], all_namespaces: bool) -> str:
    rows = []
    for s in services:
        ports = ",".join(f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in s["ports"])
        endpoints = sorted({f"{e['ip']}:{e['port']}" for p in s["ports"] for e in p["endpoints"]})
        row = [s["name"], s["vip"], ports or "<none>", ",".join(endpoints) or "<none>"]
        rows.append([s["namespace"], *row] if all_namespaces else row)
    header = ["NAME", "CLUSTER-IP", "PORT(S)", "ENDPOINTS"]
    return table(["NAMESPACE", *header] if all_namespaces else header, rows)


def ztunnel_status(node: dict[str, Any]) -> str:
    if node["ztunnel_pid"] is None:
        return "<none>"
    if node["ztunnel_exit_code"] is not None:
        return f"Exited({node['ztunnel_exit_code']})"
    return f"Running (pid {node['ztunnel_pid']})"


def condition(item: dict[str, Any], kind: str) -> str:
    """One condition in a word or two: ``True``, or its status and reason
    (``False (BackendNotFound)``); ``-`` while it has not been written."""
    for c in (item.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return "True" if c.get("status") == "True" else f"{c.get('status')} ({c.get('reason')})"
    return "-"


def routes_table(items: list[dict[str, Any]], all_namespaces: bool) -> str:
    """HTTPRoutes or GRPCRoutes as kubectl lists them (NAME, HOSTNAMES, AGE), with their
    ``Accepted`` and ``ResolvedRefs`` conditions and their Services' local replies."""
    rows = []
    for i in items:
        hostnames = ",".join((i.get("spec") or {}).get("hostnames") or []) or "*"
        accepted, resolved = condition(i, "Accepted"), condition(i, "ResolvedRefs")
        row = [i["metadata"]["name"], hostnames, accepted, resolved, local_replies(i), age(i)]
        rows.append([i["metadata"]["namespace"], *row] if all_namespaces else row)
    header = ["NAME", "HOSTNAMES", "ACCEPTED", "RESOLVED", "LOCAL-REPLIES", "AGE"]
    return table(["NAMESPACE", *header] if all_namespaces else header, rows)


def yaml_text(document: Any) -> str:
    """``document`` as YAML, keys in their order (``-o yaml``, a manifest printed); yaml is
    imported here, not at the top: the proxies ``ambit`` runs never load it."""
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


def yaml_all(documents: Sequence[Any]) -> str:
    """Several documents as one multi-document YAML stream (a manifest to apply)."""
    import yaml

    return yaml.safe_dump_all(documents)


def print_applied(result: dict[str, Any]) -> int:
    """What the local cluster said of an apply or delete, as ``kubectl`` prints it: a line
    per object changed on stdout, a warning per object ignored and an error per object
    refused on stderr; the exit code (1 if any was refused)."""
    for line in result["changes"]:
        print(line)
    for warning in result.get("ignored", ()):
        print(f"warning: {warning}", file=sys.stderr)
    for error in result["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if result["errors"] else 0
