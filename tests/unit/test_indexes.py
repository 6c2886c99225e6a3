"""The translator's containers: SetIndex and Entries (a model collection in key order)."""

from __future__ import annotations

import random

from k8s.indexes import Entries, SetIndex
from mesh.model import Workload
from tests.builders import workload


def test_set_index_keeps_no_empty_keys() -> None:
    index: SetIndex[str, int] = SetIndex()
    index.add("a", 1)
    index.add("a", 2)
    index.discard("a", 1)
    index.discard("b", 1)  # absent: nothing happens
    assert index.get("a") == {2}
    index.discard("a", 2)
    assert index.get("a") == frozenset()


def test_entries_are_in_key_order_after_any_changes() -> None:
    rng = random.Random(7)
    entries: Entries[Workload] = Entries()
    expected: dict[str, Workload] = {}
    names = [f"w{i:03d}" for i in range(200)]
    for _ in range(300):
        # Mostly one change at a time (kept sorted by insertion), sometimes many (sorted anew).
        for _ in range(rng.choice([1, 1, 2, 60])):
            name = rng.choice(names)
            if rng.random() < 0.3:
                entries.set(f"default/{name}", None)
                expected.pop(f"default/{name}", None)
            else:
                w = workload(name, ip=f"10.0.0.{rng.randint(1, 3)}")
                entries.set(w.key, w)
                expected[w.key] = w
        assert entries.values() == tuple(expected[k] for k in sorted(expected))
        assert not entries.changed


def test_entries_keep_an_entry_replaced_by_an_equal_one() -> None:
    entries: Entries[Workload] = Entries()
    first = workload("web")
    entries.set(first.key, first)
    before = entries.values()
    entries.set(first.key, workload("web"))
    assert not entries.changed
    assert entries.values() is before
    assert entries.values()[0] is first


def test_entries_set_back_to_what_they_were_are_no_change() -> None:
    entries: Entries[Workload] = Entries()
    web, db = workload("web"), workload("db", ip="10.0.0.2")
    entries.set(web.key, web)
    before = entries.values()
    # Removed and added again (a remove and an upsert of one object in one batch), and an
    # entry added then removed: the collection is as it was, with the same objects.
    entries.set(web.key, None)
    entries.set(web.key, workload("web"))
    entries.set(db.key, db)
    entries.set(db.key, None)
    assert not entries.changed
    assert entries.values() is before
    assert entries.get(web.key) is web
    # A real change afterwards is seen, and the order is still right.
    entries.set(db.key, db)
    assert entries.values() == (db, web)
    assert entries.values() is not before
    entries.set(web.key, None)
    entries.set(web.key, workload("web", ip="10.0.0.9"))
    assert [w.ip for w in entries.values()] == ["10.0.0.2", "10.0.0.9"]
