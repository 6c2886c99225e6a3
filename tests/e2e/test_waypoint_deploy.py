"""A waypoint deployed in local mode, through the real ``ambit`` command: ``ambit waypoint
apply --enroll-namespace`` makes its pod (Running, its own identity, listed as the
component ``waypoint/NS/NAME``), its Service gets a VIP, its Gateway turns Programmed;
``ambit waypoint delete`` takes pod, Service and ServiceAccount away.

It needs the waypoint proxy itself (``waypoint/main.py``), which ``ambit waypoint run``
starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Cluster, demo_manifest, eventually

pytestmark = [
    pytest.mark.root,
    # The tree the pods run (an installed package elsewhere does not count).
    pytest.mark.skipif(
        not (Path(__file__).resolve().parents[2] / "waypoint" / "main.py").exists(),
        reason="the waypoint proxy (waypoint/main.py) is not built in this tree",
    ),
]

MESHED = demo_manifest().replace(
    "metadata: {name: demo}", "metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}"
)
LABEL = "gateway.networking.k8s.io/gateway-name"


async def test_a_waypoint_is_applied_runs_and_is_deleted(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("demo.yaml", MESHED))
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()
    assert applied.stdout.decode().splitlines() == [
        "Gateway demo/waypoint created",
        "Namespace demo configured",
    ], "the derived objects are not printed, as kubectl prints only what it was given"

    async def waypoint_pod() -> dict[str, Any] | None:
        pods = await cluster.get("pods", "-n", "demo")
        return next((p for p in pods if p["labels"].get(LABEL) == "waypoint"), None)

    async def running() -> bool:
        pod = await waypoint_pod()
        return pod is not None and pod["phase"] == "Running"

    assert await eventually(running, seconds=30)
    pod = await waypoint_pod()
    assert pod is not None
    assert pod["identity"] == "spiffe://cluster.local/ns/demo/sa/waypoint"
    assert pod["native_tunnel"]
    assert pod["component"] == "waypoint/demo/waypoint"
    table = await cluster.ambit("get", "pods", "-n", "demo")
    assert f"{pod['name']}" in table.stdout.decode()

    components = {c["name"]: c for c in await cluster.get("components")}
    assert components["waypoint/demo/waypoint"]["status"] == "Running"
    # Its certificate came from a helper process: the proxy never maps cryptography's
    # library (8 MB of its memory, mesh/credential.py); its identity above is served.
    maps = await trio.Path(f"/proc/{components['waypoint/demo/waypoint']['pid']}/maps").read_text()
    assert "python" in maps
    assert "cryptography" not in maps
    assert "_rust.abi3" not in maps

    services = {s["name"]: s for s in await cluster.get("services", "-n", "demo")}
    assert services["waypoint"]["vip"]
    assert {p["port"] for p in services["waypoint"]["ports"]} == {15008, 15021}
    accounts = await cluster.get("serviceaccounts", "-n", "demo")
    assert "waypoint" in [a["metadata"]["name"] for a in accounts]

    async def programmed() -> bool:
        shown = await cluster.ambit("get", "gateway", "waypoint", "-n", "demo", "-o", "json")
        assert shown.returncode == 0, shown.stderr.decode()
        status = json.loads(shown.stdout).get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return conditions.get("Programmed") == "True"

    assert await eventually(programmed, seconds=30)
    listed = await cluster.ambit("waypoint", "list", "-n", "demo")
    assert listed.stdout.decode().split("\n")[1].split()[:4] == [
        "waypoint", "ambit-waypoint", "service", "True",
    ]  # fmt: skip
    status = await cluster.ambit("waypoint", "status", "-n", "demo")
    assert "Programmed: True" in status.stdout.decode()

    deleted = await cluster.ambit("waypoint", "delete", "waypoint", "-n", "demo")
    assert deleted.returncode == 0, deleted.stderr.decode()
    assert deleted.stdout.decode().splitlines() == ["Gateway demo/waypoint deleted"]

    # The namespace still asks for it: status says who is left refused, not just "none".
    async def refused_named() -> bool:
        gone = await cluster.ambit("waypoint", "status", "-n", "demo")
        assert gone.returncode == 1
        return "Service demo/server still uses it" in gone.stderr.decode()

    assert await eventually(refused_named, seconds=30)
    assert await waypoint_pod() is None
    assert "waypoint" not in {s["name"] for s in await cluster.get("services", "-n", "demo")}
    accounts = await cluster.get("serviceaccounts", "-n", "demo")
    assert "waypoint" not in [a["metadata"]["name"] for a in accounts]
    assert "waypoint/demo/waypoint" not in {c["name"] for c in await cluster.get("components")}
