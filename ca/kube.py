"""The CA on Kubernetes: who a bearer token belongs to, asked of the API server.

:class:`TokenReviewAuthenticator` sends each token to the API server's TokenReview with
the CA's audience (``ambit-ca``): a token minted for another audience, expired, or
bound to an object that is gone is refused there (401 here, with the API server's
reason). An accepted token becomes a :class:`ca.auth.Caller`: its service account
(``system:serviceaccount:NS:SA``) and, for a pod-bound token (a projected token, or a
TokenRequest with ``boundObjectRef``), the pod it is bound to, read from ``user.extra``
(:func:`caller_from_review`, pure).

Successful reviews are kept for a short while (:class:`ReviewCache`: 10 s, at most 1,024
tokens, by SHA-256 of the token), as the API server keeps its own for about 10 s; a
refused one never is. Nothing is decided from the cache alone: the authorizer checks the
caller's pod against what the control plane currently knows on every request (a
deleted pod's token is refused as soon as its pod is gone from the control plane's
store, whatever either cache holds).

The API server is reached through :class:`KubeRequests`, a seam the Kubernetes source
implements (``k8s.sources.kubernetes.ClientApi.request``) with the control plane's own
credentials (kubeconfig or in-cluster), so this package needs no client of its own.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ca.auth import (
    SERVICE_ACCOUNT_CALLER_PREFIX,
    Caller,
    NotAuthenticated,
    PodClaim,
    ReviewUnavailable,
    service_account_of,
)
from ca.errors import CaError

CA_AUDIENCE: Final = "ambit-ca"
TOKEN_REVIEWS_PATH: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
EXTRA_POD_NAME: Final = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID: Final = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME: Final = "authentication.kubernetes.io/node-name"
REVIEW_CACHE_SECONDS: Final = 10.0
REVIEW_CACHE_SIZE: Final = 1024

Json = dict[str, Any]


class ApiUnavailable(CaError):
    """The API server gave no answer (refused, reset, timed out); ``hint`` says what to
    check."""

    def __init__(self, detail: str, hint: str = "is the API server reachable?") -> None:
        super().__init__(f"{detail} ({hint})")
        self.hint = hint


class KubeRequests(Protocol):
    """One request to the API server with the control plane's credentials."""

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Json]:
        """The HTTP status and the decoded JSON body, whatever the status; raises
        :class:`ApiUnavailable` when no answer came."""
        ...


def _one(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


def caller_from_review(review: Mapping[str, Any], audience: str = CA_AUDIENCE) -> Caller:
    """The caller a TokenReview's answer names; raises :class:`NotAuthenticated` with the
    API server's reason when it refused the token, or when the answer is not a service
    account's for ``audience``."""
    status = review.get("status")
    if not isinstance(status, Mapping):
        raise NotAuthenticated("the API server's TokenReview answer has no status")
    if status.get("authenticated") is not True:
        why = status.get("error") or "the token is not valid"
        raise NotAuthenticated(
            f"the API server refused the token for audience {audience!r}: {why}"
            f" (a ztunnel or waypoint needs a service-account token for audience {audience!r})"
        )
    audiences = status.get("audiences")
    if isinstance(audiences, list) and audience not in audiences:
        raise NotAuthenticated(f"the token is valid for {audiences}, not for {audience!r}")
    user = status.get("user")
    name = user.get("username") if isinstance(user, Mapping) else None
    if not isinstance(name, str) or service_account_of(name) is None:
        raise NotAuthenticated(
            f"the token belongs to {name!r}, not to a service account"
            f" ({SERVICE_ACCOUNT_CALLER_PREFIX}NS:SA); the CA signs for service accounts only"
        )
    extra = user.get("extra") if isinstance(user, Mapping) else None
    extra = extra if isinstance(extra, Mapping) else {}
    pod_name, pod_uid = _one(extra, EXTRA_POD_NAME), _one(extra, EXTRA_POD_UID)
    if not pod_name or not pod_uid:
        return Caller(name)
    account = service_account_of(name)
    assert account is not None
    # A bound token's pod is in its service account's namespace.
    return Caller(name, PodClaim(account[0], pod_name, pod_uid, _one(extra, EXTRA_NODE_NAME)))


def review_request(token: str, audience: str) -> Json:
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }


class ReviewCache:
    """Callers of tokens reviewed successfully, each for ``seconds``, at most ``size``
    (the least recently used go first); keyed by the token's SHA-256, never the token."""

    def __init__(
        self,
        *,
        seconds: float = REVIEW_CACHE_SECONDS,
        size: int = REVIEW_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.size = size
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).digest()
        found = self._entries.get(key)
        if found is None:
            return None
        expires, caller = found
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return caller

    def put(self, token: str, caller: Caller) -> None:
        if self.seconds <= 0 or self.size <= 0:
            return
        key = hashlib.sha256(token.encode()).digest()
        self._entries[key] = (self._clock() + self.seconds, caller)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class TokenReviewAuthenticator:
    """A :class:`ca.auth.Reviewer`: each token reviewed by the API server for
    ``audience``, successes kept in a :class:`ReviewCache`."""

    def __init__(
        self,
        api: KubeRequests,
        *,
        audience: str = CA_AUDIENCE,
        cache: ReviewCache | None = None,
    ) -> None:
        self._api = api
        self.audience = audience
        self.cache = cache if cache is not None else ReviewCache()

    async def review(self, token: str) -> Caller:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        try:
            status, answer = await self._api.request(
                "POST", TOKEN_REVIEWS_PATH, review_request(token, self.audience)
            )
        except ApiUnavailable as exc:
            raise ReviewUnavailable(f"cannot review the token: {exc}") from exc
        if status not in (200, 201):
            hint = (
                "may the control plane's service account create tokenreviews?"
                " (its ClusterRole needs create on authentication.k8s.io tokenreviews)"
                if status in (401, 403)
                else "the API server may be overloaded or restarting"
            )
            message = answer.get("message") or f"HTTP {status}"
            raise ReviewUnavailable(f"the TokenReview failed: {message} ({hint})")
        caller = caller_from_review(answer, self.audience)
        self.cache.put(token, caller)
        return caller
