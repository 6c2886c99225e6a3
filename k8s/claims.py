"""Addresses only one object may have (a pod IP, a Service's cluster IP): who claims each,
and who keeps it when several do.

The rule: the object created first keeps the address (``creationTimestamp``, then
namespace and name, so the order is total); an object whose creation time is unknown
comes after every object whose time is known. A stale pod or a duplicated address
therefore never takes an address from the object that had it. Pure bookkeeping,
updated one claim at a time and settled once per batch of changes; what a conflict
means for the mesh is :mod:`k8s.translate`'s business.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

R = TypeVar("R", bound=Hashable)

Rank: TypeAlias = tuple[float, str, str]
"""Creation time (seconds since the epoch, ``inf`` when unknown), namespace, name."""


def rank(creation_timestamp: str, namespace: str, name: str) -> Rank:
    """Where an object comes in the created-first order."""
    return (_seconds(creation_timestamp), namespace, name)


@functools.lru_cache(maxsize=4096)  # objects made together share their creation second
def _seconds(timestamp: str) -> float:
    if not timestamp:
        return math.inf
    try:
        when = datetime.datetime.fromisoformat(timestamp)
    except ValueError:
        return math.inf
    if when.tzinfo is None:  # RFC 3339 always has an offset; read a bare time as UTC
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class Contest(Generic[R]):
    """An address claimed by more than one object: ``holder`` keeps it, ``others`` (in
    created-first order) do not. ``later`` are the others known to be created after the
    holder; the rest come after it by namespace and name only (the same creation time, or
    one not known)."""

    address: str
    holder: R
    others: tuple[R, ...]
    later: frozenset[R]


class Claims(Generic[R]):
    """Each object claims at most one address; each claimed address has one holder."""

    def __init__(self) -> None:
        self._claims: dict[R, tuple[str, Rank]] = {}
        self._claimants: dict[str, dict[R, Rank]] = {}
        self._holders: dict[str, R] = {}
        self._touched: set[str] = set()
        self._reclaimed: set[R] = set()  # whose claims changed since the last settle
        self._contested: set[R] = set()  # in a contest at the last settle

    def claim(self, ref: R, address: str | None, order: Rank) -> None:
        """``ref`` claims ``address`` from now on (None: no address), in place of any
        earlier claim. Holders change only at :meth:`settle`."""
        old = self._claims.get(ref)
        if old == ((address, order) if address is not None else None):
            return
        self._reclaimed.add(ref)
        if old is not None:
            claimants = self._claimants[old[0]]
            del claimants[ref]
            if not claimants:
                del self._claimants[old[0]]
            self._touched.add(old[0])
            del self._claims[ref]
        if address is not None:
            self._claims[ref] = (address, order)
            self._claimants.setdefault(address, {})[ref] = order
            self._touched.add(address)

    def settle(self) -> tuple[set[R], set[R]]:
        """Decide the holder of every address claimed or released since the last call.

        Returns the objects whose :meth:`contest` may have changed (in a contest now, or
        in one at the last call, and concerned by a claim made or released since), and
        the objects that gained or lost an address."""
        concerned, self._reclaimed = self._reclaimed, set()
        moved: set[R] = set()
        for address in self._touched:
            before = self._holders.pop(address, None)
            after = None
            claimants = self._claimants.get(address)
            if claimants:
                after = min(claimants, key=claimants.__getitem__)
                self._holders[address] = after
                concerned.update(claimants)
                if before != after:
                    moved.add(after)
            if before is not None:
                concerned.add(before)
                if before != after:
                    moved.add(before)
        self._touched.clear()
        affected = {r for r in concerned if r in self._contested or self._in_contest(r)}
        self._contested -= affected
        self._contested.update(r for r in affected if self._in_contest(r))
        return affected, moved

    def _in_contest(self, ref: R) -> bool:
        claim = self._claims.get(ref)
        return claim is not None and len(self._claimants[claim[0]]) > 1

    def holds(self, ref: R) -> bool:
        """Whether ``ref`` has the address it claims (as of the last :meth:`settle`)."""
        claim = self._claims.get(ref)
        return claim is not None and self._holders.get(claim[0]) == ref

    def contest(self, ref: R) -> Contest[R] | None:
        """The contest ``ref`` is part of, or None when nobody else claims its address."""
        claim = self._claims.get(ref)
        if claim is None or not self._in_contest(ref):
            return None
        address = claim[0]
        claimants = self._claimants[address]
        holder, *others = sorted(claimants, key=claimants.__getitem__)
        created = claimants[holder][0]
        later = frozenset(r for r in others if created < claimants[r][0] < math.inf)
        return Contest(address, holder, tuple(others), later)
