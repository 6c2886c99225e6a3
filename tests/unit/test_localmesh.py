"""Local mode's mesh hooks, the pure parts: a pod whose capture rules could not be
installed is published out of the mesh, never as meshed while uncaptured."""

from __future__ import annotations

from k8s import manifests
from k8s.localmesh import _out_of_mesh
from k8s.translate import translate

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web, ambit.io/dataplane-mode: ambient}}
spec: {nodeName: node-1, containers: [{name: web, image: web}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: node-1, containers: [{name: db, image: db}]}
"""


def objects() -> tuple[manifests.K8sObject, ...]:
    ips = {"web": "10.244.1.10", "db": "10.244.1.11"}
    return tuple(
        o.with_ip(ips[o.name]) if isinstance(o, manifests.Pod) else o
        for o in manifests.loads(MANIFEST, "test.yaml")
    )


def meshed(objs: tuple[manifests.K8sObject, ...]) -> dict[str, bool]:
    return {w.name: w.meshed for w in translate(objs, version=1).snapshot.workloads}


def test_an_uncaptured_pod_is_published_out_of_the_mesh_and_only_it() -> None:
    assert meshed(objects()) == {"web": True, "db": True}
    assert meshed(_out_of_mesh(objects(), {("shop", "web")})) == {"web": False, "db": True}
    assert meshed(_out_of_mesh(objects(), {("shop", "db")})) == {"web": True, "db": False}
    assert _out_of_mesh(objects(), set()) == objects()
