"""``ambit why`` against real traffic: for each case of a table (allow and deny by
principal, namespace, port, path, method and header; STRICT; a waypoint-bound Service and an
unbound one; no route) the request is sent for real with curl from the pod named as FROM,
and what the client saw must be what ``ambit why`` said: the app's answer, a status the
mesh answered itself, or a connection closed before any answer."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Cluster, eventually, run

pytestmark = pytest.mark.root

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - {name: server, command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{name: client, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: demo}
spec:
  nodeName: node-1
  serviceAccountName: intruder
  containers: [{name: intruder, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: outside}
spec:
  nodeName: node-1
  containers: [{name: outsider, command: [sleep, "600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-intruder, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/intruder]}}]}]
"""
STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
"""
L7 = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-rules, namespace: demo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/secret*]}}]
  - from: [{source: {namespaces: [demo]}}]
    to: [{operation: {methods: [DELETE]}}]
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: server, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-team, value: blue}]}]
    backendRefs: [{name: server, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}, method: GET}]
    backendRefs: [{name: server, port: 80}]
"""

ALLOW_DEMO = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: demo-only, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: ["PORT"]}}]}]
"""

APP = "app"  # the app answered (python's http.server: its Server header)
CLOSED = "closed"  # no HTTP answer at all: the connection was refused or closed


@dataclass(frozen=True)
class Case:
    pod: str  # FROM: demo/<pod> or outside/<pod>
    expected: tuple[str, int | None]  # (APP, None), (CLOSED, None) or ("mesh", status)
    method: str = "GET"
    path: str = "/"
    header: str = ""


L4_CASES = [
    Case("demo/client", (APP, None)),
    Case("demo/intruder", (CLOSED, None)),  # DENY by principal at the server's ztunnel
    Case("outside/outsider", (APP, None)),  # plaintext, PERMISSIVE
]
STRICT_CASES = [
    Case("outside/outsider", (CLOSED, None)),  # STRICT refuses plaintext
    Case("demo/client", (APP, None)),
]
WAYPOINT_CASES = [
    Case("demo/client", (APP, None)),
    Case("demo/client", ("mesh", 403), path="/secret/x"),  # DENY by path
    Case("demo/client", ("mesh", 403), method="DELETE"),  # DENY by namespace and method
    Case("demo/client", ("mesh", 403), header="x-block: yes"),  # DENY by a header
    Case("demo/client", ("mesh", 404), method="POST"),  # no route matches: 404 NR
    Case("demo/client", (APP, None), path="/api/x", header="x-team: blue"),  # header route
    Case("demo/client", (APP, None), method="HEAD", path="/api/x", header="x-team: blue"),
    # The server's ztunnel now sees the waypoint's identity, not the intruder's: the L4
    # DENY by principal no longer applies (ambit why says so, rule by rule).
    Case("demo/intruder", (APP, None)),
]


def expected_of(verdict: dict[str, object]) -> tuple[str, int | None]:
    """What ``ambit why``'s verdict says the client sees."""
    status = verdict["status"]
    if status is not None:
        assert isinstance(status, int)
        return ("mesh", status)
    return (APP, None) if verdict["allowed"] else (CLOSED, None)


async def why(cluster: Cluster, case: Case) -> dict[str, object]:
    args = ["why", case.pod, "demo/server", "--method", case.method, "--path", case.path]
    args += ["-H", case.header] if case.header else []
    result = await cluster.ambit(*args, "-o", "json")
    assert result.returncode in (0, 3), result.stderr.decode()
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


async def real(cluster: Cluster, case: Case) -> tuple[str, int | None]:
    """What curl in the pod sees: who answered and with which status."""
    namespace, pod = case.pod.split("/")
    argv = ["curl", "-s", "-m", "4", "-o", "/dev/null", "-D", "-", "-X", case.method]
    argv += ["-H", case.header] if case.header else []
    argv += ["--head"] if case.method == "HEAD" else []
    result = await cluster.exec(pod, *argv, "http://server.demo/" + case.path.lstrip("/"),
                                namespace=namespace)  # fmt: skip
    head = result.stdout.decode(errors="replace")
    if not head.startswith("HTTP/"):
        return (CLOSED, None)
    status = int(head.split()[1])
    return (APP, None) if "server: simplehttp" in head.lower() else ("mesh", status)


