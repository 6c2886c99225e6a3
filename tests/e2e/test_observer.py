"""The control plane's observer in local mode: with a FaultInjection aborting half of a
route's requests and real traffic through the waypoint, the route and the FaultInjection
show the ``FI`` count in ``ambit get ... -o yaml`` (condition ``ambit.io/LocalReplies``),
and ``/debug/graph`` on the control plane's 15014 has the edge with its rate and a
success rate below 1."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from k8s.local_replies import CONDITION_LOCAL_REPLIES, round2
from tests.e2e.conftest import Cluster, eventually, run
from tests.e2e.test_waypoint_resilience import extension, h2load, route, rule, up

pytestmark = pytest.mark.root

ABORT_HALF = """\
apiVersion: networking.ambit.io/v1alpha1
kind: FaultInjection
metadata: {name: abort-half, namespace: demo}
spec:
  abort: {httpStatus: 503, percentage: {value: 50}}
"""
SERVICE = "server.demo.svc.cluster.local"


async def local_replies(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    """The object's LocalReplies condition as ``ambit get KIND NAME -o yaml`` shows it."""
    done = await cluster.ambit("get", kind, name, "-n", "demo", "-o", "yaml")
    assert done.returncode == 0, done.stderr.decode()
    status = yaml.safe_load(done.stdout).get("status") or {}
    found = [c for c in status.get("conditions") or () if c["type"] == CONDITION_LOCAL_REPLIES]
    return found[0] if found else None


async def test_a_fault_shows_on_the_route_and_in_the_graph(cluster: Cluster) -> None:
    await up(cluster, ABORT_HALF,
             route(rule("/abort", extension("FaultInjection", "abort-half"))))  # fmt: skip
    got = await h2load(cluster, "http://server/abort", "-n", "400", "-c", "4")
    aborted = got["5xx"]
    print(f"\n400 requests, abort 50%: {aborted} aborted")
    assert 120 <= aborted <= 280
    # The count the waypoint reported, as the condition rounds it; the first write can
    # catch the traffic half-way, and a new message waits for the condition's hold (60 s).
    expected = f"{round2(aborted)} FI (fault injected)"
    shown: dict[str, dict[str, Any] | None] = {}

    async def on_both() -> bool:
        for kind, name in (("httproute", "server"), ("faultinjection", "abort-half")):
            shown[kind] = await local_replies(cluster, kind, name)
        return all(c is not None and expected in c["message"] for c in shown.values())

    assert await eventually(on_both, seconds=90, poll=2.0), shown
    condition = shown["httproute"]
    assert condition is not None
    print(f"route's condition: {condition['message']}")
    assert (condition["status"], condition["reason"]) == ("True", "ResponseFlags")
    assert "at waypoint demo/waypoint" in condition["message"]

    host = cluster.pod_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"  # the bridge's address
    url = f"http://{host}:15014/debug/graph?window=300"
    edge: dict[str, Any] = {}

    async def whole() -> bool:
        # The condition rounds (200 FI for 195 to 204), so it can show before the scrape
        # that counted the last requests: the graph has them all one scrape (5 s) later.
        nonlocal edge
        result = await run(["curl", "-s", "-m", "5", url])
        assert result.returncode == 0, result.stderr.decode()
        graph = json.loads(result.stdout)
        [edge] = [e for e in graph["edges"]
                  if e["destination"] == SERVICE and e["protocol"] == "http"]  # fmt: skip
        return bool(edge["requests"] >= 400)

    assert await eventually(whole, seconds=20, poll=1.0), edge
    print(f"edge: {edge}")
    assert edge["source"] == {"namespace": "demo", "workload": "client"}
    assert edge["reporter"] == "waypoint"
    assert edge["requests"] >= 400
    assert edge["per_second"] > 0
    assert 0 < edge["success_rate"] < 1
    assert edge["response_flags"]["FI"] == aborted
    assert edge["mtls"] is True
