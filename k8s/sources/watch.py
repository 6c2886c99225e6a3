"""The LIST-then-WATCH protocol of one API resource, sans-IO (in the style of h2's
connection: inputs in, what to do next out; no sockets, no clock).

A :class:`ResourceWatch` is fed what the API server answered (:meth:`list_page`,
:meth:`event`, :meth:`gone`, :meth:`watch_ended`) and its CRD's presence
(:meth:`absent`, :meth:`present`); every input returns a :class:`Step`: the store
changes it implies (:class:`Put`, :class:`Delete`, :class:`Listed`, :class:`Unlisted`)
and the request to make next (:class:`ListRequest`, :class:`WatchRequest`, or None:
nothing, the CRD is absent). The protocol, as client-go's reflector and kopf run it:

- a paged LIST (``limit``, then ``continue`` tokens); when the last page is in, the
  list is diffed against the cache: objects new or changed are put, objects the cache
  holds that the list does not are deleted (synthesized: their DELETED event was
  missed), and the first complete list says :class:`Listed`;
- a WATCH from the list's ``resourceVersion`` with bookmarks; every event and bookmark
  advances the resourceVersion, so a watch the server ends (``timeoutSeconds``) or a
  cut connection resumes from the last one seen, without a re-list;
- ``410 Gone`` (as the watch's HTTP status, or as an ERROR event: the resourceVersion
  was compacted away) re-lists and diffs; on a LIST page it means the ``continue``
  token expired, and the list starts again;
- another ERROR event ends the watch; it resumes from the last resourceVersion after a
  backoff (:attr:`Step.backoff`);
- an event older than or as old as the cached object (same uid, a smaller or equal
  numeric resourceVersion) is a duplicate or out of order, and changes nothing.

Objects are cached as :mod:`k8s.sources.strip` leaves them (the fields the mesh
reads), keyed ``(namespace, name)`` (namespace ``""`` for cluster-scoped kinds).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

Key: TypeAlias = tuple[str, str]  # (namespace, name)
Raw: TypeAlias = Mapping[str, Any]

PAGE_LIMIT: Final = 500
GONE: Final = 410


class WatchProtocolError(RuntimeError):
    """An input the machine cannot take in its state (a bug of the I/O around it)."""


@dataclass(frozen=True)
class ListRequest:
    """LIST the resource: the first page (``continue_token`` None) or the next."""

    continue_token: str | None = None
    limit: int = PAGE_LIMIT


@dataclass(frozen=True)
class WatchRequest:
    """WATCH from ``resource_version`` (with bookmarks)."""

    resource_version: str


Request: TypeAlias = ListRequest | WatchRequest | None


@dataclass(frozen=True)
class Put:
    """``raw`` is the object's new state (created or changed)."""

    key: Key
    raw: Raw


@dataclass(frozen=True)
class Delete:
    """The object is gone; ``raw`` is its last known state. ``synthesized``: no DELETED
    event said so, a re-list (or its CRD's removal) did."""

    key: Key
    raw: Raw
    synthesized: bool = False


@dataclass(frozen=True)
class Listed:
    """One complete list is in: the resource counts as listed (the store's gate)."""


@dataclass(frozen=True)
class Unlisted:
    """The resource must be listed again before the view is complete (its CRD appeared)."""


Change: TypeAlias = Put | Delete | Listed | Unlisted


@dataclass(frozen=True)
class Step:
    """What one input implies: store ``changes``, then ``request`` (after a backoff if
    ``backoff``). While a watch is healthy its events answer :class:`WatchRequest`:
    keep reading; a :class:`ListRequest` means end the watch and list."""

    changes: tuple[Change, ...] = ()
    request: Request = None
    backoff: bool = False


class Phase(enum.Enum):
    IDLE = "idle"  # not started
    LISTING = "listing"
    WATCHING = "watching"
    ABSENT = "absent"  # the CRD is not installed


def key_of(raw: Raw) -> Key:
    meta = raw.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def resource_version_of(raw: Raw) -> str:
    meta = raw.get("metadata") or {}
    return str(meta.get("resourceVersion") or "")


def _uid(raw: Raw) -> str:
    return str((raw.get("metadata") or {}).get("uid") or "")


def _older(candidate: str, than: str, *, or_equal: bool) -> bool:
    """Whether ``candidate`` is known to come before ``than`` (resourceVersions are
    opaque, but etcd's are increasing integers: compare only those)."""
    if not (candidate.isdigit() and than.isdigit()):
        return False
    return int(candidate) <= int(than) if or_equal else int(candidate) < int(than)


def _identity(raw: Raw) -> Raw:
    return raw


