"""Bearer tokens and the static authorizer of the CA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ca import NamespaceWildcard, StaticAuthorizer, TokenAuthenticator
from ca.auth import (
    ServiceAccountAuthorizer,
    ServiceAccountsOrNodes,
    parse_identity_pattern,
    service_account_caller,
    service_account_of,
)
from mesh.identity import IdentityError, SpiffeId

WEB = SpiffeId("cluster.local", "default", "web")
DB = SpiffeId("cluster.local", "default", "db")
ADMIN = SpiffeId("cluster.local", "kube-system", "admin")


def test_tokens_name_their_callers() -> None:
    auth = TokenAuthenticator({"token-a": "node-a", "token-b": "node-b"})
    assert auth.caller_for("token-a") == "node-a"
    assert auth.caller_for("token-b") == "node-b"
    assert auth.caller_for("token-c") is None
    assert auth.caller_for("") is None
    assert auth.caller_for("token-a ") is None


def test_empty_token_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="node-a"):
        TokenAuthenticator({"": "node-a"})


def test_static_authorizer_exact_identities() -> None:
    authz = StaticAuthorizer({"node-a": {WEB}})
    assert authz.may_issue("node-a", WEB)
    assert not authz.may_issue("node-a", DB)
    assert not authz.may_issue("node-b", WEB)


def test_static_authorizer_namespace_wildcard() -> None:
    authz = StaticAuthorizer({"node-a": ["spiffe://cluster.local/ns/default/sa/*"]})
    assert authz.may_issue("node-a", WEB)
    assert authz.may_issue("node-a", DB)
    assert not authz.may_issue("node-a", ADMIN)
    assert not authz.may_issue("node-a", SpiffeId("other.td", "default", "web"))


def test_patterns_parse() -> None:
    assert parse_identity_pattern(str(WEB)) == WEB
    assert parse_identity_pattern("spiffe://cluster.local/ns/default/sa/*") == NamespaceWildcard(
        "cluster.local", "default"
    )
    assert str(NamespaceWildcard("cluster.local", "default")).endswith("/ns/default/sa/*")


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://cluster.local/ns/*/sa/*",
        "spiffe://cluster.local/ns/Default/sa/*",
        "cluster.local/ns/default/sa/*",
        "spiffe://cluster.local/ns/default/sa/we*",
    ],
)
def test_bad_patterns_fail_at_construction(text: str) -> None:
    with pytest.raises(IdentityError):
        StaticAuthorizer({"node-a": [text]})


def test_a_service_account_caller_is_named_as_kubernetes_token_review_names_it() -> None:
    assert service_account_caller("shop", "waypoint") == "system:serviceaccount:shop:waypoint"
    assert service_account_of("system:serviceaccount:shop:waypoint") == ("shop", "waypoint")
    for other in ("node-1", "system:serviceaccount:shop", "system:serviceaccount::x",
                  "system:serviceaccount:shop:a:b", "system:node:node-1"):  # fmt: skip
        assert service_account_of(other) is None, other


def test_a_service_account_may_have_its_own_identity_only() -> None:
    authorizer = ServiceAccountAuthorizer("cluster.local")
    caller = service_account_caller("shop", "edge")
    assert authorizer.may_issue(caller, SpiffeId("cluster.local", "shop", "edge"))
    assert not authorizer.may_issue(caller, SpiffeId("cluster.local", "shop", "web"))
    assert not authorizer.may_issue(caller, SpiffeId("cluster.local", "other", "edge"))
    assert not authorizer.may_issue(caller, SpiffeId("example.org", "shop", "edge"))
    assert not authorizer.may_issue("node-1", SpiffeId("cluster.local", "shop", "edge"))


def test_service_accounts_and_nodes_are_asked_of_their_own_rules() -> None:
    nodes = StaticAuthorizer({"node-1": ["spiffe://cluster.local/ns/shop/sa/*"]})
    both = ServiceAccountsOrNodes(ServiceAccountAuthorizer("cluster.local"), nodes)
    web = SpiffeId("cluster.local", "shop", "web")
    assert both.may_issue("node-1", web)
    assert not both.may_issue(service_account_caller("shop", "edge"), web)
    assert both.may_issue(service_account_caller("shop", "web"), web)
    sneaky = StaticAuthorizer({service_account_caller("shop", "edge"): [str(web)]})
    assert not ServiceAccountsOrNodes(ServiceAccountAuthorizer("cluster.local"), sneaky).may_issue(
        service_account_caller("shop", "edge"), web
    ), "a service account never reaches the node rules"


def test_the_tokens_file_names_nodes_and_service_accounts(tmp_path: Path) -> None:
    from k8s.token_files import TokensFile
    from mesh.tokens import TokenTable

    path = tmp_path / "tokens.json"
    table = TokenTable()
    tokens = TokensFile(path, table)
    path.write_text(json.dumps({"node-1": "n1"}))
    tokens.reload()
    waypoint = service_account_caller("shop", "edge")
    path.write_text(json.dumps({"node-1": "n1", waypoint: "wp"}))
    os.utime(path, ns=(1, 1))  # a change within the file system's time resolution
    tokens.reload()
    assert (table.caller_for("n1"), table.caller_for("wp")) == ("node-1", waypoint)
