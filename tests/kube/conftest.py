"""Fixtures for tests against the real control plane (``cluster.py``).

One cluster serves the whole session (starting it takes seconds); each test gets
its own namespace (``kube_ns``, with its ``default`` ServiceAccount) and names
its cluster-scoped objects after it. Without the binaries the tests skip, saying
that ``make kube`` builds them; where the environment variable ``CI`` is set
(``.ci/run`` builds them first) a missing binary is a failure instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import ExitStack, suppress

import pytest
import trio

from tests.kube import gateway_api
from tests.kube.client import KubeAdmin, NotFound
from tests.kube.cluster import Cluster, missing_binaries, start_cluster
from tests.kube.kubelet import namespace, wait_default_service_account

TEARDOWN_SECONDS = 30.0
# Pods are not in the API server's watch cache: a pod watch is served by etcd itself, so
# one from a resourceVersion that etcd compacted away ends in 410 Gone, as a watch falls
# behind a real cluster's cache (test_source.py). Everything else is cached as usual.
APISERVER_FLAGS = ("--watch-cache-sizes=pods#0",)


_CLUSTER: list[Cluster] = []  # the session's one cluster, once started


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Cluster:
    """One cluster for the whole session, however many conftests import this fixture
    (tests/node's does: pytest keeps one instance per conftest); stopped at the end."""
    if _CLUSTER:
        return _CLUSTER[0]
    reason = missing_binaries()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and the test cluster {reason}")
        pytest.skip(reason)
    stack = ExitStack()
    _CLUSTER.append(stack.enter_context(start_cluster(apiserver_flags=APISERVER_FLAGS)))
    request.config.add_cleanup(stack.close)
    request.config.add_cleanup(_CLUSTER.clear)
    return _CLUSTER[0]


@pytest.fixture
def kube_admin(kube_cluster: Cluster) -> KubeAdmin:
    return KubeAdmin(kube_cluster)


@pytest.fixture
async def kube_ns(kube_admin: KubeAdmin) -> AsyncIterator[str]:
    """A fresh namespace, once its ``default`` ServiceAccount exists (Pods need
    it); deleted after the test (not waited for: finalizing takes seconds)."""
    name = f"t-{secrets.token_hex(4)}"
    with trio.fail_after(60):
        await kube_admin.create(namespace(name))
        await wait_default_service_account(kube_admin, name)
    yield name
    with trio.fail_after(TEARDOWN_SECONDS), suppress(NotFound):
        await kube_admin.delete("v1", "Namespace", name)


@pytest.fixture
async def gateway_crds(kube_admin: KubeAdmin) -> list[str]:
    """The Gateway API's standard CRDs, installed (once per cluster) and Established."""
    try:
        directory = await trio.to_thread.run_sync(gateway_api.crd_dir)
    except gateway_api.GatewayApiMissing as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(f"{error}; `make kube` puts sigs.k8s.io/gateway-api in Go's module cache")
    with trio.fail_after(60):
        return await gateway_api.install(kube_admin, directory)
