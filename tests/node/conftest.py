"""tests/node runs against the real API server of tests/kube (its fixtures, a cluster of
this directory's own) and needs root (network namespaces, iptables, cgroups)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import root_skip_reason
from tests.kube.conftest import kube_admin, kube_cluster, kube_ns

__all__ = ["kube_admin", "kube_cluster", "kube_ns"]  # fixtures


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        reason = root_skip_reason()
        if reason:
            pytest.skip(reason)
