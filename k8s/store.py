"""The one store of objects between the sources (local mode, files, the Kubernetes API)
and the control plane.

Owns: the typed objects of :mod:`k8s.manifests` keyed by :data:`ObjectRef`
``(kind, namespace, name)``, with the API server's metadata (``uid``,
``resourceVersion``, ``creationTimestamp``: kept when a source gives them, assigned
here when it does not), each object's conditions (its status, as ``kubectl get -o
yaml`` shows it), a change notification, and the listing gate.

The listing gate is what keeps the control plane from publishing a partial view: a
kind counts as listed once its source has delivered one complete list of it (kopf's
LISTED bookmark). Until every kind of :data:`k8s.manifests.KINDS` is listed,
:meth:`ObjectStore.complete` is False and nothing may be published: a source that has
pods but not yet policies must never push an allow-all mesh. A kind whose CRD is
absent is listed as empty; when its CRD appears, :meth:`ObjectStore.unlist` closes the
gate for it until :meth:`ObjectStore.replace_kind` delivers its first list.

Conditions are status, not content: setting them never bumps the content version that
wakes the control plane; :attr:`ObjectStore.revision` counts both (what the status writer
waits on, :mod:`k8s.status_writer`). A route's conditions per parent (Gateway API's
``status.parents``) are kept beside its own. Conditions of what the proxies observe
(:meth:`ObjectStore.set_observed`, ``ambit.io/LocalReplies``) are set apart from
translation's: :meth:`ObjectStore.set_conditions` keeps them. Pure bookkeeping and Trio
events; no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import trio

from k8s.manifests import KINDS, K8sObject, kind_info
from mesh.model_l7 import ParentRef

ObjectRef: TypeAlias = tuple[
    str, str, str
]  # (kind, namespace, name); namespace "" if cluster-scoped
PutResult: TypeAlias = Literal["created", "configured", "unchanged"]
Status: TypeAlias = Literal["True", "False", "Unknown"]


def ref_of(obj: K8sObject) -> ObjectRef:
    kind = type(obj).__name__
    info = kind_info(kind)
    namespaced = info.namespaced if info is not None else True
    return (kind, obj.namespace if namespaced else "", obj.name)


def describe(ref: ObjectRef) -> str:
    """``Pod shop/web``, ``Namespace shop``: how messages name an object."""
    kind, namespace, name = ref
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    """One condition, as Kubernetes and Gateway API write them."""

    type: str
    status: Status
    reason: str
    message: str
    last_transition_time: str = ""
    observed_generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }


ParentConditions: TypeAlias = tuple[ParentRef, tuple[Condition, ...]]


@dataclass(frozen=True)
class Entry:
    """A stored object: the typed object, the document it came from (what ``-o yaml``
    shows of its spec; from the API, its ``apiVersion`` only), its generation (bumped by
    each content change) and conditions; a route's also per parent (``parents``: those
    ambit is the controller of, in the order of its ``parentRefs``)."""

    obj: K8sObject
    document: Mapping[str, Any] | None = None
    generation: int = 1
    conditions: tuple[Condition, ...] = ()
    parents: tuple[ParentConditions, ...] = ()

    @property
    def observed_generation(self) -> int:
        """The generation a status reports: the API server's when it gave one."""
        return self.obj.generation or self.generation

    @property
    def ref(self) -> ObjectRef:
        return ref_of(self.obj)

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ObjectStore:
    """Objects by :data:`ObjectRef`, with the listing gate and a change notification."""

    def __init__(
        self,
        *,
        kinds: Iterable[str] | None = None,
        clock: Callable[[], str] = now_rfc3339,
    ) -> None:
        self._entries: dict[ObjectRef, Entry] = {}
        self._observed: dict[ObjectRef, tuple[str, dict[str, Condition]]] = {}  # uid, by type
        self._kinds = tuple(kinds) if kinds is not None else tuple(k.kind for k in KINDS)
        self._listed: set[str] = set()
        self._clock = clock
        self._resource_versions = itertools.count(1)
        self.version = 0  # bumped by every content change (and gate change)
        self.revision = 0  # bumped by those and by every change of conditions
        # What the source last delivered, in its own words (the files source: a digest of
        # the files it read); the control plane says which its published snapshot reflects.
        self.source_read = ""
        self._changed = trio.Event()
        self._revised = trio.Event()

    # --- Reading ---------------------------------------------------------------------

    def get(self, ref: ObjectRef) -> Entry | None:
        return self._entries.get(ref)

    def entries(self, kind: str | None = None, namespace: str | None = None) -> list[Entry]:
        """Stored entries, sorted by reference; ``kind``/``namespace`` narrow the list."""
        chosen = [
            (ref, e)
            for ref, e in self._entries.items()
            if (kind is None or ref[0] == kind) and (namespace is None or ref[1] == namespace)
        ]
        return [e for _, e in sorted(chosen, key=lambda item: item[0])]

    def objects(self) -> list[K8sObject]:
        return [e.obj for _, e in sorted(self._entries.items())]

    # --- The listing gate ------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return self._kinds

    def unlisted(self) -> list[str]:
        """Kinds not listed yet, in declaration order."""
        return [k for k in self._kinds if k not in self._listed]

    @property
    def complete(self) -> bool:
        """True once every kind has been listed: only then may the view be published."""
        return not self.unlisted()

    def mark_listed(self, kind: str) -> None:
        """``kind``'s source delivered (or has, e.g. an absent CRD) one complete list."""
        self._check_kind(kind)
        if kind not in self._listed:
            self._listed.add(kind)
            self._bump()

    def unlist(self, kind: str) -> None:
        """``kind`` must be listed again before the view is complete (its CRD appeared)."""
        self._check_kind(kind)
        if kind in self._listed:
            self._listed.discard(kind)
            self._bump()

    def replace_kind(self, kind: str, objects: Iterable[K8sObject]) -> None:
        """One complete list of ``kind``: it becomes exactly ``objects``; marks it listed."""
        self._check_kind(kind)
        wanted = {ref_of(o): o for o in objects}
        for ref in [r for r in self._entries if r[0] == kind and r not in wanted]:
            self.delete(ref)
        for obj in wanted.values():
            if type(obj).__name__ != kind:
                raise ValueError(f"a list of {kind} holds {describe(ref_of(obj))}")
            self.put(obj)
        self.mark_listed(kind)

    # --- Writing ---------------------------------------------------------------------

    def put(self, obj: K8sObject, *, document: Mapping[str, Any] | None = None) -> PutResult:
        """Create or update ``obj``. Server-assigned metadata a source gives is kept;
        otherwise a new object gets a fresh ``uid`` and ``creationTimestamp`` and an
        update keeps its old ones. Every content change gets a new ``resourceVersion``."""
        ref = ref_of(obj)
        self._check_kind(ref[0])
        old = self._entries.get(ref)
        if old is not None and old.obj.uid and obj.uid and old.obj.uid != obj.uid:
            old = None  # deleted and created again under the same name
        if old is not None and old.obj.content_equal(obj):
            if document is not None and old.document != document:
                self._entries[ref] = dataclasses.replace(old, document=document)
            return "unchanged"
        stamped = dataclasses.replace(
            obj,
            uid=obj.uid or (old.obj.uid if old else str(uuid.uuid4())),
            creation_timestamp=obj.creation_timestamp
            or (old.obj.creation_timestamp if old else self._clock()),
            resource_version=obj.resource_version or str(next(self._resource_versions)),
        )
        self._entries[ref] = Entry(
            stamped,
            document if document is not None else (old.document if old else None),
            generation=old.generation + 1 if old else 1,
            conditions=old.conditions if old else (),
            parents=old.parents if old else (),
        )
        self._bump()
        return "created" if old is None else "configured"

    def delete(self, ref: ObjectRef) -> Entry | None:
        entry = self._entries.pop(ref, None)
        self._observed.pop(ref, None)
        if entry is not None:
            self._bump()
        return entry

    def set_conditions(
        self,
        ref: ObjectRef,
        conditions: Iterable[Condition],
        *,
        uid: str | None = None,
        parents: Iterable[tuple[ParentRef, Iterable[Condition]]] | None = None,
    ) -> bool:
        """Replace the conditions of ``ref`` (of the object with ``uid``, when given, so a
        status computed for an object never lands on its successor), and with ``parents``
        its conditions per parent. A condition whose status did not change keeps its
        ``lastTransitionTime``. Returns whether stored."""
        entry = self._entries.get(ref)
        if entry is None or (uid is not None and entry.obj.uid != uid):
            return False
        conditions = [*conditions, *self._observed_of(entry)]
        stamped = self._stamp(entry, entry.conditions, conditions)
        by_parent = dict(entry.parents)
        new_parents = entry.parents
        if parents is not None:
            new_parents = tuple(
                (parent, self._stamp(entry, by_parent.get(parent, ()), found))
                for parent, found in parents
            )
        if stamped != entry.conditions or new_parents != entry.parents:
            self._entries[ref] = dataclasses.replace(entry, conditions=stamped, parents=new_parents)
            self._revise()
        return True

    def set_observed(
        self, ref: ObjectRef, type_: str, condition: Condition | None, *, uid: str
    ) -> bool:
        """Set (None: remove) the condition ``type_`` of ``ref`` that the proxies'
        observations decide, kept apart from translation's: :meth:`set_conditions` keeps
        it. Returns whether stored (the object with ``uid`` is there)."""
        entry = self._entries.get(ref)
        if entry is None or entry.obj.uid != uid:
            return False
        held = self._observed.get(ref)
        observed = held[1] if held is not None and held[0] == uid else {}
        if condition is None:
            observed.pop(type_, None)
        else:
            observed[type_] = condition
        self._observed[ref] = (uid, observed)
        mine = [c for c in entry.conditions if c.type != type_]
        if condition is not None:
            mine.append(condition)
        stamped = self._stamp(entry, entry.conditions, mine)
        if stamped != entry.conditions:
            self._entries[ref] = dataclasses.replace(entry, conditions=stamped)
            self._revise()
        return True

    def _observed_of(self, entry: Entry) -> list[Condition]:
        held = self._observed.get(entry.ref)
        return list(held[1].values()) if held is not None and held[0] == entry.obj.uid else []

    def _stamp(
        self, entry: Entry, before: Iterable[Condition], conditions: Iterable[Condition]
    ) -> tuple[Condition, ...]:
        old_by_type = {c.type: c for c in before}
        stamped = []
        for c in conditions:
            old = old_by_type.get(c.type)
            when = (
                old.last_transition_time
                if old is not None and old.status == c.status
                else self._clock()
            )
            stamped.append(
                dataclasses.replace(
                    c, last_transition_time=when, observed_generation=entry.observed_generation
                )
            )
        return tuple(stamped)

    # --- Notification ----------------------------------------------------------------

    async def wait_changed(self, seen: int) -> int:
        """Return the content version once it is past ``seen``."""
        while self.version <= seen:
            await self._changed.wait()
        return self.version

    async def wait_revised(self, seen: int) -> int:
        """Return the revision (content or conditions) once it is past ``seen``."""
        while self.revision <= seen:
            await self._revised.wait()
        return self.revision

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        self._revise()

    def _revise(self) -> None:
        self.revision += 1
        self._revised.set()
        self._revised = trio.Event()

    def _check_kind(self, kind: str) -> None:
        if kind not in self._kinds:
            raise ValueError(f"kind {kind!r} is not one this store holds: {', '.join(self._kinds)}")


def object_json(entry: Entry) -> dict[str, Any]:
    """The object as ``kubectl get -o yaml`` shows it: the document it was applied as,
    with the server's metadata and ``status.conditions`` filled in (a route's
    ``status.parents`` too: :func:`k8s.status_docs.served_json`)."""
    obj = entry.obj
    info = kind_info(type(obj).__name__)
    doc: dict[str, Any] = dict(entry.document or {})
    doc.setdefault("apiVersion", info.api_versions[0] if info else "v1")
    doc.setdefault("kind", type(obj).__name__)
    meta = dict(doc.get("metadata") or {})
    meta["name"] = obj.name
    if info is None or info.namespaced:
        meta["namespace"] = obj.namespace
    meta.update(
        uid=obj.uid,
        resourceVersion=obj.resource_version,
        creationTimestamp=obj.creation_timestamp,
        generation=entry.observed_generation,
    )
    doc["metadata"] = meta
    status = dict(doc.get("status") or {})
    if entry.conditions:
        status["conditions"] = [c.to_json() for c in entry.conditions]
    if status:
        doc["status"] = status
    return doc
