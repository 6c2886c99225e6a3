"""RequestAuthentication at the waypoint: find a request's JWTs, verify them with PyJWT,
and say who the request is from (``iss/sub`` and claims), pure: the key sets come from a
function passed in (inline ``jwks`` parsed here, ``jwks_uri`` sets from
:class:`waypoint.jwks.JwksCache`).

Which rules apply: the ``jwtRules`` of every RequestAuthentication the waypoint binds through
``targetRefs`` (:meth:`~waypoint.request.WaypointScope.binding`, as for AuthorizationPolicy;
a selector binds only sidecars, which ambit does not have).

What Envoy's ``jwt_authn`` (Istio's RequestAuthentication) does, and so this does:

- A rule with no ``fromHeaders`` / ``fromParams`` / ``fromCookies`` looks in
  ``Authorization: Bearer <token>`` and the ``access_token`` query parameter.
- No token anywhere is no error: the request has no request principal, for
  AuthorizationPolicy to judge (``requestPrincipals: ["*"]`` requires one).
- A token is checked by the rule whose issuer is its ``iss`` among the rules looking where it
  was found; none: ``Jwt issuer is not configured``. Then its time (``exp``, ``nbf``, with 60 s
  of clock skew), its audiences (if the rule lists any), its signature with a key of the set
  (same ``kid`` if the token names one, and a key type and ``alg`` fitting its ``alg``).
- Any failure refuses the request with Envoy's words as the body: 401, except audiences not
  allowed, 403 (Envoy's choice). A key set never fetched is ``Jwks remote fetch is failed``.
  If several tokens are present, one verified is enough (Envoy's ``requires_any``).
- After success: ``outputPayloadToHeader`` carries the token's payload (base64url, as in the
  token), ``outputClaimToHeaders`` each claim (strings, numbers, booleans; nested with ``.``),
  and unless ``forwardOriginalToken`` the header it came in is removed (a parameter or
  cookie stays, as in Envoy). ambit also removes those output headers from every request
  before setting them, so a client cannot send them itself.
"""

from __future__ import annotations

import base64
import enum
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from mesh.model_l7 import JwtHeader, JwtRule
from mesh.model_policy import RequestAuthentication
from waypoint.request import RequestAuth, WaypointScope

if TYPE_CHECKING:  # PyJWT loads cryptography (8 MB): imported when a key is first used
    import jwt as pyjwt

CLOCK_SKEW = 60.0  # seconds, Envoy's default
DEFAULT_HEADER = JwtHeader("authorization", "Bearer ")
DEFAULT_PARAM = "access_token"
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
    | {"HS256", "HS384", "HS512", "EdDSA"}
)


class JwtFailure(enum.Enum):
    """Why a token was refused, in Envoy's words (the body of the local reply)."""

    BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    HEADER_BAD_JSON = "Jwt header is an invalid JSON"
    PAYLOAD_BAD_JSON = "Jwt payload is an invalid JSON"
    ALG_NOT_SUPPORTED = "Jwt header [alg] is not supported"
    ISS_NOT_STRING = "Jwt payload [iss] field is not a string"
    EXP_NOT_INTEGER = "Jwt payload [exp] field is not an integer"
    NBF_NOT_INTEGER = "Jwt payload [nbf] field is not an integer"
    UNKNOWN_ISSUER = "Jwt issuer is not configured"
    EXPIRED = "Jwt is expired"
    NOT_YET_VALID = "Jwt not yet valid"
    AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
    NO_MATCHING_KEY = "Jwks doesn't have key to match kid or alg from Jwt"
    NO_VALID_KEYS = "Jwks doesn't have any valid public key"
    FETCH_FAILED = "Jwks remote fetch is failed"
    VERIFICATION_FAILED = "Jwt verification fails"

    @property
    def status(self) -> int:
        return 403 if self is JwtFailure.AUDIENCE_NOT_ALLOWED else 401

    @property
    def details(self) -> str:
        """Envoy's response code details: ``jwt_authn_access_denied{Jwt_is_expired}``."""
        return "jwt_authn_access_denied{" + self.value.replace(" ", "_") + "}"


class JwksError(ValueError):
    """A key set that cannot be read, or has no key ambit can use."""