async def check(cluster: Cluster, cases: list[Case]) -> None:
    for case in cases:
        verdict = (await why(cluster, case))["verdict"]
        assert isinstance(verdict, dict)
        assert expected_of(verdict) == case.expected, (case, verdict)

        async def agrees(case: Case = case) -> bool:
            return await real(cluster, case) == case.expected

        assert await eventually(agrees, seconds=20), (case, await real(cluster, case))


async def test_why_says_what_the_client_sees(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("why.yaml", MANIFEST))
    await check(cluster, L4_CASES)
    text = await cluster.ambit("why", "demo/intruder", "demo/server")
    assert text.returncode == 3
    shown = text.stdout.decode()
    assert "DENY policy demo/no-intruder rule 1: matched" in shown, shown
    assert "verdict: REFUSED" in shown

    # Deleted by name (kubectl's way), the DENY no longer applies, and why says so.
    deleted = await cluster.ambit("delete", "authorizationpolicy", "no-intruder", "-n", "demo")
    assert deleted.stdout.decode().strip() == "AuthorizationPolicy demo/no-intruder deleted"
    missing = await cluster.ambit("delete", "authorizationpolicy", "no-intruder", "-n", "demo")
    assert missing.returncode == 1
    assert "not found" in missing.stderr.decode()
    await check(cluster, [Case("demo/intruder", (APP, None))])
    again = await cluster.ambit("apply", "-f", str(cluster.manifest("why.yaml", MANIFEST)))
    assert again.returncode == 0, again.stderr.decode()

    # ALLOW by namespace and port: plaintext has no namespace; another port is refused.
    allow = cluster.manifest("allow.yaml", ALLOW_DEMO.replace("PORT", "8080"))
    await cluster.ambit("apply", "-f", str(allow))
    await check(
        cluster, [Case("outside/outsider", (CLOSED, None)), Case("demo/client", (APP, None))]
    )
    allow = cluster.manifest("allow.yaml", ALLOW_DEMO.replace("PORT", "9090"))
    await cluster.ambit("apply", "-f", str(allow))
    await check(cluster, [Case("demo/client", (CLOSED, None))])
    await cluster.ambit("delete", "-f", str(allow))

    await cluster.ambit("apply", "-f", str(cluster.manifest("strict.yaml", STRICT)))
    await check(cluster, [*STRICT_CASES, Case("demo/intruder", (CLOSED, None))])

    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()
    await cluster.ambit("apply", "-f", str(cluster.manifest("l7.yaml", L7)))

    async def through_waypoint() -> bool:
        steps = (await why(cluster, WAYPOINT_CASES[0]))["steps"]
        assert isinstance(steps, list)
        return any(s["outcome"] == "via waypoint" for s in steps)

    assert await eventually(through_waypoint, seconds=30)
    await check(cluster, WAYPOINT_CASES)
    steps = (await why(cluster, WAYPOINT_CASES[0]))["steps"]
    assert isinstance(steps, list)
    plan = next(s for s in steps if s["what"] == "plan")
    assert "label ambit.io/use-waypoint=waypoint on Namespace demo" in plan["detail"], plan


async def test_the_snapshot_wants_the_operators_token(cluster: Cluster) -> None:
    """``/v1/snapshot`` is served only over the control plane's authenticated API."""
    await cluster.up(cluster.manifest("why.yaml", MANIFEST))
    settings = json.loads((cluster.state_dir / "mesh" / "tap.json").read_text())
    url = f"https://{settings['server']}/v1/snapshot"
    curl = ["curl", "-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
    assert (await run([*curl, url])).stdout == b"401"
    assert (await run([*curl, "-H", "authorization: Bearer nope", url])).stdout == b"401"
    metrics_port = settings["server"].rpartition(":")[0] + ":15014"
    assert (await run([*curl, f"http://{metrics_port}/debug/snapshot"])).stdout == b"404"
    bearer = f"authorization: Bearer {settings['token']}"
    right = await run(["curl", "-sk", "-m", "5", "-H", bearer, url])
    assert json.loads(right.stdout)["version"] >= 1