@dataclass
class ResourceWatch:
    """One resource's list and watch. ``strip`` trims an object to what is cached."""

    strip: Callable[[Raw], Raw] = _identity
    limit: int = PAGE_LIMIT
    phase: Phase = Phase.IDLE
    resource_version: str = ""
    listed: bool = False
    relists: int = 0  # complete lists after the first (410 Gone, a CRD that came back)
    cache: dict[Key, Raw] = field(default_factory=dict)
    _pages: dict[Key, Raw] = field(default_factory=dict)
    _continue: str | None = None  # the page of the LIST under way

    # --- Starting, and the CRD's presence ----------------------------------------------

    def start(self) -> Step:
        """The first request: a LIST."""
        self._expect(Phase.IDLE)
        return self._list()

    def absent(self) -> Step:
        """The resource's CRD is not installed (or was removed): whatever was cached is
        deleted, and the resource counts as listed (empty). Nothing to request."""
        changes: list[Change] = [
            Delete(k, raw, synthesized=True) for k, raw in sorted(self.cache.items())
        ]
        self.cache.clear()
        self._pages, self._continue = {}, None
        self.resource_version = ""
        self.phase = Phase.ABSENT
        if not self.listed:
            self.listed = True
            changes.append(Listed())
        return Step(tuple(changes), None)

    def present(self) -> Step:
        """The CRD appeared: list it, and hold the gate until that list is in."""
        self._expect(Phase.ABSENT, Phase.IDLE)
        changes: tuple[Change, ...] = ()
        if self.listed:
            self.listed = False
            changes = (Unlisted(),)
        step = self._list()
        return Step(changes, step.request)

    # --- LIST ------------------------------------------------------------------------

    def list_page(
        self, items: Iterable[Raw], resource_version: str, continue_token: str | None
    ) -> Step:
        """One page of the LIST; the last (no ``continue_token``) completes it."""
        self._expect(Phase.LISTING)
        for item in items:
            stripped = self.strip(item)
            self._pages[key_of(stripped)] = stripped
        if continue_token:
            self._continue = continue_token
            return Step((), ListRequest(continue_token, self.limit))
        return self._list_complete(resource_version)

    def _list_complete(self, resource_version: str) -> Step:
        listed, self._pages, self._continue = self._pages, {}, None
        changes: list[Change] = []
        for key, raw in sorted(self.cache.items()):
            if key not in listed:
                changes.append(Delete(key, raw, synthesized=True))
        for key, raw in sorted(listed.items()):
            old = self.cache.get(key)
            unchanged = (
                old is not None
                and _uid(old) == _uid(raw)
                and resource_version_of(old) == resource_version_of(raw)
                and resource_version_of(raw) != ""
            )
            if not unchanged:
                changes.append(Put(key, raw))
        if self.listed:
            self.relists += 1
        else:
            self.listed = True
            changes.append(Listed())
        self.cache = listed
        self.resource_version = resource_version
        self.phase = Phase.WATCHING
        return Step(tuple(changes), WatchRequest(resource_version))

    # --- WATCH -----------------------------------------------------------------------

    def event(self, type_: str, obj: Raw) -> Step:
        """One watch event: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR."""
        self._expect(Phase.WATCHING)
        if type_ == "ERROR":
            code = obj.get("code")
            if code == GONE:
                return self.gone()
            return Step((), WatchRequest(self.resource_version), backoff=True)
        rv = resource_version_of(obj)
        if type_ == "BOOKMARK":
            self._advance(rv)
            return Step((), WatchRequest(self.resource_version))
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            raise WatchProtocolError(f"unknown watch event type {type_!r}")
        stripped = self.strip(obj)
        key = key_of(stripped)
        old = self.cache.get(key)
        changes: tuple[Change, ...] = ()
        if type_ == "DELETED":
            if old is not None and not self._stale(old, stripped, deleting=True):
                del self.cache[key]
                changes = (Delete(key, stripped),)
        elif old is None or not self._stale(old, stripped, deleting=False):
            self.cache[key] = stripped
            changes = (Put(key, stripped),)
        self._advance(rv)
        return Step(changes, WatchRequest(self.resource_version))

    def watch_ended(self) -> Step:
        """The watch ended without an error (the server's timeout, or a cut connection):
        watch again from the last resourceVersion seen, no re-list."""
        self._expect(Phase.WATCHING)
        return Step((), WatchRequest(self.resource_version))

    def gone(self) -> Step:
        """``410 Gone``: on a watch, the resourceVersion is too old: re-list and diff; on
        a LIST page, the continue token expired: list again from the start."""
        self._expect(Phase.WATCHING, Phase.LISTING)
        return self._list()

    @property
    def request(self) -> Request:
        """What the machine is waiting for now (what a failed request retries)."""
        if self.phase is Phase.WATCHING:
            return WatchRequest(self.resource_version)
        if self.phase is Phase.LISTING:
            return ListRequest(self._continue, self.limit)
        return None

    # --- Helpers ---------------------------------------------------------------------

    def _list(self) -> Step:
        self._pages, self._continue = {}, None
        self.phase = Phase.LISTING
        return Step((), ListRequest(None, self.limit))

    def _advance(self, rv: str) -> None:
        if rv and not _older(rv, self.resource_version, or_equal=False):
            self.resource_version = rv

    @staticmethod
    def _stale(old: Raw, new: Raw, *, deleting: bool) -> bool:
        """Whether ``new`` (an event) is not newer than the cached ``old``: a duplicate
        or out of order. A different uid is another object under the same name: only a
        numerically older event of it is stale."""
        old_rv, new_rv = resource_version_of(old), resource_version_of(new)
        if _uid(old) != _uid(new):
            return _older(new_rv, old_rv, or_equal=False)
        return _older(new_rv, old_rv, or_equal=not deleting)

    def _expect(self, *phases: Phase) -> None:
        if self.phase not in phases:
            wanted = " or ".join(p.value for p in phases)
            raise WatchProtocolError(f"input needs phase {wanted}, not {self.phase.value}")
