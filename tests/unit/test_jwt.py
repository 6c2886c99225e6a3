"""RequestAuthentication at the waypoint: finding tokens, verifying them, what a request
carries on, and Envoy's words for every refusal."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from mesh.constants import SYSTEM_NAMESPACE
from mesh.model import RequestAuthentication
from mesh.model_l7 import ClaimToHeader, JwtHeader, JwtRule
from tests.builders import allow, class_ref, rule, service_ref, source, waypoint_ref
from tests.jwt_support import ISSUER, SigningKey, claims, ec_key, jwks, rsa_key
from waypoint.authz import evaluate_request
from waypoint.jwt import (
    JwksError,
    JwtFailure,
    JwtResult,
    KeySet,
    Provider,
    authenticate,
    inline_keys,
    parse_jwks,
    providers_for,
)
from waypoint.request import L7Request, WaypointScope

SCOPE = WaypointScope("default/waypoint")
RSA = rsa_key()
EC = ec_key()
OTHER = rsa_key("rsa-other")  # not published


def rule_(**fields: Any) -> JwtRule:
    """A rule for :data:`ISSUER` with the published RSA and EC keys inline."""
    return JwtRule(**({"issuer": ISSUER, "jwks": jwks(RSA, EC)} | fields))


def run(
    token: str | None = None,
    *,
    rules: tuple[JwtRule, ...] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/",
    now: float | None = None,
) -> JwtResult:
    """Authenticate a request with ``token`` as ``Authorization: Bearer``."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    providers = tuple(Provider(r, "default/ra") for r in rules or (rule_(),))
    return authenticate(providers, sent.items(), path, inline_keys, now=now)


def refused(result: JwtResult) -> tuple[int, str] | None:
    return (result.failure.status, result.failure.value) if result.failure else None


# --- valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_gives_the_request_principal_and_claims(key: SigningKey) -> None:
    result = run(key.sign(claims(groups=["dev"])))
    assert result.failure is None
    assert result.auth is not None
    assert result.auth.principal == f"{ISSUER}/alice"
    assert result.auth.claims["groups"] == ["dev"]
    assert result.reason == (
        "JWT in header authorization verified by RequestAuthentication default/ra"
        f" (issuer {ISSUER}): request principal {ISSUER}/alice"
    )


def test_the_token_header_is_removed_unless_forwarded() -> None:
    token = RSA.sign(claims())
    headers = [("Authorization", f"Bearer {token}"), ("x-other", "1")]
    assert run(token).apply(headers) == [("x-other", "1")]
    kept = run(token, rules=(rule_(forward_original_token=True),))
    assert kept.apply(headers) == headers


def test_a_key_without_kid_in_the_token_is_found_by_its_alg() -> None:
    assert run(RSA.sign(claims(), kid=None)).auth is not None


def test_bearer_is_case_insensitive_in_the_default_header() -> None:
    result = run(headers={"authorization": f"bearer {RSA.sign(claims())}"})
    assert result.auth is not None


def test_the_default_access_token_parameter() -> None:
    result = run(path=f"/x?a=1&access_token={RSA.sign(claims())}")
    assert result.auth is not None
    assert result.reason.startswith("JWT in param access_token verified")


def test_from_headers_with_a_prefix() -> None:
    r = rule_(from_headers=(JwtHeader("x-jwt", "Token "),))
    token = RSA.sign(claims())
    assert run(rules=(r,), headers={"X-Jwt": f"Token {token}"}).auth is not None
    # Elsewhere, or without the prefix, it is not found: no token, no error.
    unprefixed = run(rules=(r,), headers={"x-jwt": token})
    assert (unprefixed.auth, unprefixed.failure) == (None, None)
    assert run(token, rules=(r,)).failure is None  # the Authorization header is not looked at


def test_from_params_and_cookies() -> None:
    token = RSA.sign(claims())
    by_param = rule_(from_params=("jwt",))
    assert run(rules=(by_param,), path=f"/?jwt={token}").auth is not None
    assert run(rules=(by_param,), path=f"/?access_token={token}").auth is None
    by_cookie = rule_(from_cookies=("session",))
    result = run(rules=(by_cookie,), headers={"cookie": f"theme=dark; session={token}"})
    assert result.auth is not None