class KeySet:
    """A JWKS: its keys as given, each prepared for an algorithm when first asked."""

    def __init__(self, keys: Iterable[Mapping[str, Any]]) -> None:
        self.keys = tuple(dict(k) for k in keys if isinstance(k, Mapping))
        self._prepared: dict[tuple[int, str], pyjwt.PyJWK | None] = {}
        if not any(self._prepare(i, _default_alg(k)) for i, k in enumerate(self.keys)):
            raise JwksError(JwtFailure.NO_VALID_KEYS.value)

    def candidates(self, alg: str, kid: str | None) -> list[pyjwt.PyJWK]:
        """The keys that may have signed a token of ``alg`` naming ``kid``."""
        found = []
        for i, jwk in enumerate(self.keys):
            if kid is not None and jwk.get("kid") != kid:
                continue
            if jwk.get("alg", alg) != alg:
                continue
            key = self._prepare(i, alg)
            if key is not None:
                found.append(key)
        return found

    def _prepare(self, index: int, alg: str | None) -> pyjwt.PyJWK | None:
        if alg is None:
            return None
        if (index, alg) not in self._prepared:
            import jwt as pyjwt

            try:
                key: pyjwt.PyJWK | None = pyjwt.PyJWK(self.keys[index], algorithm=alg)
            except (pyjwt.PyJWTError, ValueError, TypeError, KeyError):
                key = None  # a key type not fitting alg, or a broken key: not a candidate
            self._prepared[index, alg] = key
        return self._prepared[index, alg]


def _default_alg(jwk: Mapping[str, Any]) -> str | None:
    if isinstance(jwk.get("alg"), str):
        return str(jwk["alg"])
    kty, crv = jwk.get("kty"), jwk.get("crv")
    curves = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
    return {"RSA": "RS256", "oct": "HS256", "OKP": "EdDSA"}.get(kty or "") or (
        curves.get(crv or "") if kty == "EC" else None
    )


