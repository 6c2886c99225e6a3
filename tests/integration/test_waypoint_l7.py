"""Routes, L7 policy and JWT at the waypoint, end to end on loopback: the world is written
as an operator writes it (YAML, translated by the control plane's own translator), the
requests are real HTTP/1.1 and gRPC, and what is checked is what the client and the app
see."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt as pyjwt
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

from k8s import manifests
from k8s.translate import translate
from mesh.model import MeshSnapshot
from tests.integration.waypoint_support import Client, Mesh, Pod, open_mesh
from tests.pki import Pki
from tests.waiting import wait_until

WORLD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels: {ambit.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec:
  gatewayClassName: ambit-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: default}
spec:
  clusterIP: 10.96.0.30
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: default}
spec:
  clusterIP: 10.96.0.11
  selector: {version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: default}
spec:
  clusterIP: 10.96.0.12
  selector: {version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
PODS = {
    "web-0": ("10.0.0.11", "web", {"app": "web", "version": "v1"}),
    "web-1": ("10.0.0.12", "web", {"app": "web", "version": "v2"}),
    "client": ("10.0.0.20", "client", {"app": "client"}),
    "waypoint-0": ("10.0.0.30", "waypoint", {"gateway.networking.k8s.io/gateway-name": "waypoint"}),
}


def world(extra: str = "") -> MeshSnapshot:
    objects: list[manifests.K8sObject] = list(manifests.loads(WORLD + extra, "world.yaml"))
    for name, (ip, sa, labels) in PODS.items():
        pod = manifests.loads(
            json.dumps({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "default", "labels": labels},
                        "spec": {"nodeName": "node-1", "serviceAccountName": sa,
                                 "containers": [{"name": "c", "image": "i"}]}}),
            "pod.yaml",
        )[0]  # fmt: skip
        assert isinstance(pod, manifests.Pod)
        objects.append(pod.with_ip(ip))
    translation = translate(objects, version=1)
    return translation.snapshot


def pods() -> list[Pod]:
    return [Pod("web-0", "10.0.0.11"), Pod("web-1", "10.0.0.12")]


async def get(mesh: Mesh, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    client = Client(await mesh.connect())
    try:
        return await client.request("GET", path, **kw)
    finally:
        await client.stream.aclose()


ROUTES = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed, value: api}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: waypoint}]}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 200ms}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: web-v2, port: 80}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /backend-slow}}]
    timeouts: {request: 5s, backendRequest: 200ms}
    backendRefs: [{name: web-v1, port: 80}]
"""


async def test_http_routes_match_filter_redirect_split_and_time_out(root: Pki) -> None:
    with trio.fail_after(60):
        async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh:
            status, _h, body = await get(mesh, "/x", headers=[("x-canary", "yes")])
            assert (status, json.loads(body)["app"]) == (200, "web-1")

            status, headers, _b = await get(mesh, "/old/page?q=1")
            assert status == 301
            assert headers["location"] == "http://web.default.svc.cluster.local/new/page?q=1"

            status, headers, body = await get(mesh, "/api/items")
            answer = json.loads(body)
            assert (status, answer["app"], answer["path"]) == (200, "web-0", "/v1/items")
            assert answer["headers"]["x-routed"] == "api"
            assert headers["x-served-by"] == "waypoint"

            status, _h, body = await get(mesh, "/nothing/matches")
            assert (status, body) == (404, b"")
            await mesh.requests_counted(response_code="404", response_flags="NR")

            status, _h, body = await get(mesh, "/slow/delay/2000")
            assert (status, body) == (504, b"upstream request timeout")
            await mesh.requests_counted(response_code="504", response_flags="UT")

            # A mirror: web-v2's pod sees a copy (Host with -shadow), the client web-v1's answer.
            status, _h, body = await get(mesh, "/mirrored/x")
            assert (status, json.loads(body)["app"]) == (200, "web-0")
            await wait_until(
                lambda: (
                    ("GET", "/mirrored/x", "web.default.svc.cluster.local-shadow")
                    in mesh.pods[1].seen
                )
            )
            client = Client(await mesh.connect())
            status, _h, body = await client.request("POST", "/mirrored/up", body=b"copy me")
            assert status == 200
            await wait_until(
                lambda: (
                    ("POST", "/mirrored/up", "web.default.svc.cluster.local-shadow")
                    in mesh.pods[1].seen
                )
            )
            await client.stream.aclose()

            status, _h, body = await get(mesh, "/backend-slow/delay/2000")
            assert (status, body) == (504, b"upstream request timeout")

            # 1,000 requests on keep-alive connections: 90/10 within 3 points.
            seen = {"web-0": 0, "web-1": 0}
            clients = [Client(await mesh.connect()) for _ in range(4)]
            for i in range(1000):
                _s, _h, body = await clients[i % 4].request("GET", "/split")
                seen[json.loads(body)["app"]] += 1
            assert abs(seen["web-0"] / 1000 - 0.9) <= 0.03, seen
            for client in clients:
                await client.stream.aclose()


