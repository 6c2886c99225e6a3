"""``ambit tap`` in local mode, as a user runs it: a subprocess of the real command while
curl in the client pod sends traffic, first straight through the ztunnels (one event per
TCP connection), then through a waypoint (one event per HTTP request); and refused to a
user who cannot read the cluster's state."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Cluster, demo_manifest, eventually

pytestmark = pytest.mark.root

MESHED = demo_manifest().replace(
    "metadata: {name: demo}", "metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}"
)
CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/default"
TAP_SECONDS = 40.0


async def tap_while_curling(cluster: Cluster, url: str, *args: str) -> list[dict[str, Any]]:
    """Run ``ambit tap ARGS -o json`` while the client pod curls ``url`` every 0.3 s (the
    tap only sees what happens once it is open); its JSON lines."""
    result = await run_tap(cluster, url, *args, "-o", "json")
    return [json.loads(line) for line in result.stdout.splitlines()]


async def run_tap(cluster: Cluster, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def tapping() -> None:
        done.append(await cluster.ambit("tap", *args, seconds=TAP_SECONDS))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tapping)
        with trio.move_on_after(TAP_SECONDS):
            while not done:
                await cluster.exec("client", "curl", "-s", "-m", "3", "-o", "/dev/null", url)
                await trio.sleep(0.3)
    result = done[0]
    assert result.returncode == 0, result.stderr.decode()
    assert b"tapping" in result.stderr  # said to the person, not mixed into the events
    return result


async def bound(cluster: Cluster) -> bool:
    shown = await cluster.ambit("get", "service", "server", "-n", "demo", "-o", "json")
    conditions = json.loads(shown.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "ambit.io/WaypointBound" and c["status"] == "True" for c in conditions)


async def test_tap_shows_connections_at_ztunnels_and_requests_at_the_waypoint(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", MESHED))

    # Straight from pod to pod: each connection, as the ztunnels on both ends close it.
    lines = await tap_while_curling(cluster, "http://server/", "pod/demo/server", "--max", "4")
    events = [e for e in lines if e["type"] == "event"]
    assert len(events) == 4
    assert {e["kind"] for e in events} == {"tcp"}
    assert {e["dst_workload"] for e in events} == {"demo/server"}
    inbound = [e for e in events if e["direction"] == "inbound"]
    assert inbound, events
    assert {(e["proxy"], e["src_identity"], e["src_workload"]) for e in inbound} == {
        ("ztunnel/node-2", CLIENT_ID, "demo/client")
    }
    assert all(e["bytes_sent"] > 0 and e["flags"] == "-" for e in inbound)

    # Through a waypoint: one line per request, filtered in the proxies by method and path.
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()
    assert await eventually(lambda: bound(cluster), seconds=30)
    lines = await tap_while_curling(
        cluster, "http://server/?from=tap", "svc/demo/server", "--method", "GET",
        "--path", "/?from", "--max", "2",
    )  # fmt: skip
    events = [e for e in lines if e["type"] == "event"]
    assert len(events) == 2
    for e in events:
        assert (e["kind"], e["reporter"], e["method"], e["path"], e["status"]) == (
            "http",
            "waypoint",
            "GET",
            "/?from=tap",
            200,
        )
        assert (e["src_identity"], e["src_workload"]) == (CLIENT_ID, "demo/client")
        assert e["proxy"].startswith("waypoint/demo/")
        assert (e["dst_workload"], e["dst_service"]) == ("demo/server", "demo/server")
        assert e["authority"].startswith("server")
        assert e["bytes_sent"] > 0


async def test_tap_prints_a_line_per_connection_and_refuses_without_the_token(
    cluster: Cluster,
) -> None:
    await cluster.up(cluster.manifest("demo.yaml", MESHED))
    printed = await run_tap(cluster, "http://server/", "pod/demo/client", "--max", "1")
    line = printed.stdout.decode()
    assert line.count("\n") == 1
    assert " tcp ztunnel/node-" in line
    assert f"{CLIENT_ID} " in line
    assert " -> demo/server " in line
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    refused = await cluster.ambit("tap", "ns/demo", "--max", "1", run_as=nobody)
    assert refused.returncode == 1
    assert b"needs root" in refused.stderr
    # The control plane's tap API refuses a caller without the cluster's token.
    tap_json = json.loads((cluster.state_dir / "mesh" / "tap.json").read_text())
    assert (cluster.state_dir / "mesh" / "tap.json").stat().st_mode & 0o077 == 0
    host, _, port = tap_json["server"].rpartition(":")
    url = f"https://{host}:{port}/v1/tap?target=ns/demo"
    # -k: the certificate names a SPIFFE id, not a host name curl could check.
    with trio.fail_after(10):
        answer = await trio.run_process(
            ["curl", "-s", "-k", "-o", "/dev/null", "-w", "%{http_code}",
             "-H", "authorization: Bearer not-the-token", url],
            capture_stdout=True, check=False,
        )  # fmt: skip
    assert answer.stdout == b"401"
