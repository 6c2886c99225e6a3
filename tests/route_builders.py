"""The mesh conformance tests' world as model values, for the route table's unit tests.

Namespace ``gateway-conformance-mesh`` holds Services ``echo`` (every version's pods),
``echo-v1``, ``echo-v2`` and ``echo-v3``, each with the conformance suite's ports (80 to
8080 and 8080, both ``http``; 443; 9090; 7070 for gRPC) and one endpoint. :func:`table`
reads routes from YAML through the manifest reader, as the control plane does;
:func:`send` plays the conformance client: it dials the Service a host name resolves
to (``echo`` -> its VIP, port 80 unless the host says otherwise), so the CONNECT
authority is that ``VIP:port``, whatever ``Host`` header it sends.
"""

from __future__ import annotations

import random
import textwrap
from collections import Counter

from k8s import manifests as m
from k8s.translate_l7 import grpc_route, http_route
from mesh.model import Endpoint, Service, ServicePort
from mesh.model_l7 import GrpcRoute, HttpRoute
from waypoint.decisions import Decision, Forward, LocalReply, NoRoutes
from waypoint.http_request import HttpRequest
from waypoint.routes import RouteTable, compile_routes

NS = "gateway-conformance-mesh"
CONSUMER_NS = "gateway-conformance-mesh-consumer"
PORTS = (
    ServicePort(80, 8080, "http", app_protocol="http"),
    ServicePort(8080, 8080, "http-alt", app_protocol="http"),
    ServicePort(443, 8443, "https"),
    ServicePort(9090, 9090, "tcp"),
    ServicePort(7070, 7070, "grpc", app_protocol="kubernetes.io/h2c"),
)
VIPS = {"echo": "10.96.0.10", "echo-v1": "10.96.0.11", "echo-v2": "10.96.0.12",
        "echo-v3": "10.96.0.13"}  # fmt: skip
POD_IPS = {"echo-v1": "10.0.0.11", "echo-v2": "10.0.0.12", "echo-v3": "10.0.0.13"}


def _endpoint(version: str) -> Endpoint:
    return Endpoint(
        f"uid-{version}", POD_IPS[version], tuple((p.port, p.target_port) for p in PORTS)
    )


def echo_services(*, ready: bool = True) -> tuple[Service, ...]:
    """The suite's four Services; ``ready=False``: without endpoints."""
    out = []
    for name, vip in VIPS.items():
        versions = list(POD_IPS) if name == "echo" else [name]
        endpoints = tuple(_endpoint(v) for v in versions) if ready else ()
        out.append(Service(name, NS, vip, PORTS, endpoints))
    return tuple(out)


def routes(text: str) -> tuple[list[HttpRoute], list[GrpcRoute]]:
    """The HTTPRoutes and GRPCRoutes of a YAML text, as the control plane carries them."""
    https, grpcs = [], []
    for obj in m.loads(textwrap.dedent(text), "routes.yaml"):
        if isinstance(obj, m.HTTPRoute):
            https.append(http_route(obj))
        elif isinstance(obj, m.GRPCRoute):
            grpcs.append(grpc_route(obj))
    return https, grpcs


def table(text: str, *, ready: bool = True) -> RouteTable:
    https, grpcs = routes(text)
    return compile_routes(echo_services(ready=ready), https, grpcs)


def dial(host: str) -> str:
    """The CONNECT authority of a request to ``host`` (``name[:port]`` or ``ip:port``)."""
    name, _, port = host.partition(":")
    return f"{VIPS.get(name, name)}:{port or 80}"


def send(
    routes_: RouteTable,
    path: str = "/",
    *,
    host: str = "echo",
    host_header: str | None = None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    source_namespace: str = NS,
    seed: int = 0,
) -> Decision:
    request = HttpRequest(method, path, host_header or host, tuple((headers or {}).items()))
    rng = random.Random(seed)
    return routes_.route(
        dial(host), request, source_namespace=source_namespace, choose=rng.randrange
    )


def backend_of(decision: Decision) -> str:
    """The Service (name) that gets the request: the chosen backend, or the Service
    dialled when no route applies; "" when the waypoint answers itself."""
    if isinstance(decision, Forward):
        return decision.backend.service.partition("/")[2]
    if isinstance(decision, NoRoutes) and decision.service is not None:
        return decision.service.partition("/")[2]
    if isinstance(decision, NoRoutes):
        return "pod"
    return ""


def status_of(decision: Decision) -> int:
    if isinstance(decision, LocalReply):
        return decision.status
    return 200 if isinstance(decision, Forward | NoRoutes) else decision.status


def response_headers(decision: Decision) -> dict[str, str]:
    """The headers a response with none of its own gets to the client."""
    if isinstance(decision, Forward):
        return dict(decision.response_headers(()))
    return {}


def distribution(
    routes_: RouteTable, count: int, seed: int, *, host: str = "echo", path: str = "/"
) -> Counter[str]:
    """How ``count`` requests (one seeded source of randomness) spread over backends (a
    status code for those the waypoint answers itself)."""
    rng = random.Random(seed)
    found: Counter[str] = Counter()
    request = HttpRequest("POST", path, host)
    for _ in range(count):
        decision = routes_.route(dial(host), request, choose=rng.randrange)
        found[backend_of(decision) or str(status_of(decision))] += 1
    return found
