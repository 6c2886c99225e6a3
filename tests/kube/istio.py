"""Istio on the test cluster, as little of it as ambit's checks look at: the smallest
CRDs of ``networking.istio.io`` VirtualService, Sidecar and ServiceEntry (kinds ambit
does not implement; the spec is kept as given), objects of them, and an
``istio-system`` namespace with an ``istiod`` Deployment (no pod of it ever runs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

import pytest
import trio

from tests.kube import crds
from tests.kube.client import KubeAdmin, NotFound, Obj, gone, wait_for

NETWORKING = "networking.istio.io"
NETWORKING_KINDS = (
    ("VirtualService", "virtualservices"),
    ("Sidecar", "sidecars"),
    ("ServiceEntry", "serviceentries"),
)
ISTIO_NAMESPACE = "istio-system"
REMOVE_SECONDS = 90.0


def networking_crd(kind: str, plural: str) -> Obj:
    """Namespaced, serving ``v1`` (stored) and ``v1beta1``, as Istio's do."""
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": crds.CRD_API,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{NETWORKING}"},
        "spec": {
            "group": NETWORKING,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "listKind": f"{kind}List"},
            "versions": [
                {"name": v, "served": True, "storage": v == "v1", "schema": schema}
                for v in ("v1", "v1beta1")
            ],
        },
    }  # fmt: skip


def networking_object(kind: str, ns: str, name: str) -> Obj:
    return {
        "apiVersion": f"{NETWORKING}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": [f"{name}.{ns}.svc.cluster.local"]},
    }


@pytest.fixture
async def istio_networking_crds(kube_admin: KubeAdmin) -> AsyncIterator[list[str]]:
    """Istio's VirtualService, Sidecar and ServiceEntry CRDs, Established; removed
    (with their objects) after the test."""
    documents = [networking_crd(kind, plural) for kind, plural in NETWORKING_KINDS]
    with trio.fail_after(60):
        names = await crds.install(kube_admin, documents)
    yield names
    with trio.fail_after(crds.REMOVE_SECONDS * len(names)):
        for name in names:
            await crds.remove(kube_admin, name)


def istiod_deployment(ns: str = ISTIO_NAMESPACE) -> Obj:
    labels = {"app": "istiod", "istio": "pilot"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "discovery", "image": "example.invalid/pilot:1"}]},
            },
        },
    }


@pytest.fixture
async def istio_control_plane(kube_admin: KubeAdmin) -> AsyncIterator[str]:
    """Namespace istio-system with an istiod Deployment; deleted after the test, and waited
    for (later tests expect a cluster without Istio)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_NAMESPACE}}
    with trio.fail_after(30):
        await kube_admin.create(namespace)
        await kube_admin.create(istiod_deployment())
    yield ISTIO_NAMESPACE
    with trio.fail_after(REMOVE_SECONDS + 10):
        with suppress(NotFound):
            await kube_admin.delete("v1", "Namespace", ISTIO_NAMESPACE)
        await wait_for(
            partial(gone, kube_admin, "v1", "Namespace", ISTIO_NAMESPACE, None),
            seconds=REMOVE_SECONDS, interval=0.2,
        )  # fmt: skip
