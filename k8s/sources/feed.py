"""Watch changes into the object store: where the API's raw dicts become typed objects.

:class:`StoreFeed` takes the :class:`~k8s.sources.watch.Change` values of every
resource's :class:`~k8s.sources.watch.ResourceWatch` and keeps
:class:`~k8s.store.ObjectStore` equal to what they say, as the files source does:

- each raw object is read by :func:`k8s.manifests.parse_object`; one ambit refuses
  (the API server accepted it, but ambit does not support it) is left out, logged once
  (``object_refused``) and kept in :attr:`StoreFeed.errors` (with what names it, for an
  Event: :attr:`StoreFeed.refusals`) until it changes or goes;
- of a kind fed by two resources (ambit's and Istio's policies), the store holds, per
  name, the object of the first resource that has one (ambit's), with the
  ``apiVersion`` it came as when a CRD serves it (its document: where its status is
  written);
- a kind is listed (the store's gate) once every resource of it is (an absent CRD's
  resource counts as listed, empty); :class:`~k8s.sources.watch.Unlisted` closes the
  gate for the kind again.

Pure bookkeeping on the store; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from k8s import manifests
from k8s.manifests import K8sObject
from k8s.sources.resources import Resource
from k8s.sources.watch import Change, Delete, Key, Listed, Put, Unlisted
from k8s.store import ObjectStore

log = structlog.get_logger("k8s.sources")


def _label(resource: Resource, key: Key) -> str:
    namespace, name = key
    return f"{resource.name} {namespace}/{name}" if namespace else f"{resource.name} {name}"


@dataclass(frozen=True)
class Refusal:
    """An object the API server holds and ambit refused: what names it, and why."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    error: str


class StoreFeed:
    def __init__(self, store: ObjectStore, resources: Sequence[Resource]) -> None:
        self.store = store
        self.resources = tuple(resources)
        self._objects: dict[Resource, dict[Key, tuple[K8sObject, str]]] = {
            r: {} for r in self.resources
        }
        self._listed: set[Resource] = set()
        self._errors: dict[tuple[Resource, Key], Refusal] = {}

    @property
    def errors(self) -> list[str]:
        """Why each object ambit refused is left out (for the status file)."""
        return sorted(r.error for r in self._errors.values())

    @property
    def refusals(self) -> list[Refusal]:
        return list(self._errors.values())

    def listed(self, resource: Resource) -> bool:
        return resource in self._listed

    def apply(self, resource: Resource, changes: Iterable[Change]) -> None:
        """Make the store say what ``changes`` of ``resource`` say."""
        for change in changes:
            if isinstance(change, Put):
                self._put(resource, change)
            elif isinstance(change, Delete):
                self._forget(resource, change.key)
                self._settle(resource.kind, change.key)
            elif isinstance(change, Listed):
                self._listed.add(resource)
                if all(r in self._listed for r in self._siblings(resource)):
                    self.store.mark_listed(resource.kind)
            elif isinstance(change, Unlisted):
                self._listed.discard(resource)
                self.store.unlist(resource.kind)

    def _put(self, resource: Resource, change: Put) -> None:
        where = f"kubernetes: {_label(resource, change.key)}"
        try:
            obj = manifests.parse_object(dict(change.raw), where)
        except manifests.ManifestError as exc:
            error = str(exc)
            before = self._errors.get((resource, change.key))
            if before is None or before.error != error:
                log.warning("object_refused", resource=resource.name, error=error)
            namespace, name = change.key
            uid = str((change.raw.get("metadata") or {}).get("uid") or "")
            version = str(change.raw.get("apiVersion") or "")
            self._errors[(resource, change.key)] = Refusal(
                version, resource.kind, namespace, name, uid, error
            )
            self._objects[resource].pop(change.key, None)
        else:
            self._errors.pop((resource, change.key), None)
            version = str(change.raw.get("apiVersion") or "")
            self._objects[resource][change.key] = (obj, version)
        self._settle(resource.kind, change.key)

    def _forget(self, resource: Resource, key: Key) -> None:
        self._objects[resource].pop(key, None)
        self._errors.pop((resource, key), None)

    def _siblings(self, resource: Resource) -> list[Resource]:
        return [r for r in self.resources if r.kind == resource.kind]

    def _settle(self, kind: str, key: Key) -> None:
        """Store the object the first resource of ``kind`` has under ``key``, or none."""
        namespace, name = key
        for resource in self.resources:
            if resource.kind == kind and key in self._objects[resource]:
                obj, version = self._objects[resource][key]
                kept = {"apiVersion": version} if version and resource.crd else None
                self.store.put(obj, document=kept)
                return
        self.store.delete((kind, namespace, name))
