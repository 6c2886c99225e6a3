"""L4 policy evaluation at ztunnel, with Istio's semantics, and the mTLS mode of a workload."""

from __future__ import annotations

import pytest

from mesh.authz import Decision, evaluate, peer_auth_mode
from mesh.constants import SYSTEM_NAMESPACE
from mesh.identity import SpiffeId
from mesh.model import Authorization, TargetRef
from tests.builders import (
    allow,
    conn,
    deny,
    identity,
    op,
    peer_auth,
    rule,
    snapshot,
    source,
    waypoint_ref,
    workload,
)

WEB = workload("web", ip="10.0.0.10", labels={"app": "web"})
CLIENT = identity("default", "client")
ADMIN = identity("default", "admin")
P_CLIENT = "cluster.local/ns/default/sa/client"
P_ADMIN = "cluster.local/ns/default/sa/admin"


def allowed(
    policies: list[Authorization],
    *,
    src: SpiffeId | None = None,
    src_ip: str = "10.0.0.99",
    port: int = 8080,
) -> bool:
    return evaluate(conn(WEB, src=src, src_ip=src_ip, port=port), policies).allowed


# --- which policies count --------------------------------------------------------------------


def test_no_policy_allows() -> None:
    assert evaluate(conn(WEB, src=CLIENT), []) == Decision(
        True, None, "allowed: no ALLOW policy selects default/web"
    )


def test_policies_not_selecting_the_workload_are_ignored() -> None:
    policies = [
        allow("other-ns", namespace="other"),
        allow("for-db", selector={"app": "db"}),
        deny("deny-db", rule(), selector={"app": "db"}),
    ]
    assert evaluate(conn(WEB, src=CLIENT), policies).reason == (
        "allowed: no ALLOW policy selects default/web"
    )


def test_root_namespace_policies_apply_everywhere() -> None:
    mesh_deny = deny("no-admin", rule([source(principals=[P_ADMIN])]), namespace=SYSTEM_NAMESPACE)
    assert not allowed([mesh_deny], src=ADMIN)
    assert allowed([mesh_deny], src=CLIENT)
    mesh_allow = allow(
        "only-client", rule([source(principals=[P_CLIENT])]), namespace=SYSTEM_NAMESPACE
    )
    assert allowed([mesh_allow], src=CLIENT)
    assert not allowed([mesh_allow], src=ADMIN)


def test_selector_selects_by_labels() -> None:
    policy = allow("web-only", rule([source(principals=[P_CLIENT])]), selector={"app": "web"})
    assert not allowed([policy], src=ADMIN)
    db = workload("db", ip="10.0.0.11")
    assert evaluate(conn(db, src=ADMIN), [policy]).allowed


# --- ALLOW and DENY --------------------------------------------------------------------------


def test_matching_allow_allows_and_says_why() -> None:
    policy = allow("allow-client", rule([source(principals=[P_CLIENT])]))
    assert evaluate(conn(WEB, src=CLIENT), [policy]) == Decision(
        True,
        "default/allow-client",
        f"allowed by ALLOW policy default/allow-client (rule 1: principal {P_CLIENT})",
    )


def test_single_allow_not_matching_denies() -> None:
    policy = allow("allow-client", rule([source(principals=[P_CLIENT])]))
    assert evaluate(conn(WEB, src=ADMIN), [policy]) == Decision(
        False,
        None,
        "the only ALLOW policy selecting default/web, default/allow-client, did not match",
    )


def test_no_allow_of_several_matching_denies() -> None:
    policies = [
        allow("a", rule([source(principals=[P_CLIENT])])),
        allow("b", rule(operations=[op(9090)])),
    ]
    decision = evaluate(conn(WEB, src=ADMIN), policies)
    assert decision == Decision(
        False, None, "no ALLOW policy of the 2 selecting default/web matched"
    )


def test_one_allow_of_several_is_enough() -> None:
    policies = [
        allow("a", rule([source(principals=[P_CLIENT])])),
        allow("b", rule(operations=[op(8080)])),
    ]
    decision = evaluate(conn(WEB, src=ADMIN, port=8080), policies)
    assert (decision.allowed, decision.policy) == (True, "default/b")
    assert decision.reason == "allowed by ALLOW policy default/b (rule 1: port 8080)"


def test_matching_deny_wins_over_matching_allow() -> None:
    policies = [
        allow("allow-all", rule()),
        deny("deny-admin", rule([source(principals=[P_ADMIN])])),
    ]
    assert evaluate(conn(WEB, src=ADMIN), policies) == Decision(
        False,
        "default/deny-admin",
        f"denied by DENY policy default/deny-admin (rule 1: principal {P_ADMIN})",
    )
    assert evaluate(conn(WEB, src=CLIENT), policies).policy == "default/allow-all"


