"""``ambit install --crds``, ``ambit install`` (and ``--node``) applied to the test
cluster, and taken off it again: the session's cluster is shared, and other tests expect
it without ambit's CRDs (``test_source.py`` installs and removes its own) and without
``ambit-system``.

The fixtures are module-scoped and synchronous (each runs its own ``trio.run`` before
and after a module's tests), so a module installs once and leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from functools import partial
from typing import TypeVar

import pytest
import trio

from k8s import crds, install, install_node
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube import crds as kube_crds
from tests.kube.client import KubeAdmin, NotFound, Obj, gone, wait_for
from tests.kube.cluster import Cluster

CRD_API = "apiextensions.k8s.io/v1"
ESTABLISH_SECONDS = 30.0
T = TypeVar("T")
REMOVE_SECONDS = 90.0  # a namespace's finalization, a CRD's objects: usually seconds


async def established(admin: KubeAdmin, name: str) -> bool:
    got = await admin.get(CRD_API, "CustomResourceDefinition", name)
    conditions = {c["type"]: c["status"] for c in got.get("status", {}).get("conditions", [])}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


async def apply_crds(admin: KubeAdmin) -> list[str]:
    """Apply every CRD of ``ambit install --crds`` (a dry run first); their names, once
    each is Established with its names accepted."""
    names = []
    for crd in crds.crds():
        await admin.apply(crd, dry_run=True)
        await admin.apply(crd)
        names.append(crd["metadata"]["name"])
    for name in names:
        await wait_for(partial(established, admin, name), seconds=ESTABLISH_SECONDS)
    return names


async def apply_install(admin: KubeAdmin) -> list[Obj]:
    """``ambit install --crds`` then ``ambit install``, each document dry-run then
    applied, in order (the Namespace before what lives in it)."""
    await apply_crds(admin)
    docs = install.manifests()
    for doc in docs:
        await admin.apply(doc, dry_run=True)
        await admin.apply(doc)
    return docs


async def remove_all(admin: KubeAdmin) -> None:
    """Delete what ``ambit install`` and ``--crds`` made, waiting until it is gone."""
    for doc in reversed(install.manifests()):
        meta = doc["metadata"]
        with suppress(NotFound):
            await admin.delete(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))
    namespace = install.namespace()
    await wait_for(
        partial(gone, admin, "v1", "Namespace", namespace["metadata"]["name"], None),
        seconds=REMOVE_SECONDS,
        interval=0.2,
    )
    for crd in crds.crds():
        await kube_crds.remove(admin, crd["metadata"]["name"])


def _run(cluster: Cluster, step: Callable[[KubeAdmin], Awaitable[T]], seconds: float) -> T:
    """``step`` in a Trio run of its own (a module fixture runs outside any test's)."""

    async def bounded() -> T:
        with trio.fail_after(seconds):
            return await step(KubeAdmin(cluster))

    return trio.run(bounded)


@pytest.fixture(scope="module")
def ambit_crds(kube_cluster: Cluster) -> Iterator[list[str]]:
    """ambit's CRDs, Established, for one module's tests; removed after them."""
    try:
        names = _run(kube_cluster, apply_crds, 60)
        yield names
    finally:
        _run(kube_cluster, remove_all, REMOVE_SECONDS * 2)


@pytest.fixture(scope="module")
def installed(kube_cluster: Cluster) -> Iterator[list[Obj]]:
    """Everything ``ambit install --crds`` and ``ambit install`` print, applied, for one
    module's tests; removed after them."""
    try:
        docs = _run(kube_cluster, apply_install, 90)
        yield docs
    finally:
        _run(kube_cluster, remove_all, REMOVE_SECONDS * 2)


async def apply_node(admin: KubeAdmin) -> list[Obj]:
    """``ambit install --node``, each document dry-run then applied, in order."""
    docs = install_node.manifests()
    for doc in docs:
        await admin.apply(doc, dry_run=True)
        await admin.apply(doc)
    return docs


async def remove_node(admin: KubeAdmin) -> None:
    """Delete what ``ambit install --node`` made (its cluster-scoped RBAC outlives the
    namespace otherwise) and the DaemonSets' pods, as kubelets would once stopped."""
    for doc in reversed(install_node.manifests()):
        meta = doc["metadata"]
        with suppress(NotFound):
            await admin.delete(doc["apiVersion"], doc["kind"], meta["name"], meta.get("namespace"))
    for name in (install_node.ZTUNNEL, install_node.AGENT):
        pods = await admin.list("v1", "Pod", SYSTEM_NAMESPACE, label_selector=f"app={name}")
        for pod in pods:
            with suppress(NotFound):
                await admin.delete(
                    "v1", "Pod", pod["metadata"]["name"], SYSTEM_NAMESPACE,
                    grace_period_seconds=0,
                )  # fmt: skip


@pytest.fixture(scope="module")
def node_installed(kube_cluster: Cluster, installed: list[Obj]) -> Iterator[list[Obj]]:
    """``ambit install --node`` applied after ``installed``; removed before it is."""
    try:
        yield _run(kube_cluster, apply_node, 60)
    finally:
        _run(kube_cluster, remove_node, 60)
