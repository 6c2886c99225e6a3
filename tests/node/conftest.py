"""Fixtures: the kube harness's (``kube_cluster``, ``kube_admin``, ``kube_ns``), the
CNI binaries (skipped without them unless ``CI`` is set, as tests/kube does), a
stand-in node agent, and a CNI chain in a fresh network namespace."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.e2e.conftest import root_skip_reason
from tests.kube.client import KubeAdmin
from tests.kube.conftest import kube_admin, kube_cluster, kube_ns
from tests.node.chain import (
    Chain,
    PluginAccess,
    TestAgent,
    cni_bin_dir,
    grant_plugin_access,
    revoke_plugin_access,
)

__all__ = ["kube_admin", "kube_cluster", "kube_ns"]


@pytest.fixture(scope="session")
def cni_bin() -> Path:
    directory = cni_bin_dir()
    missing = [b for b in Chain.BINARIES if not os.access(directory / b, os.X_OK)]
    if missing:
        reason = f"needs {', '.join(missing)} in {directory}: `make cni` builds them"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and tests/node {reason}")
        pytest.skip(reason)
    return directory


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace, a bridge and veths")


@pytest.fixture
async def agent(short_dir: Path) -> AsyncIterator[TestAgent]:
    """The stand-in node agent, listening on ``short_dir/cni.sock``."""
    test_agent = TestAgent(short_dir / "cni.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(test_agent.serve)
        yield test_agent
        nursery.cancel_scope.cancel()


@pytest.fixture
async def plugin_access(kube_admin: KubeAdmin, kube_ns: str) -> AsyncIterator[PluginAccess]:
    """A ServiceAccount's token that may get pods and namespaces, and the API server's CA."""
    with trio.fail_after(30):
        access = await grant_plugin_access(kube_admin, kube_ns)
    yield access
    with trio.fail_after(30):
        await revoke_plugin_access(kube_admin, kube_ns)


@pytest.fixture
async def chain(
    as_root: None, cni_bin: Path, short_dir: Path, plugin_access: PluginAccess
) -> AsyncIterator[Chain]:
    """bridge + host-local, loopback... then ambit-cni last, in a conflist of its own
    (own network name, bridge and 10.199.x.0/24), for a network namespace made here;
    everything made is deleted after the test."""
    suffix = secrets.token_hex(4)
    made = Chain(suffix, short_dir, cni_bin, plugin_access)
    await made.create()
    try:
        yield made
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(30):
            await made.destroy()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``root`` skip, saying why, without root or the tools they run."""
    if item.get_closest_marker("root") is not None:
        reason = root_skip_reason()
        if reason:
            pytest.skip(reason)