def test_deny_not_matching_and_no_allow_allows() -> None:
    policies = [deny("deny-admin", rule([source(principals=[P_ADMIN])]))]
    assert evaluate(conn(WEB, src=CLIENT), policies).reason == (
        "allowed: no ALLOW policy selects default/web"
    )


def test_first_matching_deny_by_name_is_reported() -> None:
    policies = [deny("z", rule()), deny("a", rule())]
    assert evaluate(conn(WEB, src=CLIENT), policies).policy == "default/a"


def test_allow_without_rules_allows_nothing() -> None:
    assert not allowed([allow("nothing")], src=CLIENT)
    assert not allowed([allow("nothing")], src=None)


def test_deny_without_rules_denies_nothing() -> None:
    assert allowed([deny("nothing")], src=CLIENT)


def test_empty_rule_matches_every_connection() -> None:
    decision = evaluate(conn(WEB, src=None), [allow("all", rule())])
    assert (
        decision.reason == "allowed by ALLOW policy default/all (rule 1: matches every connection)"
    )


# --- rule structure --------------------------------------------------------------------------


def test_rules_are_ored() -> None:
    policy = allow("p", rule([source(principals=[P_ADMIN])]), rule([source(principals=[P_CLIENT])]))
    decision = evaluate(conn(WEB, src=CLIENT), [policy])
    assert decision.allowed
    assert "(rule 2: " in decision.reason


def test_sources_are_ored_and_their_fields_anded() -> None:
    both = source(principals=[P_CLIENT], ip_blocks=["10.1.0.0/16"])
    policy = allow("p", rule([both, source(principals=[P_ADMIN])]))
    assert allowed([policy], src=CLIENT, src_ip="10.1.2.3")
    assert not allowed([policy], src=CLIENT, src_ip="10.2.2.3")
    assert allowed([policy], src=ADMIN, src_ip="10.2.2.3")


def test_values_of_a_field_are_ored() -> None:
    policy = allow("p", rule([source(principals=[P_ADMIN, P_CLIENT])]))
    assert allowed([policy], src=CLIENT)
    assert allowed([policy], src=ADMIN)
    assert not allowed([policy], src=identity("default", "other"))


def test_source_and_operation_are_anded() -> None:
    policy = allow("p", rule([source(principals=[P_CLIENT])], [op(8080), op(9090)]))
    assert allowed([policy], src=CLIENT, port=8080)
    assert allowed([policy], src=CLIENT, port=9090)
    assert not allowed([policy], src=CLIENT, port=22)
    assert not allowed([policy], src=ADMIN, port=8080)


def test_reason_lists_every_condition_met() -> None:
    policy = deny(
        "d",
        rule(
            [source(namespaces=["default"], not_ip_blocks=["192.168.0.0/16"])],
            [op(8080, not_ports=[22])],
        ),
    )
    assert evaluate(conn(WEB, src=CLIENT, src_ip="10.0.0.1"), [policy]).reason == (
        "denied by DENY policy default/d (rule 1: namespace default, source ip 10.0.0.1 not in"
        " [192.168.0.0/16], port 8080, port 8080 not in [22])"
    )


def test_not_ports() -> None:
    policy = allow("p", rule(operations=[op(not_ports=[22, 23])]))
    assert allowed([policy], port=8080)
    assert not allowed([policy], port=22)


# --- principals, namespaces, addresses -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "sa", "matches"),
    [
        (P_CLIENT, "client", True),
        (P_CLIENT, "client2", False),
        ("*", "anything", True),
        ("cluster.local/ns/default/*", "client", True),
        ("cluster.local/ns/other/*", "client", False),
        ("*/sa/client", "client", True),
        ("*/sa/client", "admin", False),
        ("*client", "my-client", True),
        ("cluster.local/ns/default/sa/cli*", "client", True),
        ("spiffe://cluster.local/ns/default/sa/client", "client", False),
    ],
)
def test_principal_wildcards(pattern: str, sa: str, matches: bool) -> None:
    policy = allow("p", rule([source(principals=[pattern])]))
    assert allowed([policy], src=identity("default", sa)) is matches


@pytest.mark.parametrize(
    ("pattern", "namespace", "matches"),
    [
        ("shop", "shop", True),
        ("shop", "shopping", False),
        ("shop*", "shopping", True),
        ("*-prod", "shop-prod", True),
        ("*-prod", "shop-test", False),
        ("*", "anything", True),
    ],
)
def test_namespace_wildcards(pattern: str, namespace: str, matches: bool) -> None:
    policy = allow("p", rule([source(namespaces=[pattern])]))
    assert allowed([policy], src=identity(namespace, "x")) is matches


def test_not_principals_and_not_namespaces() -> None:
    policy = allow("p", rule([source(not_principals=[P_ADMIN], not_namespaces=["evil*"])]))
    assert allowed([policy], src=CLIENT)
    assert not allowed([policy], src=ADMIN)
    assert not allowed([policy], src=identity("evil-ns", "client"))