def test_rules_of_several_issuers_share_the_header_and_pick_by_iss() -> None:
    other = rule_(issuer="https://other.example", jwks=jwks(OTHER))
    token = OTHER.sign(claims(iss="https://other.example", sub="bob"))
    result = run(token, rules=(rule_(), other))
    assert result.auth is not None
    assert result.auth.principal == "https://other.example/bob"


def test_no_token_is_not_an_error() -> None:
    result = run()
    assert (result.auth, result.failure, result.reason) == (None, None, "no JWT in the request")


def test_one_valid_token_of_several_is_enough() -> None:
    r = rule_(from_headers=(JwtHeader("authorization", "Bearer "), JwtHeader("x-jwt")))
    good = RSA.sign(claims())
    result = run(good, rules=(r,), headers={"x-jwt": "not.a.token"})
    assert result.auth is not None


# --- refusals --------------------------------------------------------------------------------


def test_expired_and_not_yet_valid_with_a_minute_of_skew() -> None:
    now = time.time()
    assert refused(run(RSA.sign(claims(exp=int(now) - 120)))) == (401, "Jwt is expired")
    assert run(RSA.sign(claims(exp=int(now) - 30))).auth is not None
    assert refused(run(RSA.sign(claims(nbf=int(now) + 600)))) == (401, "Jwt not yet valid")
    assert run(RSA.sign(claims(nbf=int(now) + 30))).auth is not None


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (RSA.sign(claims(iss="https://evil.example")), (401, "Jwt issuer is not configured")),
        (OTHER.sign(claims(), kid=RSA.kid), (401, "Jwt verification fails")),
        (OTHER.sign(claims()), (401, "Jwks doesn't have key to match kid or alg from Jwt")),
        (
            RSA.sign(claims(), alg="RS384"),
            (401, "Jwks doesn't have key to match kid or alg from Jwt"),
        ),
        (
            EC.sign(claims(), kid=RSA.kid),
            (401, "Jwks doesn't have key to match kid or alg from Jwt"),
        ),
        ("abc", (401, JwtFailure.BAD_FORMAT.value)),
        ("a.b", (401, JwtFailure.BAD_FORMAT.value)),
        ("e30.e30.", (401, JwtFailure.BAD_FORMAT.value)),
        ("!!!.e30.c2ln", (401, "Jwt header is an invalid JSON")),
        (RSA.sign(claims(exp="soon")), (401, "Jwt payload [exp] field is not an integer")),
        (RSA.sign({"sub": "alice"}), (401, "Jwt payload [iss] field is not a string")),
    ],
    ids=[
        "wrong issuer",
        "bad signature",
        "unknown kid",
        "alg the key does not have",
        "key type not fitting alg",
        "one part",
        "two parts",
        "empty signature",
        "header not JSON",
        "exp not a number",
        "no iss",
    ],
)
def test_refusals_in_envoys_words(token: str, expected: tuple[int, str]) -> None:
    result = run(token)
    assert result.auth is None
    assert refused(result) == expected


def test_alg_none_is_not_supported() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    assert refused(run(f"{header}.{payload}.c2ln")) == (401, "Jwt header [alg] is not supported")


def test_audiences_not_allowed_is_403_as_in_envoy() -> None:
    r = rule_(audiences=("web", "api"))
    assert refused(run(RSA.sign(claims(aud="db")), rules=(r,))) == (
        403,
        "Audiences in Jwt are not allowed",
    )
    assert refused(run(RSA.sign(claims()), rules=(r,))) == (403, "Audiences in Jwt are not allowed")
    assert run(RSA.sign(claims(aud=["x", "api"])), rules=(r,)).auth is not None
    assert run(RSA.sign(claims(aud="anything"))).auth is not None  # no audiences: not checked


def test_a_jwks_uri_never_fetched_fails_closed() -> None:
    r = JwtRule(issuer=ISSUER, jwks_uri="https://issuer.example/jwks")
    result = authenticate(
        (Provider(r, "default/ra"),),
        [("authorization", f"Bearer {RSA.sign(claims())}")],
        "/",
        lambda _: None,
    )
    assert refused(result) == (401, "Jwks remote fetch is failed")
    assert result.failure is not None
    assert result.failure.details == "jwt_authn_access_denied{Jwks_remote_fetch_is_failed}"


