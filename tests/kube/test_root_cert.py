"""The trust bundle in every namespace (``k8s.root_cert``) against the real API server:
the ConfigMap ``ambit-ca-root-cert`` a waypoint's pod mounts appears in existing and new
namespaces, follows a root rotation, and comes back when deleted behind the publisher's
back (on its resync); a namespace being deleted is skipped without a failure logged."""

from __future__ import annotations

import gc
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

import pytest
import trio
from structlog.testing import capture_logs

from k8s.root_cert import PublisherTiming, run_root_cert_publisher
from k8s.sources.driver import KubernetesSource
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from k8s.store import ObjectStore
from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
from mesh.backoff import Backoff
from tests.kube.client import KubeAdmin, NotFound, wait_for
from tests.kube.cluster import Cluster
from tests.kube.kubelet import namespace

pytestmark = pytest.mark.kube

SECONDS = 30.0
FAST = PublisherTiming(check=0.2, resync=2.0, backoff=Backoff(initial=0.05, maximum=0.5))


@asynccontextmanager
async def publishing(cluster: Cluster, roots: list[bytes]) -> AsyncIterator[None]:
    """The source feeding a store and the publisher following it, ``roots[-1]`` the
    current roots."""
    store = ObjectStore()
    config = KubeSourceConfig(kubeconfig=cluster.kubeconfig, backoff=Backoff(0.05, 0.5))
    async with open_kube_api(config) as api, trio.open_nursery() as nursery:
        await nursery.start(partial(KubernetesSource(config).serve, api, store))
        await nursery.start(
            partial(run_root_cert_publisher, api, store, lambda: roots[-1], timing=FAST)
        )
        yield
        nursery.cancel_scope.cancel()
    gc.collect()


async def roots_in(admin: KubeAdmin, ns: str) -> str | None:
    try:
        found = await admin.get("v1", "ConfigMap", ROOT_CONFIG_MAP, ns)
    except NotFound:
        return None
    return str(found["data"][ROOT_CONFIG_MAP_KEY])


async def test_every_namespace_gets_the_roots_and_follows_a_rotation(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str
) -> None:
    roots = [b"-----BEGIN CERTIFICATE-----\nfirst\n-----END CERTIFICATE-----\n"]
    later = f"t-{secrets.token_hex(4)}"
    with capture_logs() as logs, trio.fail_after(SECONDS * 3):
        async with publishing(kube_cluster, roots):
            await wait_for(lambda: _has(kube_admin, kube_ns, roots[-1]), seconds=SECONDS)
            await kube_admin.create(namespace(later))  # a namespace made afterwards
            try:
                await wait_for(lambda: _has(kube_admin, later, roots[-1]), seconds=SECONDS)
                roots.append(roots[0].replace(b"first", b"rotated"))
                await wait_for(lambda: _has(kube_admin, kube_ns, roots[-1]), seconds=SECONDS)
                await wait_for(lambda: _has(kube_admin, later, roots[-1]), seconds=SECONDS)
                # Deleted behind its back: back on the next resync.
                await kube_admin.delete("v1", "ConfigMap", ROOT_CONFIG_MAP, kube_ns)
                await wait_for(lambda: _has(kube_admin, kube_ns, roots[-1]), seconds=SECONDS)
                # A namespace being deleted is skipped, not a failure.
                await kube_admin.delete("v1", "Namespace", later)
                await trio.sleep(FAST.resync * 1.5)
            finally:
                with suppress(NotFound):
                    await kube_admin.delete("v1", "Namespace", later)
    found = await kube_admin.get("v1", "ConfigMap", ROOT_CONFIG_MAP, kube_ns)
    assert found["metadata"]["labels"] == {"ambit.io/managed-by": "controlplane"}
    assert {m["manager"] for m in found["metadata"]["managedFields"]} == {"ambit"}
    assert [e for e in logs if e["event"] == "root_cert_write_failed"] == []


async def _has(admin: KubeAdmin, ns: str, pem: bytes) -> bool:
    return await roots_in(admin, ns) == pem.decode()
