"""``ambit why`` over translated objects: each verdict is what the proxies' own evaluators
decide, and the words say which rule or route did it and why the others did not."""

from __future__ import annotations

import base64
import json
import time

import pytest

from explain.query import Ask, QueryError, parse_from, parse_to
from explain.render import render
from explain.steps import Explanation
from explain.why import why
from k8s import manifests as m
from k8s.translate import translate
from mesh.model import MeshSnapshot
from tests.k8s_builders import gateway, ns, pod, svc

MESH_PORT = (m.ServicePortSpec(port=15008, target_port=15008),)
HTTP_PORT = (m.ServicePortSpec(port=8000, target_port=8080, name="http"),)
WAYPOINT = {"gateway.networking.k8s.io/gateway-name": "waypoint"}


def world(*extra: m.K8sObject, bound: bool = False, extra_yaml: str = "") -> MeshSnapshot:
    """Namespace shop (ambient): pods sleep (sa sleep) and web-1 behind Service web:8000;
    namespace other (ambient): pod client; namespace plain (not meshed): pod outsider. With
    ``bound``, Service web uses the waypoint shop/waypoint (running)."""
    objects: list[m.K8sObject] = [
        ns("shop"), ns("other"), ns("plain", ambient=False),
        pod("sleep", "shop", ip="10.0.0.10", service_account="sleep"),
        pod("web-1", "shop", ip="10.0.0.20", labels={"app": "web"}, service_account="web"),
        svc("web", "shop", cluster_ip="10.96.0.20", ports=HTTP_PORT,
            labels={"istio.io/use-waypoint": "waypoint"} if bound else None),
        pod("client", "other", ip="10.0.1.10", service_account="client"),
        pod("outsider", "plain", ip="10.0.2.10"),
    ]  # fmt: skip
    if bound:
        objects += [
            gateway("waypoint", "shop"),
            pod("waypoint-1", "shop", ip="10.0.0.30", labels=WAYPOINT,
                service_account="waypoint"),
            svc("waypoint", "shop", selector=WAYPOINT, ports=MESH_PORT, cluster_ip="10.96.0.30"),
        ]  # fmt: skip
    objects += [*extra, *m.loads(extra_yaml)] if extra_yaml else list(extra)
    return translate(objects, version=1).snapshot


def ask(
    snapshot: MeshSnapshot, src: str, dst: str, *, port: int | None = None, **request: object
) -> Explanation:
    return why(snapshot, parse_from(snapshot, src), parse_to(snapshot, dst, port),
               Ask(**request))  # type: ignore[arg-type]  # fmt: skip


DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/other/sa/client"]}}]
"""

ALLOW_SHOP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {namespaces: ["shop"]}}]
"""

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""