POLICY = """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: default}
spec:
  targetRefs: [{kind: Service, name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
    to: [{operation: {methods: [POST]}}]
"""


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    jwk: dict[str, str] = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES256")
    return jwk


def jwt_rule(*lines: str) -> str:
    """POLICY and a RequestAuthentication at the waypoint for https://issuer.example, its
    rule completed by ``lines`` (where its keys come from, outputs)."""
    rule = "".join(f"\n    {line}" for line in lines)
    return (
        POLICY
        + f"""
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]
  jwtRules:
  - issuer: https://issuer.example{rule}
"""
    )


def jwt_world(key: ec.EllipticCurvePrivateKey) -> str:
    keys = json.dumps({"keys": [jwk_of(key)]})
    return jwt_rule(f"jwks: '{keys}'", "outputPayloadToHeader: x-jwt-payload")


def token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    body = {"iss": "https://issuer.example", "sub": "alice", "exp": time.time() + 300, **claims}
    return pyjwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})


async def test_l7_policy_and_jwt_decide_each_request(root: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with trio.fail_after(60):
        async with open_mesh(root, pods(), snapshot=world(jwt_world(key))) as mesh:
            assert (await get(mesh, "/ok"))[0] == 200  # GET by principal client
            status, _h, body = await get(mesh, "/admin/users")
            assert (status, body) == (403, b"RBAC: access denied")
            client = Client(await mesh.connect())
            status, _h, body = await client.request("POST", "/orders", body=b"{}")
            assert (status, body) == (403, b"RBAC: access denied")  # POST needs a JWT
            bearer = [("authorization", f"Bearer {token(key)}")]
            status, _h, body = await client.request("POST", "/orders", body=b"{}", headers=bearer)
            assert status == 200
            answer = json.loads(body)
            payload = json.loads(
                base64.urlsafe_b64decode(answer["headers"]["x-jwt-payload"] + "==")
            )
            assert payload["sub"] == "alice"
            assert "authorization" not in answer["headers"]  # the token is not forwarded
            expired = [("authorization", f"Bearer {token(key, exp=time.time() - 3600)}")]
            status, headers, _b = await client.request("GET", "/ok", headers=expired)
            assert status == 401
            assert headers["www-authenticate"].startswith("Bearer realm=")
            await client.stream.aclose()
            await mesh.requests_counted(response_code="401")


async def test_a_refusal_is_logged_with_the_request_id_of_its_access_line(root: Pki) -> None:
    """The gate's own lines (request_denied, request_unauthenticated) carry the request id
    the access line has, so one grep finds why a request was refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    with trio.fail_after(60), capture_logs() as logs:
        async with open_mesh(root, pods(), snapshot=world(jwt_world(key))) as mesh:
            assert (await get(mesh, "/admin/users"))[0] == 403
            expired = [("authorization", f"Bearer {token(key, exp=time.time() - 3600)}")]
            assert (await get(mesh, "/ok", headers=expired))[0] == 401
            await mesh.requests_counted(response_code="401")
    access = {e["path"]: e["request_id"] for e in logs if e.get("event") == "request"}
    [denied] = [e for e in logs if e.get("event") == "request_denied"]
    [refused] = [e for e in logs if e.get("event") == "request_unauthenticated"]
    assert denied["request_id"] == access["/admin/users"] != ""
    assert refused["request_id"] == access["/ok"] != ""
