"""Who may use the control plane's tap API on Kubernetes: the caller's own credentials,
asked of the API server, as ``linkerd viz tap`` does.

The bearer token the caller presents (its kubeconfig's) is reviewed by a TokenReview (the
API server's own audiences); the user it names must then be allowed, by a
SubjectAccessReview, verb ``watch`` on the ``tap`` subresource of the target in group
``ambit.io``: ``pods/tap`` (a pod), ``services/tap`` (a Service), ``namespaces/tap`` (a
namespace, by its name). ``/v1/snapshot`` (the whole mesh's config, ``ambit why``) needs
``get`` on ``meshsnapshots`` of ``ambit.io``, cluster-wide. No such API exists: RBAC
grants these attributes like any other, and ``ambit install`` binds them to nobody; an
operator grants them with a ClusterRole such as::

    rules:
    - apiGroups: [ambit.io]
      resources: [pods/tap, services/tap, namespaces/tap]
      verbs: [watch]

Refusals: 401 (no token, or the API server does not know it), 403 (known, not allowed:
the message names the verb and resource), 503 (the API server could not be asked).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ca.kube import ApiUnavailable, KubeRequests
from k8s.tap_server import TapRefusal
from mesh.tap import TapFilter

TOKEN_REVIEWS: Final = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS: Final = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
GROUP: Final = "ambit.io"
_RESOURCES: Final = {"pod": "pods", "svc": "services", "ns": "namespaces"}


def attributes(tap: TapFilter | None) -> dict[str, str]:
    """The resource attributes a caller needs for ``tap`` (None: the snapshot)."""
    if tap is None:
        return {"verb": "get", "group": GROUP, "resource": "meshsnapshots"}
    target = tap.target
    if target.kind == "ns":
        return {"verb": "watch", "group": GROUP, "resource": "namespaces",
                "subresource": "tap", "name": target.namespace}  # fmt: skip
    return {"verb": "watch", "group": GROUP, "resource": _RESOURCES[target.kind],
            "subresource": "tap", "namespace": target.namespace, "name": target.name}  # fmt: skip


def _shown(attrs: Mapping[str, str]) -> str:
    what = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
    where = f" {attrs['name']}" if attrs.get("name") else ""
    where += f" in namespace {attrs['namespace']}" if attrs.get("namespace") else ""
    return f"{attrs['verb']} {what}.{attrs['group']}{where}"


class KubeTapAuthenticator:
    """A :class:`k8s.tap_server.TapAuthenticator` asking the API server ``api``."""

    def __init__(self, api: KubeRequests) -> None:
        self._api = api

    async def authorize(self, token: str | None, tap: TapFilter | None) -> str | TapRefusal:
        if token is None:
            return TapRefusal(401, "no bearer token: ambit tap sends the kubeconfig's")
        try:
            user = await self._user(token)
            if isinstance(user, TapRefusal):
                return user
            attrs = attributes(tap)
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {**{k: v for k, v in user.items() if k != "username"},
                         "user": user.get("username", ""), "resourceAttributes": attrs},
            }  # fmt: skip
            status, answer = await self._api.request("POST", ACCESS_REVIEWS, review)
        except ApiUnavailable as exc:
            return TapRefusal(503, f"the API server could not be asked: {exc}")
        if status not in (200, 201):
            return TapRefusal(503, f"the SubjectAccessReview failed: HTTP {status}"
                              " (may the control plane create subjectaccessreviews?)")  # fmt: skip
        if (answer.get("status") or {}).get("allowed") is not True:
            name = user.get("username", "?")
            return TapRefusal(403, f"{name} may not {_shown(attrs)}")
        return str(user.get("username", ""))

    async def _user(self, token: str) -> dict[str, Any] | TapRefusal:
        """The user the API server says ``token`` is: username, uid, groups, extra."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token}}  # fmt: skip
        status, answer = await self._api.request("POST", TOKEN_REVIEWS, review)
        if status not in (200, 201):
            return TapRefusal(503, f"the TokenReview failed: HTTP {status}"
                              " (may the control plane create tokenreviews?)")  # fmt: skip
        found = answer.get("status") or {}
        if found.get("authenticated") is not True:
            return TapRefusal(401, f"the API server does not accept the token: "
                              f"{found.get('error') or 'unknown token'}")  # fmt: skip
        user = found.get("user") or {}
        return {k: user[k] for k in ("username", "uid", "groups", "extra") if k in user}
