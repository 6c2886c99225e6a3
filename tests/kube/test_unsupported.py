"""The control plane's report of Istio's objects that ambit ignores
(:func:`k8s.unsupported.report_unsupported`), against the real API server with Istio's
VirtualService, Sidecar and ServiceEntry CRDs: one warning per kind with its
count and names, nothing more while nothing changes, the new set once it does, and a
line when none is left."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from functools import partial
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from k8s.sources.api import Requests
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from k8s.unsupported import (
    CRDS_PATH,
    EVENT_IGNORED,
    EVENT_NONE_LEFT,
    report_unsupported,
)
from tests.kube.client import KubeAdmin
from tests.kube.cluster import Cluster
from tests.kube.istio import NETWORKING, istio_networking_crds, networking_object
from tests.waiting import wait_until

pytestmark = pytest.mark.kube
__all__ = ["istio_networking_crds"]  # the fixture, used here

SECONDS = 60.0
PERIOD = 0.2


class CountingApi:
    """The real requests, counting how often the CRDs were listed (once per look)."""

    def __init__(self, api: Requests) -> None:
        self.api = api
        self.looks = 0

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        if path == CRDS_PATH and not (query or {}).get("continue"):
            self.looks += 1
        return await self.api.request(method, path, body, query=query, content_type=content_type)


def ignored(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, int, list[str]]]:
    return [(e["kind"], e["count"], e["names"]) for e in logs if e["event"] == EVENT_IGNORED]


async def test_the_reporter_logs_each_kind_then_only_changes(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, istio_networking_crds: list[str]
) -> None:
    with trio.fail_after(SECONDS), capture_logs() as logs:
        for name in ("reviews", "ratings"):
            await kube_admin.create(networking_object("VirtualService", kube_ns, name))
        async with open_kube_api(KubeSourceConfig(kubeconfig=kube_cluster.kubeconfig)) as api:
            counting = CountingApi(api)
            async with trio.open_nursery() as nursery:
                first = await nursery.start(partial(report_unsupported, counting, period=PERIOD))
                assert [(f.kind.kind, f.kind.group, f.names) for f in first] == [
                    ("VirtualService", NETWORKING, (f"{kube_ns}/ratings", f"{kube_ns}/reviews"))
                ]
                assert ignored(logs) == [
                    ("VirtualService", 2, [f"{kube_ns}/ratings", f"{kube_ns}/reviews"])
                ]
                # Three more looks, nothing changed: nothing more is logged.
                await wait_until(lambda: counting.looks >= 4, seconds=SECONDS)
                assert len(ignored(logs)) == 1

                await kube_admin.create(networking_object("Sidecar", kube_ns, "reviews"))
                await wait_until(lambda: len(ignored(logs)) == 3, seconds=SECONDS)
                assert ignored(logs)[1:] == [
                    ("VirtualService", 2, [f"{kube_ns}/ratings", f"{kube_ns}/reviews"]),
                    ("Sidecar", 1, [f"{kube_ns}/reviews"]),
                ]
                await kube_admin.delete("v1", "Namespace", kube_ns)  # and its objects
                await wait_until(
                    lambda: any(e["event"] == EVENT_NONE_LEFT for e in logs), seconds=SECONDS
                )
                # (The namespace's objects go one by one: a set in between may be logged.)
                assert logs[-1]["event"] == EVENT_NONE_LEFT
                assert all(e["log_level"] == "warning" for e in logs if e["event"] == EVENT_IGNORED)
                nursery.cancel_scope.cancel()
