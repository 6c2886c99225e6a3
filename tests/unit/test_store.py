"""The object store: one place for every object, its server metadata, its conditions,
and the listing gate that keeps a partial view from ever being published."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import trio

from k8s.manifests import KINDS, AuthorizationPolicy, Namespace, Pod, ServiceAccount
from k8s.store import Condition, ObjectStore, object_json, ref_of


def clock() -> Callable[[], str]:
    ticks = itertools.count()
    return lambda: f"2026-12-06T10:00:{next(ticks):02d}Z"


def make_store() -> ObjectStore:
    return ObjectStore(clock=clock())


def pod(name: str = "web", **labels: str) -> Pod:
    return Pod(name=name, namespace="shop", labels=tuple(labels.items()))


def test_put_reports_created_configured_unchanged_and_assigns_server_metadata() -> None:
    store = make_store()
    assert store.put(pod(app="a")) == "created"
    first = store.get(("Pod", "shop", "web"))
    assert first is not None
    assert first.obj.uid
    assert first.obj.resource_version
    assert first.obj.creation_timestamp == "2026-12-06T10:00:00Z"
    assert first.generation == 1

    assert store.put(pod(app="a")) == "unchanged"
    assert store.get(("Pod", "shop", "web")) == first

    assert store.put(pod(app="b")) == "configured"
    second = store.get(("Pod", "shop", "web"))
    assert second is not None
    assert second.obj.uid == first.obj.uid, "an update keeps the object's identity"
    assert second.obj.creation_timestamp == first.obj.creation_timestamp
    assert second.obj.resource_version != first.obj.resource_version
    assert second.generation == 2


def test_metadata_a_source_gives_is_kept_and_a_new_uid_is_a_new_object() -> None:
    store = make_store()
    given = Pod(name="web", namespace="shop", uid="u1", resource_version="7",
                creation_timestamp="2020-01-01T00:00:00Z")  # fmt: skip
    assert store.put(given) == "created"
    entry = store.get(ref_of(given))
    assert entry is not None
    assert entry.obj == given
    again = Pod(name="web", namespace="shop", uid="u2", resource_version="9",
                creation_timestamp="2021-01-01T00:00:00Z")  # fmt: skip
    assert store.put(again) == "created", "same name, other uid: deleted and created again"
    entry = store.get(ref_of(again))
    assert entry is not None
    assert entry.generation == 1


def test_cluster_scoped_kinds_have_no_namespace_in_their_reference() -> None:
    assert ref_of(Namespace(name="shop", namespace="")) == ("Namespace", "", "shop")
    assert ref_of(ServiceAccount(name="sa", namespace="shop")) == ("ServiceAccount", "shop", "sa")


def test_conditions_are_status_and_keep_their_transition_time() -> None:
    store = make_store()
    store.put(pod())
    ref = ("Pod", "shop", "web")
    version = store.version
    accepted = Condition("ambit.io/Accepted", "True", "Accepted", "ok")
    assert store.set_conditions(ref, [accepted])
    assert store.version == version, "status never wakes the control plane"
    entry = store.get(ref)
    assert entry is not None
    first = entry.condition("ambit.io/Accepted")
    assert first is not None
    assert first.last_transition_time

    store.set_conditions(ref, [Condition("ambit.io/Accepted", "True", "Accepted", "still ok")])
    entry = store.get(ref)
    assert entry is not None
    same = entry.condition("ambit.io/Accepted")
    assert same is not None
    assert same.message == "still ok"
    assert same.last_transition_time == first.last_transition_time

    store.set_conditions(ref, [Condition("ambit.io/Accepted", "False", "IPConflict", "x")])
    entry = store.get(ref)
    assert entry is not None
    flipped = entry.condition("ambit.io/Accepted")
    assert flipped is not None
    assert flipped.last_transition_time != first.last_transition_time


def test_conditions_for_an_old_object_never_land_on_its_successor() -> None:
    store = make_store()
    store.put(Pod(name="web", namespace="shop", uid="old"))
    store.put(Pod(name="web", namespace="shop", uid="new"))
    stale = Condition("ambit.io/Accepted", "False", "IPConflict", "x")
    assert not store.set_conditions(("Pod", "shop", "web"), [stale], uid="old")
    entry = store.get(("Pod", "shop", "web"))
    assert entry is not None
    assert entry.conditions == ()
    assert not store.set_conditions(("Pod", "shop", "gone"), [stale])


def test_the_view_is_complete_only_once_every_kind_is_listed_one_by_one() -> None:
    store = make_store()
    kinds = [k.kind for k in KINDS]
    assert store.unlisted() == kinds
    for i, kind in enumerate(kinds):
        assert not store.complete, f"complete before {kind} was listed"
        store.replace_kind(kind, [pod()] if kind == "Pod" else [])
        assert store.unlisted() == kinds[i + 1 :]
    assert store.complete
    # A kind whose CRD appears closes the gate again until its first list.
    store.unlist("AuthorizationPolicy")
    assert store.unlisted() == ["AuthorizationPolicy"]
    store.replace_kind("AuthorizationPolicy", [])
    assert store.complete


def test_a_list_replaces_the_kind_wholesale() -> None:
    store = make_store()
    store.replace_kind("Pod", [pod("a"), pod("b")])
    store.put(AuthorizationPolicy(name="p", namespace="shop"))
    store.replace_kind("Pod", [pod("b", app="x"), pod("c")])
    assert [e.obj.name for e in store.entries("Pod")] == ["b", "c"]
    assert [e.obj.name for e in store.entries("AuthorizationPolicy")] == ["p"]
    b = store.get(("Pod", "shop", "b"))
    assert b is not None
    assert b.generation == 2
    with pytest.raises(ValueError, match="a list of Pod holds Namespace"):
        store.replace_kind("Pod", [Namespace(name="x", namespace="")])


def test_an_unknown_kind_is_refused() -> None:
    store = ObjectStore(kinds=["Pod"])
    with pytest.raises(ValueError, match="not one this store holds"):
        store.put(Namespace(name="x", namespace=""))


async def test_waiters_wake_on_content_changes_only() -> None:
    store = make_store()
    seen = store.version
    woke: list[int] = []

    async def waiter() -> None:
        woke.append(await store.wait_changed(seen))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        store.put(pod())
        await trio.testing.wait_all_tasks_blocked()
    assert woke == [seen + 1]


def test_object_json_shows_the_document_with_metadata_and_conditions() -> None:
    store = make_store()
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop", "labels": {"team": "a"}},
        "spec": {"action": "ALLOW"},
    }
    store.put(AuthorizationPolicy(name="p", namespace="shop"), document=doc)
    ref = ("AuthorizationPolicy", "shop", "p")
    store.set_conditions(ref, [Condition("ambit.io/ZtunnelAccepted", "True", "Accepted", "ok")])
    entry = store.get(ref)
    assert entry is not None
    shown = object_json(entry)
    assert shown["apiVersion"] == "security.istio.io/v1"
    assert shown["spec"] == {"action": "ALLOW"}
    assert shown["metadata"]["labels"] == {"team": "a"}
    assert shown["metadata"]["uid"] == entry.obj.uid
    assert shown["metadata"]["generation"] == 1
    (condition,) = shown["status"]["conditions"]
    assert condition["type"] == "ambit.io/ZtunnelAccepted"
    assert condition["status"] == "True"
    assert condition["observedGeneration"] == 1
    assert doc["metadata"] == {"name": "p", "namespace": "shop", "labels": {"team": "a"}}
