"""Who is asking the CA, and what they may have.

Authentication maps a bearer token to a caller name (:class:`TokenAuthenticator`).
Authorization is a question asked of an object passed in: may this caller have
this identity? :class:`StaticAuthorizer` answers it from a fixed table; node
authorization (a ztunnel may have the identities of the pods on its node) is
the control plane's :class:`k8s.controlplane.NodeAuthorizer`, through the same
:class:`Authorizer` protocol.

A caller named ``system:serviceaccount:NS:SA`` (what Kubernetes' TokenReview says of a
service-account token; local mode names the waypoints' tokens the same way) is that
service account: :class:`ServiceAccountAuthorizer` lets it have exactly
``spiffe://<td>/ns/NS/sa/SA``. :class:`ServiceAccountsOrNodes` sends such callers there
and every other caller (a node) to the node authorizer, so neither can have the
other's identities.

On Kubernetes a caller is whoever the API server's TokenReview says its token belongs to
(:class:`Reviewer`, :class:`ca.kube.TokenReviewAuthenticator`): a :class:`Caller`, the
service account's name and, for a pod-bound token, the pod (:class:`PodClaim`). An
authorizer that can say why it refuses (:class:`Explaining`) gives the caller and the log
that reason; :func:`refusal` asks any authorizer the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ca.errors import CaError
from mesh.identity import IdentityError, SpiffeId
from mesh.tokens import TokenTable

_NAMESPACE_WILDCARD_SUFFIX = "/sa/*"
SERVICE_ACCOUNT_CALLER_PREFIX = "system:serviceaccount:"


class Authenticator(Protocol):
    def caller_for(self, token: str) -> str | None:
        """The caller a bearer token belongs to, or None for an unknown token."""
        ...


class Authorizer(Protocol):
    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        """Whether ``caller`` may receive a certificate for ``identity``."""
        ...


@dataclass(frozen=True)
class PodClaim:
    """The pod a service-account token is bound to, as the API server's TokenReview says
    (``user.extra``: ``authentication.kubernetes.io/pod-name``, ``pod-uid``,
    ``node-name``); ``node`` is "" when the token names none."""

    namespace: str
    name: str
    uid: str
    node: str = ""


class Caller(str):
    """A caller's name, which is what every authorizer compares, with what the review of
    its token said beyond the name: the pod a pod-bound token belongs to (None for other
    tokens). A ``str``, so that authorizers that compare names only (a static table, a
    service account's own identity) take it unchanged."""

    pod: PodClaim | None

    def __new__(cls, name: str, pod: PodClaim | None = None) -> Caller:
        caller = super().__new__(cls, name)
        caller.pod = pod
        return caller


class NotAuthenticated(CaError):
    """The CA does not accept a bearer token; the message says why (401)."""


class ReviewUnavailable(CaError):
    """A token could not be reviewed now (the API server is unreachable or refuses the
    control plane); the message says what to check (503: the caller retries)."""


@runtime_checkable
class Reviewer(Protocol):
    async def review(self, token: str) -> Caller:
        """Who ``token`` belongs to; raises :class:`NotAuthenticated` or
        :class:`ReviewUnavailable`."""
        ...


@runtime_checkable
class Explaining(Protocol):
    def refusal(self, caller: str, identity: SpiffeId) -> str | None:
        """None if ``caller`` may have ``identity``, else why not, in words the caller and
        an operator can act on."""
        ...


async def authenticate(authenticator: Authenticator | Reviewer, token: str) -> str:
    """The caller ``token`` belongs to, asked of a static table or a reviewer alike;
    raises :class:`NotAuthenticated` (or :class:`ReviewUnavailable`)."""
    if isinstance(authenticator, Reviewer):
        return await authenticator.review(token)
    caller = authenticator.caller_for(token)
    if caller is None:
        raise NotAuthenticated("unknown bearer token; check the token this client was given")
    return caller


def refusal(authorizer: Authorizer, caller: str, identity: SpiffeId) -> str | None:
    """Why ``caller`` may not have ``identity`` (None: it may): the authorizer's own reason
    if it gives one, else a sentence saying that it refused."""
    if isinstance(authorizer, Explaining):
        return authorizer.refusal(caller, identity)
    if authorizer.may_issue(caller, identity):
        return None
    return f"caller {caller!r} may not have certificates for {identity}"


class TokenAuthenticator(TokenTable):
    """Static bearer tokens, each naming one caller, compared in constant time
    (:class:`mesh.tokens.TokenTable`)."""


@dataclass(frozen=True)
class NamespaceWildcard:
    """Every service account of one namespace: ``spiffe://<td>/ns/<ns>/sa/*``."""

    trust_domain: str
    namespace: str

    def matches(self, identity: SpiffeId) -> bool:
        return identity.trust_domain == self.trust_domain and identity.namespace == self.namespace

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/*"


IdentityPattern = SpiffeId | NamespaceWildcard


def parse_identity_pattern(text: str) -> IdentityPattern:
    """``spiffe://td/ns/NS/sa/SA`` (one identity) or ``spiffe://td/ns/NS/sa/*`` (a namespace)."""
    if text.endswith(_NAMESPACE_WILDCARD_SUFFIX):
        # Validate everything else by parsing it with a placeholder service account.
        try:
            probe = SpiffeId.parse(text[: -len("*")] + "x")
        except IdentityError as exc:
            raise IdentityError(f"{text!r} is not a namespace wildcard: {exc}") from exc
        return NamespaceWildcard(probe.trust_domain, probe.namespace)
    return SpiffeId.parse(text)


class StaticAuthorizer:
    """A fixed table: caller -> identities (or whole namespaces) it may have."""

    def __init__(self, grants: Mapping[str, Iterable[SpiffeId | NamespaceWildcard | str]]) -> None:
        """Strings are parsed with :func:`parse_identity_pattern`; bad ones raise at once."""
        self._grants: dict[str, tuple[IdentityPattern, ...]] = {
            caller: tuple(parse_identity_pattern(p) if isinstance(p, str) else p for p in patterns)
            for caller, patterns in grants.items()
        }

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        for pattern in self._grants.get(caller, ()):
            if isinstance(pattern, NamespaceWildcard):
                if pattern.matches(identity):
                    return True
            elif pattern == identity:
                return True
        return False


def service_account_caller(namespace: str, service_account: str) -> str:
    """The caller name of a service account's token: ``system:serviceaccount:NS:SA``."""
    return f"{SERVICE_ACCOUNT_CALLER_PREFIX}{namespace}:{service_account}"


def service_account_of(caller: str) -> tuple[str, str] | None:
    """``(namespace, service account)`` of a ``system:serviceaccount:NS:SA`` caller, or
    None for any other caller (a node's name never has a colon)."""
    if not caller.startswith(SERVICE_ACCOUNT_CALLER_PREFIX):
        return None
    namespace, sep, name = caller.removeprefix(SERVICE_ACCOUNT_CALLER_PREFIX).partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


class ServiceAccountAuthorizer:
    """A service account may have its own identity in ``trust_domain``, nothing else."""

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        account = service_account_of(caller)
        return (
            account is not None
            and identity.trust_domain == self.trust_domain
            and (identity.namespace, identity.service_account) == account
        )


class ServiceAccountsOrNodes:
    """Service-account callers (``system:serviceaccount:...``) asked of ``accounts``,
    every other caller of ``nodes``: a service account's token never reaches the node
    rules (which grant any node the ztunnel identity), nor a node's the other way."""

    def __init__(self, accounts: Authorizer, nodes: Authorizer) -> None:
        self._accounts = accounts
        self._nodes = nodes

    def may_issue(self, caller: str, identity: SpiffeId) -> bool:
        if caller.startswith(SERVICE_ACCOUNT_CALLER_PREFIX):
            return self._accounts.may_issue(caller, identity)
        return self._nodes.may_issue(caller, identity)
