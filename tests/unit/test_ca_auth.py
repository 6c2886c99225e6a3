"""Bearer tokens and the static authorizer of the CA."""

from __future__ import annotations

import pytest

from ca import NamespaceWildcard, StaticAuthorizer, TokenAuthenticator
from ca.auth import parse_identity_pattern
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