def parse_jwks(text: str | bytes) -> KeySet:
    """A JWKS document (``{"keys": [...]}``) as a :class:`KeySet`; :class:`JwksError` if it
    is not JSON, has no ``keys`` list, or no key ambit can use."""
    try:
        document = json.loads(text)
    except ValueError:
        raise JwksError("Jwks is an invalid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("Jwks does not have [keys] field")
    return KeySet(document["keys"])


@lru_cache(maxsize=64)
def _inline(text: str) -> KeySet | None:
    try:
        return parse_jwks(text)
    except JwksError:
        return None


@dataclass(frozen=True)
class Provider:
    """One JWT rule of a RequestAuthentication (``policy``, ``namespace/name``) the waypoint
    binds, with what binds it."""

    rule: JwtRule
    policy: str
    binding: str = ""


def providers_for(
    request_authentications: Iterable[RequestAuthentication],
    scope: WaypointScope,
    service: str | None,
) -> tuple[Provider, ...]:
    """The JWT rules that apply to a request to ``service`` through the waypoint ``scope``."""
    found = []
    for ra in sorted(request_authentications, key=lambda r: r.key):
        how = scope.binding(ra.namespace, ra.target_refs, service)
        if how is not None:
            found += [Provider(rule, ra.key, how) for rule in ra.jwt_rules]
    return tuple(found)


class UncheckedKeys(KeySet):
    """Stands for a key set ``ambit why`` cannot see (a rule's ``jwksUri``, which only the
    waypoint fetches): a token's claims are checked as usual, its signature is not. The
    waypoint never uses it."""

    def __init__(self) -> None:
        self.keys = ()
        self._prepared = {}


UNCHECKED: Final = UncheckedKeys()

KeyLookup = Callable[[JwtRule], KeySet | None]
"""The key set for a rule: None when it has none yet (a ``jwks_uri`` never fetched)."""


def inline_keys(rule: JwtRule) -> KeySet | None:
    """A rule's inline ``jwks``, parsed once; None for a rule without one (or a bad one)."""
    return _inline(rule.jwks) if rule.jwks else None


@dataclass(frozen=True)
class JwtResult:
    """What RequestAuthentication made of a request. ``auth`` None and ``failure`` None: no
    token. ``failure`` set: refuse with its status. ``set_headers`` and ``remove_headers``
    (lower-case names) rewrite the request passed on; ``reason`` says what happened."""

    auth: RequestAuth | None
    failure: JwtFailure | None
    reason: str
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()

    def apply(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` as the upstream gets them."""
        drop = set(self.remove_headers) | {name for name, _ in self.set_headers}
        kept = [(n, v) for n, v in headers if n.lower() not in drop]
        return kept + list(self.set_headers)


@dataclass(frozen=True)
class _Refused:
    failure: JwtFailure
    reason: str


@dataclass(frozen=True)
class _Token:
    where: str  # "header authorization", "param access_token", "cookie session"
    header: str | None  # the header it came in, if it did
    token: str


def authenticate(
    providers: tuple[Provider, ...],
    headers: Iterable[tuple[str, str]],
    path: str,
    keys: KeyLookup,
    *,
    now: float | None = None,
) -> JwtResult:
    """Find and verify the JWTs of a request (``headers`` as (name, value), ``path`` with its
    query) against ``providers``."""
    headers = [(n.lower(), v) for n, v in headers]
    outputs = tuple(
        dict.fromkeys(
            name.lower()
            for p in providers
            for name in (
                p.rule.output_payload_to_header,
                *(c.header for c in p.rule.output_claim_to_headers),
            )
            if name
        )
    )
    if not providers:
        return JwtResult(None, None, "no RequestAuthentication binds this request")
    found = _tokens(providers, headers, path)
    if not found:
        return JwtResult(None, None, "no JWT in the request", remove_headers=outputs)
    moment = time.time() if now is None else now
    refusals: list[_Refused] = []
    for token, looking in found.items():
        outcome = _verify(token, looking, keys, moment)
        if isinstance(outcome, _Refused):
            refusals.append(outcome)
            continue
        provider, claims = outcome
        return _success(provider, token, claims, outputs)
    return JwtResult(None, refusals[0].failure, refusals[0].reason)


def _tokens(
    providers: tuple[Provider, ...], headers: list[tuple[str, str]], path: str
) -> dict[_Token, list[Provider]]:
    """Every token of the request, each with the providers looking where it was found."""
    query = path.partition("?")[2].partition("#")[0]
    params = parse_qsl(query, keep_blank_values=True) if query else []
    cookies = SimpleCookie()
    for name, value in headers:
        if name == "cookie":
            try:
                cookies.load(value)
            except CookieError:  # a malformed cookie header carries no token
                continue
    found: dict[_Token, list[Provider]] = {}
    for provider in providers:
        rule = provider.rule
        defaults = not (rule.from_headers or rule.from_params or rule.from_cookies)
        for spec in (DEFAULT_HEADER,) if defaults else rule.from_headers:
            name = spec.name.lower()
            for header, value in headers:
                token = _after_prefix(value, spec.prefix, fold=defaults) if header == name else None
                if token:
                    found.setdefault(_Token(f"header {name}", name, token), []).append(provider)
        for param in (DEFAULT_PARAM,) if defaults else rule.from_params:
            for key, value in params:
                if key == param and value:
                    found.setdefault(_Token(f"param {param}", None, value), []).append(provider)
        for cookie in rule.from_cookies:
            morsel = cookies.get(cookie)
            if morsel is not None and morsel.value:
                where = _Token(f"cookie {cookie}", None, morsel.value)
                found.setdefault(where, []).append(provider)
    return found


def _after_prefix(value: str, prefix: str, *, fold: bool) -> str | None:
    value = value.strip()
    if not prefix:
        return value
    head = value[: len(prefix)]
    if head == prefix or (fold and head.lower() == prefix.lower()):
        return value[len(prefix) :].strip()
    return None


def _verify(
    token: _Token, looking: list[Provider], keys: KeyLookup, now: float
) -> tuple[Provider, dict[str, Any]] | _Refused:
    """The provider that verified ``token`` and its claims, or why it failed."""

    def failed(failure: JwtFailure, detail: str = "") -> _Refused:
        return _Refused(failure, f"JWT in {token.where} refused: {failure.value}{detail}")

    parts = token.token.split(".")
    if len(parts) != 3 or not all(parts[:2]) or not parts[2]:
        return failed(JwtFailure.BAD_FORMAT)
    try:
        header = json.loads(_b64decode(parts[0]))
    except ValueError:
        return failed(JwtFailure.HEADER_BAD_JSON)
    try:
        claims = json.loads(_b64decode(parts[1]))
    except ValueError:
        return failed(JwtFailure.PAYLOAD_BAD_JSON)
    if not isinstance(header, dict):
        return failed(JwtFailure.HEADER_BAD_JSON)
    if not isinstance(claims, dict):
        return failed(JwtFailure.PAYLOAD_BAD_JSON)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        return failed(JwtFailure.ALG_NOT_SUPPORTED, f" ({alg!r})")
    iss = claims.get("iss")
    if not isinstance(iss, str):
        return failed(JwtFailure.ISS_NOT_STRING)
    provider = next((p for p in looking if p.rule.issuer == iss), None)
    if provider is None:
        return failed(JwtFailure.UNKNOWN_ISSUER, f" (issuer {iss})")
    rule = provider.rule
    for field, bad in (("exp", JwtFailure.EXP_NOT_INTEGER), ("nbf", JwtFailure.NBF_NOT_INTEGER)):
        value = claims.get(field)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            return failed(bad)
        if field == "exp" and now > value + CLOCK_SKEW:
            return failed(JwtFailure.EXPIRED)
        if field == "nbf" and now + CLOCK_SKEW < value:
            return failed(JwtFailure.NOT_YET_VALID)
    if rule.audiences:
        aud = claims.get("aud")
        given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(rule.audiences) & {a for a in given if isinstance(a, str)}:
            return failed(JwtFailure.AUDIENCE_NOT_ALLOWED, f" (audiences {given})")
    keyset = keys(rule)
    if keyset is None:
        failure = JwtFailure.FETCH_FAILED if rule.jwks_uri else JwtFailure.NO_VALID_KEYS
        return failed(failure, f" (issuer {iss})")
    if isinstance(keyset, UncheckedKeys):
        return provider, claims
    kid = header.get("kid")
    candidates = keyset.candidates(alg, kid if isinstance(kid, str) else None)
    if not candidates:
        return failed(JwtFailure.NO_MATCHING_KEY, f" (alg {alg}, kid {kid})")
    options: Any = {"verify_signature": True, "verify_exp": False, "verify_nbf": False}
    options |= {"verify_iat": False, "verify_aud": False, "verify_iss": False}
    import jwt as pyjwt

    for key in candidates:
        try:
            pyjwt.decode(token.token, key=key, algorithms=[alg], options=options)
        except pyjwt.InvalidSignatureError:
            continue
        except pyjwt.PyJWTError as exc:
            return failed(JwtFailure.VERIFICATION_FAILED, f" ({exc})")
        return provider, claims
    return failed(JwtFailure.VERIFICATION_FAILED)


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _success(
    provider: Provider, token: _Token, claims: dict[str, Any], outputs: tuple[str, ...]
) -> JwtResult:
    rule = provider.rule
    sub = claims.get("sub")
    principal = f"{rule.issuer}/{sub if isinstance(sub, str) else ''}"
    set_headers: list[tuple[str, str]] = []
    if rule.output_payload_to_header:
        set_headers.append((rule.output_payload_to_header.lower(), token.token.split(".")[1]))
    for copy in rule.output_claim_to_headers:
        value = _claim_text(claims, copy.claim)
        if value is not None:
            set_headers.append((copy.header.lower(), value))
    remove = list(outputs)
    if not rule.forward_original_token and token.header is not None:
        remove.append(token.header)
    reason = (
        f"JWT in {token.where} verified by RequestAuthentication {provider.policy}"
        f" (issuer {rule.issuer}): request principal {principal}"
    )
    return JwtResult(
        RequestAuth(principal, claims), None, reason, tuple(set_headers), tuple(remove)
    )


def _claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    """A claim as a header value: strings, numbers, booleans (``true``), lists of them
    joined with ``,``; nested claims by ``a.b``. None for anything else."""
    value: Any = claims.get(name)
    if value is None and "." in name:
        value = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None

    def text(v: Any) -> str | None:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str | int | float):
            return str(v)
        return None

    if isinstance(value, list):
        items = [text(v) for v in value]
        if any(i is None for i in items):
            return None
        return ",".join(i for i in items if i is not None)
    return text(value)