def test_an_unreadable_inline_jwks_verifies_nothing() -> None:
    r = rule_(jwks='{"keys": []}')
    assert refused(run(RSA.sign(claims()), rules=(r,))) == (
        401,
        "Jwks doesn't have any valid public key",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "Jwks is an invalid JSON"),
        ('{"kid": 1}', "Jwks does not have [keys] field"),
        ('{"keys": [{"kty": "RSA", "n": "AQAB"}]}', "Jwks doesn't have any valid public key"),
    ],
)
def test_parse_jwks_refuses_what_it_cannot_use(text: str, message: str) -> None:
    with pytest.raises(JwksError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_jwks(text)


def test_a_keyset_skips_keys_it_cannot_use() -> None:
    keys = KeySet([{"kty": "nope"}, RSA.jwk(with_alg=False)])
    assert [k.key_id for k in keys.candidates("RS256", None)] == [RSA.kid]
    assert [k.key_id for k in keys.candidates("RS512", RSA.kid)] == [RSA.kid]
    assert keys.candidates("ES256", None) == []


# --- what is passed on -----------------------------------------------------------------------


def test_output_payload_and_claims_to_headers() -> None:
    r = rule_(
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(
            ClaimToHeader("x-user", "sub"),
            ClaimToHeader("x-groups", "groups"),
            ClaimToHeader("x-admin", "admin"),
            ClaimToHeader("x-tier", "realm.tier"),
            ClaimToHeader("x-missing", "nope"),
        ),
    )
    token = RSA.sign(claims(groups=["dev", "ops"], admin=True, realm={"tier": "gold"}))
    result = run(token, rules=(r,))
    headers = dict(result.set_headers)
    payload = headers.pop("x-jwt-payload")
    assert payload == token.split(".")[1]
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["sub"] == "alice"
    assert headers == {
        "x-user": "alice",
        "x-groups": "dev,ops",
        "x-admin": "true",
        "x-tier": "gold",
    }


def test_a_client_cannot_send_the_output_headers_itself() -> None:
    r = rule_(output_payload_to_header="x-jwt-payload")
    result = run(rules=(r,), headers={"x-jwt-payload": "forged"})
    assert result.apply([("X-Jwt-Payload", "forged"), ("a", "b")]) == [("a", "b")]


# --- which rules apply -----------------------------------------------------------------------


def test_providers_are_the_rules_of_request_authentications_the_waypoint_binds() -> None:
    r = rule_()
    ras = [
        RequestAuthentication("gw", "default", None, (r,), (waypoint_ref(),)),
        RequestAuthentication("svc", "default", None, (r,), (service_ref("web"),)),
        RequestAuthentication("cls", SYSTEM_NAMESPACE, None, (r,), (class_ref(),)),
        RequestAuthentication("selector", "default", (("app", "web"),), (r,)),
        RequestAuthentication("ns-wide", "default", None, (r,)),
        RequestAuthentication("root", SYSTEM_NAMESPACE, None, (r,)),
    ]
    bound = providers_for(ras, SCOPE, "default/web")
    assert [(p.policy, p.binding) for p in bound] == [
        (f"{SYSTEM_NAMESPACE}/cls", "GatewayClass istio-waypoint"),
        ("default/gw", "Gateway default/waypoint"),
        ("default/svc", "Service default/web"),
    ]
    assert [p.policy for p in providers_for(ras, SCOPE, "default/db")] == [
        f"{SYSTEM_NAMESPACE}/cls",
        "default/gw",
    ]


def test_no_request_authentication_means_tokens_are_not_looked_at() -> None:
    result = authenticate((), [("authorization", "Bearer garbage")], "/", inline_keys)
    assert (result.auth, result.failure) == (None, None)


def test_the_request_principal_feeds_authorization() -> None:
    require_jwt = allow(
        "require-jwt", rule([source(request_principals=[f"{ISSUER}/*"])]), targets=[waypoint_ref()]
    )

    def decide(token: str | None) -> bool:
        auth = run(token).auth
        request = L7Request(SCOPE, None, "10.0.0.9", "default/web", 80, "GET", "/", "web", (), auth)
        return evaluate_request(request, [require_jwt]).allowed

    assert decide(RSA.sign(claims()))
    assert not decide(None)
