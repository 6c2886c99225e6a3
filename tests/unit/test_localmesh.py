"""Local mode's mesh hooks, the pure parts: a pod whose capture rules could not be
installed is published out of the mesh, never as meshed while uncaptured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

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


def documents() -> list[Mapping[str, Any]]:
    """The documents as local mode writes them for the control plane: with pod IPs."""
    ips = {"web": "10.244.1.10", "db": "10.244.1.11"}
    docs = list(yaml.safe_load_all(MANIFEST))
    for doc in docs:
        if doc["kind"] == "Pod":
            doc["status"] = {"podIP": ips[doc["metadata"]["name"]], "phase": "Running"}
    return docs


def meshed(docs: list[Mapping[str, Any]]) -> dict[str, bool]:
    objs = [manifests.parse_object(dict(d)) for d in docs]
    return {w.name: w.meshed for w in translate(objs, version=1).snapshot.workloads}


def test_an_uncaptured_pod_is_published_out_of_the_mesh_and_only_it() -> None:
    assert meshed(documents()) == {"web": True, "db": True}
    assert meshed(_out_of_mesh(documents(), {("shop", "web")})) == {"web": False, "db": True}
    assert meshed(_out_of_mesh(documents(), {("shop", "db")})) == {"web": True, "db": False}
    assert _out_of_mesh(documents(), set()) == documents()
