"""Translator and the cyclic garbage collector: a batch leaves the collector as it
found it, what a big batch made goes to the oldest generation (once, not traversed by
every young collection), and objects someone else froze stay frozen."""

from __future__ import annotations

import gc

from k8s import manifests as m
from k8s.translate import Translator
from tests.k8s_builders import ns, pod, svc
from tests.unit.test_translator import cluster


def test_the_cyclic_collector_is_as_it_was_after_a_batch() -> None:
    translator = Translator()
    assert gc.isenabled()
    translator.apply(cluster())
    assert gc.isenabled()
    gc.disable()
    try:
        translator.apply([ns("bank")])
        assert not gc.isenabled()
    finally:
        gc.enable()


def many_pods(count: int) -> list[m.K8sObject]:
    return [
        ns("shop"),
        *(
            pod(f"web-{i}", "shop", ip=f"10.0.{i // 256}.{i % 256}", labels={"app": f"w{i // 5}"})
            for i in range(count)
        ),
        *(svc(f"w{j}", "shop", cluster_ip=f"10.96.0.{j}") for j in range(count // 5)),
    ]


def in_generation(generation: int, obj: object) -> bool:
    return any(o is obj for o in gc.get_objects(generation))


def test_what_a_big_batch_made_goes_to_the_oldest_generation() -> None:
    translator = Translator()
    snapshot = translator.apply(many_pods(1000)).snapshot
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert in_generation(2, snapshot.workloads[0])
    assert in_generation(2, snapshot)
    changed = translator.apply([pod("web-0", "shop", ip="10.0.9.9", labels={"app": "w0"})])
    assert not in_generation(2, changed.snapshot.workload("shop/web-0"))  # a small batch: young


def test_objects_frozen_by_someone_else_stay_frozen() -> None:
    theirs = [object()]  # a tracked container someone else froze
    gc.freeze()
    try:
        snapshot = Translator().apply(many_pods(1000)).snapshot
        # Frozen objects may be freed meanwhile (the count can drop), but none
        # the translator left alone returns to a collected generation.
        assert gc.get_freeze_count() > 0
        assert not any(in_generation(g, theirs) for g in (0, 1, 2))
        assert not in_generation(2, snapshot.workloads[0])
    finally:
        gc.unfreeze()
