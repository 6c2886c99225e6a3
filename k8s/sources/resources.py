"""The API resources that feed the store's kinds, declared from :data:`k8s.manifests.KINDS`.

A kind may come from more than one resource: AuthorizationPolicy, PeerAuthentication
and RequestAuthentication from ambit's group (``security.ambit.io``) and Istio's
(``security.istio.io``), in that order of precedence (the same name in both: ambit's
counts, as ambit's labels win over Istio's). Each resource of a group is watched at
the first version of the kind's that its CRD serves (Istio's ``v1``, else ``v1beta1``).

The core kinds (and EndpointSlices, ``discovery.k8s.io``) are always served; the others
come from CRDs, which may be absent (a cluster without Gateway API, or without Istio's
CRDs): :func:`served_versions` reads which are installed from the
CustomResourceDefinitions the source watches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from k8s.manifests import KINDS
from k8s.sources.watch import Raw

# API groups the API server always serves (their kinds have no CRD).
BUILT_IN_GROUPS: Final = ("", "discovery.k8s.io")


@dataclass(frozen=True)
class Resource:
    """One API resource: ``pods``, ``authorizationpolicies.security.istio.io``."""

    kind: str  # the store's kind it feeds
    group: str  # "" for the core group
    versions: tuple[str, ...]  # in order of preference
    plural: str
    namespaced: bool

    @property
    def crd(self) -> bool:
        """Whether a CustomResourceDefinition serves it (else it is always there)."""
        return self.group not in BUILT_IN_GROUPS

    @property
    def name(self) -> str:
        """kubectl's name, which is also its CRD's name."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def path(self, version: str) -> str:
        """The collection's path, across all namespaces."""
        if not self.group:
            return f"/api/{version}/{self.plural}"
        return f"/apis/{self.group}/{version}/{self.plural}"


def _resources() -> tuple[Resource, ...]:
    out: list[Resource] = []
    for info in KINDS:
        by_group: dict[str, list[str]] = {}
        for api_version in info.api_versions:
            group, _, version = api_version.rpartition("/")
            by_group.setdefault(group, []).append(version)
        for group, versions in by_group.items():
            out.append(Resource(info.kind, group, tuple(versions), info.plural, info.namespaced))
    return tuple(out)


RESOURCES: Final = _resources()

CRD_RESOURCE: Final = Resource(
    "CustomResourceDefinition", "apiextensions.k8s.io", ("v1",), "customresourcedefinitions",
    namespaced=False,
)  # fmt: skip


def resources_of(kinds: Iterable[str]) -> tuple[Resource, ...]:
    wanted = set(kinds)
    return tuple(r for r in RESOURCES if r.kind in wanted)


def _established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Established" and c.get("status") == "True"
        for c in conditions
        if isinstance(c, Mapping)
    )


def served_versions(crds: Iterable[Raw]) -> dict[str, tuple[str, ...]]:
    """CRD name (``httproutes.gateway.networking.k8s.io``) -> the versions it serves, for
    every CRD that is established (stripped CRDs, as :mod:`k8s.sources.strip` keeps them)."""
    out: dict[str, tuple[str, ...]] = {}
    for crd in crds:
        if not _established(crd):
            continue
        name = str((crd.get("metadata") or {}).get("name") or "")
        versions = (crd.get("spec") or {}).get("versions") or []
        out[name] = tuple(
            str(v.get("name"))
            for v in versions
            if isinstance(v, Mapping) and v.get("served") is True
        )
    return out


def chosen_version(resource: Resource, served: Mapping[str, tuple[str, ...]]) -> str | None:
    """The version to watch ``resource`` at: its first that is served, None when its
    CRD is absent (or serves none of them). Core resources are always served."""
    if not resource.crd:
        return resource.versions[0]
    versions = served.get(resource.name, ())
    return next((v for v in resource.versions if v in versions), None)
