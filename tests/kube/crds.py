"""CustomResourceDefinitions in tests: installing any (waiting until each is
Established) and removing one (waiting until it is gone, with its objects), and the
smallest CRDs for the policy kinds ambit reads (``security.istio.io`` and
``security.ambit.io``). Istio's own CRDs are not in the Go module cache the tests use,
and ambit ships none, so these check nothing of a policy's ``spec``: the API server
keeps it as given (ambit's reader is what checks it)."""

from __future__ import annotations

from contextlib import suppress
from functools import partial

from tests.kube.client import Conflict, KubeAdmin, NotFound, Obj, gone, wait_for

CRD_API = "apiextensions.k8s.io/v1"
ESTABLISH_SECONDS = 30.0
REMOVE_SECONDS = 60.0
POLICY_KINDS = (
    ("AuthorizationPolicy", "authorizationpolicies"),
    ("PeerAuthentication", "peerauthentications"),
    ("RequestAuthentication", "requestauthentications"),
)


def policy_crd(group: str, kind: str, plural: str) -> Obj:
    """A namespaced CRD serving ``v1`` (Istio's group also ``v1beta1``), spec kept as is,
    with the ``status`` subresource (as Istio's own CRDs have it)."""
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    versions = ["v1", "v1beta1"] if group == "security.istio.io" else ["v1"]
    return {
        "apiVersion": CRD_API,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "listKind": f"{kind}List"},
            "versions": [
                {"name": v, "served": True, "storage": v == "v1", "schema": schema,
                 "subresources": {"status": {}}}
                for v in versions
            ],
        },
    }  # fmt: skip


def policy_crds(group: str) -> list[Obj]:
    return [policy_crd(group, kind, plural) for kind, plural in POLICY_KINDS]


async def established(admin: KubeAdmin, name: str) -> bool:
    crd = await admin.get(CRD_API, "CustomResourceDefinition", name)
    conditions = (crd.get("status") or {}).get("conditions") or []  # none just after create
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


async def install(admin: KubeAdmin, documents: list[Obj]) -> list[str]:
    """Create every document (existing ones are left as they are); the CRDs' names,
    once each is Established."""
    names: list[str] = []
    for doc in documents:
        with suppress(Conflict):  # installed earlier in this session
            await admin.create(doc)
        if doc["kind"] == "CustomResourceDefinition":
            names.append(doc["metadata"]["name"])
    for name in names:
        await wait_for(partial(established, admin, name), seconds=ESTABLISH_SECONDS)
    return names


async def remove(admin: KubeAdmin, name: str) -> None:
    """Delete the CRD ``name`` and wait until it is gone (its objects are deleted first)."""
    with suppress(NotFound):
        await admin.delete(CRD_API, "CustomResourceDefinition", name)
    await wait_for(
        partial(gone, admin, CRD_API, "CustomResourceDefinition", name, None),
        seconds=REMOVE_SECONDS,
        interval=0.2,
    )