L7_ALLOW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reads, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/public/*"]}}]
"""

ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 8000}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: x-beta, value: "yes"}]}]
    backendRefs: [{name: web, port: 8000}]
  - matches: [{path: {type: Exact, value: /status}}]
    backendRefs: [{name: web, port: 8000}]
"""


def test_no_policy_meshed_pods_talk_with_mutual_tls() -> None:
    e = ask(world(), "shop/sleep", "shop/web")
    assert e.verdict.allowed
    assert e.verdict.status is None
    assert [s.outcome for s in e.steps][:2] == ["captured", "direct"]
    assert "spiffe://cluster.local/ns/shop/sa/sleep" in e.steps[-1].detail or any(
        "sleep" in s.detail for s in e.steps
    )


def test_a_deny_by_principal_is_named_rule_by_rule() -> None:
    snapshot = world(extra_yaml=DENY_CLIENT)
    e = ask(snapshot, "other/client", "shop/web:8000")
    assert not e.verdict.allowed
    assert e.verdict.flag == "DENY"
    authz = e.steps[-1]
    assert authz.what == "authorization"
    assert authz.checks[0].matched
    assert "principal cluster.local/ns/other/sa/client" in authz.checks[0].words
    # The same policy does not match another caller, and says why.
    e = ask(snapshot, "shop/sleep", "shop/web")
    assert e.verdict.allowed
    check = e.steps[-1].checks[0]
    assert not check.matched
    assert "principal cluster.local/ns/shop/sa/sleep not in" in check.words


def test_an_allow_by_namespace_refuses_the_others_with_the_failed_clause() -> None:
    snapshot = world(extra_yaml=ALLOW_SHOP)
    assert ask(snapshot, "shop/sleep", "shop/web").verdict.allowed
    e = ask(snapshot, "other/client", "shop/web")
    assert not e.verdict.allowed
    assert "namespace other not in [shop]" in e.steps[-1].checks[0].words


def test_a_service_account_is_a_caller_too() -> None:
    snapshot = world(extra_yaml=ALLOW_SHOP)
    assert ask(snapshot, "shop/sa/anyone", "shop/web").verdict.allowed
    assert not ask(snapshot, "other/sa/anyone", "shop/web").verdict.allowed


def test_strict_refuses_callers_outside_the_mesh() -> None:
    snapshot = world(extra_yaml=STRICT)
    e = ask(snapshot, "plain/outsider", "shop/web")
    assert e.steps[0].outcome == "not captured"
    assert not e.verdict.allowed
    assert "STRICT" in e.verdict.summary
    assert ask(world(), "10.9.9.9", "10.96.0.20:8000").verdict.allowed  # PERMISSIVE


def test_through_the_waypoint_l7_policy_decides_per_path() -> None:
    snapshot = world(bound=True, extra_yaml=L7_ALLOW)
    ok = ask(snapshot, "shop/sleep", "shop/web", path="/public/x")
    assert ok.verdict.allowed
    assert "via waypoint" in [s.outcome for s in ok.steps]
    assert any(s.at == "waypoint shop/waypoint" for s in ok.steps)
    denied = ask(snapshot, "shop/sleep", "shop/web", path="/admin")
    assert (denied.verdict.allowed, denied.verdict.status) == (False, 403)
    check = next(s for s in denied.steps if s.what == "authorization").checks[0]
    assert "path /admin not in [/public/*]" in check.words
    posted = ask(snapshot, "shop/sleep", "shop/web", method="POST", path="/public/x")
    assert posted.verdict.status == 403
    binding = next(s for s in ok.steps if s.what == "plan")
    assert "bound to waypoint shop/waypoint" in binding.detail


def test_the_path_is_read_as_the_waypoint_reads_it() -> None:
    """Dot segments and encoded unreserved characters are normalized before policy, as the
    waypoint does (``/public/../admin`` is ``/admin``): ``why`` gives the waypoint's verdict
    and says how it read the path; a target it refuses is its 400."""
    snapshot = world(bound=True, extra_yaml=L7_ALLOW)
    for sent in ("/public/../admin", "/%70ublic/../admin"):
        walked = ask(snapshot, "shop/sleep", "shop/web", path=sent)
        assert (walked.verdict.allowed, walked.verdict.status) == (False, 403)
        read = next(s for s in walked.steps if s.what == "path")
        assert read.outcome == "normalized"
        assert f"{sent} is read as /admin" in read.detail
    encoded = ask(snapshot, "shop/sleep", "shop/web", path="/%70ublic/x")
    assert encoded.verdict.allowed
    plain = ask(snapshot, "shop/sleep", "shop/web", path="/public/x")
    assert "path" not in [s.what for s in plain.steps]
    refused = ask(snapshot, "shop/sleep", "shop/web", path="no-slash")
    assert (refused.verdict.allowed, refused.verdict.status, refused.verdict.flag) == (
        False, 400, "DPE",
    )  # fmt: skip


def test_routes_explain_the_entries_that_did_not_match() -> None:
    snapshot = world(bound=True, extra_yaml=ROUTES)
    e = ask(snapshot, "shop/sleep", "shop/web", path="/status")
    route = next(s for s in e.steps if s.what == "route")
    assert route.outcome == "matched"
    assert [c.matched for c in route.checks] == [True]  # an Exact path comes first
    miss = ask(snapshot, "shop/sleep", "shop/web", path="/v2/a")
    assert (miss.verdict.status, miss.verdict.flag) == (404, "NR")
    checks = next(s for s in miss.steps if s.what == "route").checks
    assert [c.matched for c in checks] == [False, False]
    assert "path /v2/a does not match Exact /status" in checks[0].words
    assert "header x-beta is absent, not yes" in checks[1].words
    beta = ask(snapshot, "shop/sleep", "shop/web", path="/v2/a", headers=(("x-beta", "yes"),))
    assert beta.verdict.allowed
    assert [c.matched for c in next(s for s in beta.steps if s.what == "route").checks] == [
        False, True,
    ]  # fmt: skip


def test_a_waypoint_with_no_pod_fails_closed() -> None:
    snapshot = world(bound=True)
    gone = MeshSnapshot(2, snapshot.workloads, tuple(
        s if s.key != "shop/waypoint" else s.__class__(s.name, s.namespace, s.vip, s.ports, ())
        for s in snapshot.services
    ), gateways=snapshot.gateways)  # fmt: skip
    e = ask(gone, "shop/sleep", "shop/web")
    assert not e.verdict.allowed
    assert e.verdict.flag == "CONNECT"
    assert "no ready pod" in e.verdict.summary


def test_render_names_every_step_and_the_verdict() -> None:
    text = render(ask(world(extra_yaml=DENY_CLIENT), "other/client", "shop/web"))
    assert "DENY policy shop/no-client rule 1: matched" in text
    assert text.splitlines()[-1].startswith("verdict: REFUSED")


@pytest.mark.parametrize("src", ["shop/nobody", "bad", "a/b/c/d", "shop/x/y"])
def test_an_unknown_source_is_a_clear_error(src: str) -> None:
    with pytest.raises(QueryError):
        parse_from(world(), src)


@pytest.mark.parametrize(
    ("dst", "port"),
    [("shop/nothing", None), ("shop/web-1", None), ("10.96.0.20", None), ("web", 80),
     ("shop/web:http", None)],
)  # fmt: skip
def test_an_unknown_destination_is_a_clear_error(dst: str, port: int | None) -> None:
    with pytest.raises(QueryError):
        parse_to(world(), dst, port)


def test_tap_spellings_name_the_same_things() -> None:
    snapshot = world(extra_yaml=DENY_CLIENT)
    plain = ask(snapshot, "other/client", "shop/web")
    spelled = ask(snapshot, "pod/other/client", "svc/shop/web:8000")
    assert spelled.verdict == plain.verdict
    assert ask(snapshot, "other/client", "pod/shop/web-1", port=8080).verdict.flag == "DENY"
    with pytest.raises(QueryError):
        parse_to(snapshot, "pod/shop/web", 8000)  # a Service, not a pod
    with pytest.raises(QueryError):
        parse_to(snapshot, "svc/shop/web-1", 8080)  # a pod, not a Service


def test_a_grpc_port_is_asked_with_post_unless_told() -> None:
    grpc = (m.ServicePortSpec(port=9000, target_port=9000, name="grpc"),)
    snapshot = world(svc("api", "shop", cluster_ip="10.96.0.40", ports=grpc,
                         selector={"app": "web"}))  # fmt: skip
    e = why(snapshot, parse_from(snapshot, "shop/sleep"), parse_to(snapshot, "shop/api", None),
            Ask(method="", path="/pkg.Api/Get"))  # fmt: skip
    assert e.request is not None
    assert e.request["method"] == "POST"


JWKS_URI_RULE = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules: [{issuer: "https://issuer.test", jwksUri: "http://jwks.auth/keys.json"}]
"""


def _unsigned(**claims: object) -> str:
    """A JWT with these claims and a signature no key made (why cannot check it anyway)."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'ES256', 'kid': 'k1'})}.{part(claims)}.c2ln"


def test_a_jwks_uri_rule_is_checked_on_its_claims_and_says_the_signature_is_not() -> None:
    """Only the waypoint fetches a jwksUri's keys: why checks the token's claims (issuer,
    expiry) as the waypoint does and says that its signature was not checked; it used to
    refuse every such token with 401 'Jwks remote fetch is failed'."""
    snapshot = world(bound=True, extra_yaml=JWKS_URI_RULE)
    good = _unsigned(iss="https://issuer.test", sub="alice", exp=time.time() + 300)
    got = ask(snapshot, "shop/sleep", "shop/web", headers=(("authorization", f"Bearer {good}"),))
    assert got.verdict.allowed, render(got)
    [step] = [s for s in got.steps if s.what == "request authentication"]
    assert step.outcome == "passed"
    assert "signature is not checked here: the keys come from http://jwks.auth/keys.json" in (
        step.detail
    )
    expired = _unsigned(iss="https://issuer.test", sub="alice", exp=time.time() - 3600)
    got = ask(snapshot, "shop/sleep", "shop/web", headers=(("authorization", f"Bearer {expired}"),))
    assert (got.verdict.allowed, got.verdict.status) == (False, 401)
    assert "Jwt is expired" in got.verdict.summary