def test_plaintext_never_matches_principals_or_namespaces() -> None:
    assert not allowed([allow("p", rule([source(principals=["*"])]))], src=None)
    assert not allowed([allow("p", rule([source(namespaces=["*"])]))], src=None)
    assert not allowed([allow("p", rule([source(principals=[P_CLIENT])]))], src=None)


def test_plaintext_matches_not_principals_and_not_namespaces() -> None:
    assert allowed([allow("p", rule([source(not_principals=[P_ADMIN])]))], src=None)
    assert allowed([allow("p", rule([source(not_namespaces=["default"])]))], src=None)


def test_deny_not_principals_star_refuses_plaintext_only() -> None:
    """Istio's recipe for "mTLS only": DENY when there is no principal at all."""
    policy = deny("require-mtls", rule([source(not_principals=["*"])]))
    assert allowed([policy], src=CLIENT)
    decision = evaluate(conn(WEB, src=None), [policy])
    assert decision == Decision(
        False,
        "default/require-mtls",
        "denied by DENY policy default/require-mtls"
        " (rule 1: principal none (plaintext) not in [*])",
    )


@pytest.mark.parametrize(
    ("blocks", "ip", "matches"),
    [
        (["10.0.0.0/8"], "10.200.1.1", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.7"], "10.0.0.7", True),
        (["10.0.0.7"], "10.0.0.8", False),
        (["192.168.0.0/16", "10.0.0.7"], "10.0.0.7", True),
        (["fd00::/8"], "fd00::1", True),
        (["fd00::/8"], "10.0.0.1", False),
        (["10.0.0.1/24"], "10.0.0.200", True),
    ],
)
def test_ip_blocks(blocks: list[str], ip: str, matches: bool) -> None:
    assert allowed([allow("p", rule([source(ip_blocks=blocks)]))], src_ip=ip) is matches
    assert allowed([allow("p", rule([source(not_ip_blocks=blocks)]))], src_ip=ip) is not matches


def test_ipv4_mapped_source_matches_ipv4_blocks() -> None:
    policy = allow("p", rule([source(ip_blocks=["10.0.0.0/24"])]))
    assert allowed([policy], src_ip="::ffff:10.0.0.5")


def test_ip_blocks_apply_to_plaintext_too() -> None:
    policy = allow("p", rule([source(ip_blocks=["10.0.0.0/24"])]))
    assert allowed([policy], src=None, src_ip="10.0.0.5")


# --- L7 fields at L4 -------------------------------------------------------------------------


def test_allow_rule_with_l7_fields_never_matches() -> None:
    policy = allow("get-only", rule([source(principals=[P_CLIENT])], [op(8080, methods=["GET"])]))
    decision = evaluate(conn(WEB, src=CLIENT, port=8080), [policy])
    assert not decision.allowed
    assert decision.reason == (
        "the only ALLOW policy selecting default/web, default/get-only, did not match"
        " (1 ALLOW rule(s) with L7 fields never match at ztunnel; a waypoint is needed to"
        " enforce them)"
    )


def test_allow_rule_with_l7_source_never_matches() -> None:
    policy = allow("jwt", rule([source(principals=["*"], request_principals=["*"])]))
    assert not allowed([policy], src=CLIENT)


def test_other_allow_rules_still_match_beside_an_l7_one() -> None:
    policy = allow("p", rule(operations=[op(8080, paths=["/admin*"])]), rule(operations=[op(9090)]))
    assert not allowed([policy], port=8080)
    decision = evaluate(conn(WEB, port=9090), [policy])
    assert decision.allowed
    assert "(rule 2: port 9090)" in decision.reason


def test_deny_rule_with_l7_fields_applies_on_its_l4_part() -> None:
    policy = deny("no-post", rule(operations=[op(8080, methods=["POST"])]))
    decision = evaluate(conn(WEB, src=CLIENT, port=8080), [policy])
    assert decision == Decision(
        False,
        "default/no-post",
        "denied by DENY policy default/no-post (rule 1: port 8080; its L7 fields (methods)"
        " are not checked at L4)",
    )
    assert allowed([policy], src=CLIENT, port=9090)


def test_deny_rule_with_only_l7_fields_denies_everything() -> None:
    policy = deny(
        "no-admin-path",
        rule(operations=[op(paths=["/admin*"])], when={"request.headers[x]": ["1"]}),
    )
    assert not allowed([policy], src=CLIENT)
    assert not allowed([policy], src=None)


def test_allow_rule_with_a_condition_never_matches() -> None:
    policy = allow(
        "if-header", rule([source(principals=[P_CLIENT])], when={"request.headers[x]": ["1"]})
    )
    decision = evaluate(conn(WEB, src=CLIENT), [policy])
    assert not decision.allowed
    assert "1 ALLOW rule(s) with L7 fields never match at ztunnel" in decision.reason


def test_deny_rule_with_a_condition_applies_on_its_l4_part() -> None:
    policy = deny(
        "admins-only",
        rule([source(principals=[P_ADMIN])], when={"request.auth.claims[group]": ["x"]}),
    )
    decision = evaluate(conn(WEB, src=ADMIN), [policy])
    assert not decision.allowed
    assert decision.reason == (
        f"denied by DENY policy default/admins-only (rule 1: principal {P_ADMIN}; its L7 fields"
        " (when:request.auth.claims[group]) are not checked at L4)"
    )
    assert allowed([policy], src=CLIENT)


# --- policies for waypoints ------------------------------------------------------------------


def test_allow_policy_with_target_refs_does_not_deny_at_ztunnel() -> None:
    """Bound to a waypoint, an ALLOW policy is not one of the ALLOW policies selecting the
    workload: without it, ztunnel lets everything through (the waypoint decides)."""
    at_waypoint = allow(
        "only-client",
        rule([source(principals=[P_CLIENT])]),
        targets=[waypoint_ref("waypoint"), TargetRef("", "Service", "web")],
    )
    assert at_waypoint.for_waypoint
    assert evaluate(conn(WEB, src=ADMIN), [at_waypoint]) == Decision(
        True, None, "allowed: no ALLOW policy selects default/web"
    )
    assert allowed([at_waypoint], src=None)


def test_deny_policy_with_target_refs_does_not_deny_at_ztunnel() -> None:
    everything = deny("deny-all", rule(), targets=[waypoint_ref()])
    assert allowed([everything], src=CLIENT)


def test_waypoint_policies_beside_a_selecting_one() -> None:
    at_waypoint = allow("waypoint-allow", rule(), targets=[waypoint_ref()])
    selecting = allow("admin-only", rule([source(principals=[P_ADMIN])]))
    assert not allowed([at_waypoint, selecting], src=CLIENT)
    assert allowed([at_waypoint, selecting], src=ADMIN)


def test_audit_policy_never_decides_at_ztunnel() -> None:
    audit = Authorization("audit", "default", "AUDIT", None, (rule(),))
    assert audit.for_waypoint
    assert allowed([audit], src=None)
    assert not allowed([audit, allow("nothing")], src=CLIENT)


# --- peer authentication ---------------------------------------------------------------------


def test_default_mode_is_permissive() -> None:
    assert peer_auth_mode(snapshot(), WEB) == "PERMISSIVE"
    assert peer_auth_mode(snapshot(), WEB) == "PERMISSIVE"


def test_mesh_wide_mode() -> None:
    assert (
        peer_auth_mode(snapshot(peer_auth("mesh", "STRICT", namespace=SYSTEM_NAMESPACE)), WEB)
        == "STRICT"
    )


def test_namespace_beats_mesh_and_workload_beats_namespace() -> None:
    mesh = peer_auth("mesh", "STRICT", namespace=SYSTEM_NAMESPACE)
    ns = peer_auth("ns", "PERMISSIVE")
    web = peer_auth("web", "DISABLE", selector={"app": "web"})
    assert peer_auth_mode(snapshot(mesh, ns), WEB) == "PERMISSIVE"
    assert peer_auth_mode(snapshot(mesh, ns, web), WEB) == "DISABLE"
    assert peer_auth_mode(snapshot(mesh, ns, web), workload("db", ip="10.0.0.2")) == "PERMISSIVE"


def test_unset_falls_back_to_the_next_level() -> None:
    mesh = peer_auth("mesh", "STRICT", namespace=SYSTEM_NAMESPACE)
    assert (
        peer_auth_mode(snapshot(mesh, peer_auth("web", "UNSET", selector={"app": "web"})), WEB)
        == "STRICT"
    )
    assert peer_auth_mode(snapshot(mesh, peer_auth("ns", "UNSET")), WEB) == "STRICT"
    assert peer_auth_mode(snapshot(peer_auth("ns", "UNSET")), WEB) == "PERMISSIVE"


def test_other_namespaces_and_selectors_do_not_apply() -> None:
    policies = [
        peer_auth("other", "STRICT", namespace="other"),
        peer_auth("db", "STRICT", selector={"app": "db"}),
        peer_auth("mesh-selected", "STRICT", namespace=SYSTEM_NAMESPACE, selector={"app": "web"}),
    ]
    assert peer_auth_mode(snapshot(*policies), WEB) == "PERMISSIVE"


def test_ties_at_one_level_go_to_the_first_by_name() -> None:
    assert (
        peer_auth_mode(snapshot(peer_auth("b", "DISABLE"), peer_auth("a", "STRICT")), WEB)
        == "STRICT"
    )
