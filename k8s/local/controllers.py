"""Objects controllers make, in local mode: what the cluster asks of the hooks'
``derive_objects`` (the waypoint deployer) on every apply and delete, as a Kubernetes
controller would create them on the API server.

Derived objects are computed from the objects users applied only (never from other
derived objects), stored beside them and replaced whenever they change; those no
longer derived (their Gateway deleted) are removed. Pure: the cluster does the storing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from k8s.local.config import ClusterConfig
from k8s.local.hooks import LocalHooks
from k8s.manifests import Document, K8sObject
from k8s.store import ObjectRef, describe, ref_of


@dataclass
class Derived:
    """What the controllers make of a set of objects: each object with its document, and
    the errors of the owners that could not be made into objects (by the owner's ref)."""

    documents: dict[ObjectRef, Document] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # describe(owner) -> message

    def errors_of(self, owners: Collection[ObjectRef]) -> list[str]:
        """The errors of the owners named: an error is reported when its owner is
        applied, not again with every later change."""
        named = {describe(ref) for ref in owners}
        return [message for where, message in self.errors.items() if where in named]


def derive(
    hooks: LocalHooks,
    config: ClusterConfig,
    objects: Mapping[ObjectRef, K8sObject],
    derived_before: Collection[ObjectRef],
) -> Derived:
    """What ``hooks.derive_objects`` makes of the users' objects among ``objects`` (those
    not in ``derived_before``)."""
    applied = [obj for ref, obj in objects.items() if ref not in derived_before]
    out = Derived()
    for doc in hooks.derive_objects(applied, config):
        if doc.obj is None:
            out.errors[doc.where] = doc.error or f"{doc.where}: cannot be made"
        else:
            out.documents[ref_of(doc.obj)] = doc
    return out


def with_derived(
    objects: dict[ObjectRef, K8sObject], derived: Derived, derived_before: Collection[ObjectRef]
) -> None:
    """Make ``objects`` hold what is derived now instead of what was derived before."""
    for ref in derived_before:
        if ref not in derived.documents:
            objects.pop(ref, None)
    for ref, doc in derived.documents.items():
        assert doc.obj is not None
        objects[ref] = doc.obj
