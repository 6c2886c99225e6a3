"""An HTTPRoute's ``retry`` in local mode, with the real ``ambit`` command and curl in the
client pod: the waypoint sends a request again when the server answers 503, the client
gets the server's eventual 200, and a request that still fails after its retries comes
back as the server's 503 with ``URX`` in the waypoint's access log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Cluster, eventually
from tests.e2e.test_waypoint_traffic import curl, up_with_a_waypoint, waypoint_pod

pytestmark = pytest.mark.root

# /flaky answers 503 to its first two requests, then 200; /down always 503; /count says
# how many requests each path got.
FLAKY_SERVER = (
    "import http.server, collections, json\n"
    "seen = collections.Counter()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version = 'HTTP/1.1'\n"
    "    def do_GET(self):\n"
    "        seen[self.path] += 1\n"
    "        code = 200\n"
    "        if self.path == '/flaky' and seen[self.path] <= 2: code = 503\n"
    "        if self.path == '/down': code = 503\n"
    "        body = (json.dumps(seen) if self.path == '/count' else 'x').encode()\n"
    "        self.send_response(code); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
)
ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules:
  - matches: [{path: {type: Exact, value: /flaky}}, {path: {type: Exact, value: /down}}]
    retry: {codes: [503], attempts: 3, backoff: 10ms}
    backendRefs: [{name: server, port: 80}]
  - backendRefs: [{name: server, port: 80}]
"""


async def test_a_route_retry_turns_two_503s_into_the_servers_200(cluster: Cluster) -> None:
    await up_with_a_waypoint(cluster, FLAKY_SERVER)
    await cluster.ambit("apply", "-f", str(cluster.manifest("route.yaml", ROUTE)))

    async def retried() -> bool:  # the route's retry is in the waypoint's config now
        if await curl(cluster, "http://server/down") != "503":
            return False
        down = [r for r in await requests(cluster) if r["path"] == "/down"]
        return bool(down) and down[-1]["response_flags"] == "URX"

    assert await eventually(retried, seconds=20)
    before = await counts(cluster)
    assert await curl(cluster, "http://server/down") == "503"
    assert (await counts(cluster))["/down"] - before["/down"] == 4  # the try and 3 retries
    assert await curl(cluster, "http://server/flaky") == "200"
    last = [r for r in await requests(cluster) if r["path"] == "/flaky"][-1]
    assert (last["response_code"], last["response_flags"]) == (200, "-")
    assert (await counts(cluster))["/flaky"] == 3  # two 503s, then the 200 the client got


async def counts(cluster: Cluster) -> dict[str, int]:
    """How many requests the server got, by path."""
    answer = await cluster.exec("client", "curl", "-s", "-m", "5", "http://server/count")
    seen: dict[str, int] = json.loads(answer.stdout)
    return seen


async def requests(cluster: Cluster) -> list[dict[str, Any]]:
    """The waypoint's access-log lines."""
    pod = await waypoint_pod(cluster)
    assert pod is not None
    logs = await cluster.ambit("logs", "pod/" + pod["name"], "-n", "demo")
    lines = (json.loads(raw) for raw in logs.stdout.splitlines() if raw.startswith(b"{"))
    return [line for line in lines if line.get("event") == "request"]
