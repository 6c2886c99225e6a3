"""The two containers :class:`k8s.translate.Translator` keeps its state in: a multimap
from a key to a set of objects (pods by label, Services by selector label...), and one
collection of the mesh model kept in key order, ready to become a snapshot's tuple.
Plain data structures, no Kubernetes meaning."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Hashable, KeysView, Set
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Hashable)


class SetIndex(Generic[K, V]):
    """Key -> the set of values filed under it; a key with no values is not kept."""

    def __init__(self) -> None:
        self._sets: defaultdict[K, set[V]] = defaultdict(set)

    def add(self, key: K, value: V) -> None:
        self._sets[key].add(value)

    def discard(self, key: K, value: V) -> None:
        values = self._sets.get(key)
        if values is not None:
            values.discard(value)
            if not values:
                del self._sets[key]

    def get(self, key: K) -> Set[V]:
        """The values under ``key`` (empty if none); a live view: do not keep it across
        changes."""
        return self._sets.get(key, frozenset())

    def keys(self) -> KeysView[K]:
        """Every key with a value (a live view)."""
        return self._sets.keys()


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


E = TypeVar("E", bound=_Keyed)


class Entries(Generic[E]):
    """One collection of the model by key, and its tuple in key order, rebuilt after a
    change from keys kept sorted (inserted one by one after a few changes, sorted anew
    after many). An entry replaced by an equal one is kept, so entries that did not
    change stay the same objects from one tuple to the next; entries set back to what
    they were (removed and added again) are no change either."""

    def __init__(self) -> None:
        self._by_key: dict[str, E] = {}
        self._keys: list[str] = []  # sorted, once ``_pending`` is applied
        self._pending: dict[str, bool] = {}  # keys added (True) or removed since
        self._values: tuple[E, ...] | None = ()
        self._last: tuple[E, ...] = ()  # what values() gave last
        self._before: dict[str, E | None] = {}  # entries set since, as they were then

    def set(self, key: str, value: E | None) -> None:
        """``value`` under ``key`` from now on; None removes it."""
        old = self._by_key.get(key)
        if value is None:
            if old is None:
                return
            del self._by_key[key]
        elif old is value or old == value:
            return
        else:
            self._by_key[key] = value
        if old is None or value is None:
            self._pending[key] = value is not None
        self._before.setdefault(key, old)
        self._values = None

    def get(self, key: str) -> E | None:
        return self._by_key.get(key)

    @property
    def changed(self) -> bool:
        """Whether an entry changed since :meth:`values` was last called."""
        self._unless_restored()
        return self._values is None

    def _unless_restored(self) -> None:
        """If every entry set since the last tuple is back as it was, that tuple stands
        (and so do its entries, the same objects)."""
        if self._values is not None:
            return
        for key, before in self._before.items():
            now = self._by_key.get(key)
            if not (now is before or now == before):
                return
        for key, before in self._before.items():
            if before is not None:
                self._by_key[key] = before
        self._before.clear()
        self._values = self._last

    def values(self) -> tuple[E, ...]:
        """Every entry, in key order."""
        self._unless_restored()
        if self._values is None:
            if len(self._pending) * 16 > len(self._keys):
                self._keys = sorted(self._by_key)
            else:
                for key, present in self._pending.items():
                    i = bisect_left(self._keys, key)
                    there = i < len(self._keys) and self._keys[i] == key
                    if present and not there:
                        insort(self._keys, key)
                    elif not present and there:
                        del self._keys[i]
            self._pending.clear()
            self._before.clear()
            self._values = self._last = tuple(map(self._by_key.__getitem__, self._keys))
        return self._values
