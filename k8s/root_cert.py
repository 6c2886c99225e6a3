"""The mesh's trust bundle in every namespace, as istiod writes ``istio-ca-root-cert``: a
ConfigMap ``ambit-ca-root-cert`` whose ``root-cert.pem`` holds the CA's roots. A waypoint's
pod mounts it as its ``--trust-bundle`` (:mod:`k8s.waypoint_kube`); any workload that
wants to verify mesh certificates may read it too.

:func:`run_root_cert_publisher` is a leader task. Once the store has listed every kind
(its gate) and after each change, it applies the ConfigMap (Server-Side Apply, field
manager ``ambit``) to each namespace the store holds whose ConfigMap it has not yet
written with the current roots; it reads the roots again every ``check`` seconds, so a
root rotation reaches every namespace, and writes everything again every ``resync``
seconds (a ConfigMap deleted behind its back comes back). A namespace that is gone or
terminating is skipped; another failure is logged once per namespace until it changes,
and retried after the backoff's delay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from ca.kube import ApiUnavailable
from k8s.sources.api import Requests, namespace_going, server_side_apply
from k8s.store import ObjectStore
from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
from mesh.backoff import Backoff
from mesh.constants import LABEL_MANAGED_BY

log = structlog.get_logger("k8s.root_cert")

FIELD_MANAGER: Final = "ambit"
MANAGED_BY: Final = "controlplane"


@dataclass(frozen=True)
class PublisherTiming:
    check: float = 30.0  # seconds between readings of the roots
    resync: float = 600.0  # seconds between writing every namespace again
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))


def config_map(namespace: str, pem: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIG_MAP,
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY},
        },
        "data": {ROOT_CONFIG_MAP_KEY: pem},
    }


class _Publisher:
    def __init__(self, api: Requests, timing: PublisherTiming) -> None:
        self._api = api
        self._timing = timing
        self.written: dict[str, str] = {}  # namespace -> the roots it holds
        self._failures: dict[str, tuple[int, float, str]] = {}  # ns -> (count, retry at, why)

    async def sync(self, namespaces: list[str], pem: str) -> None:
        now = trio.current_time()
        for gone in set(self.written) - set(namespaces):
            del self.written[gone]
        for namespace in namespaces:
            failed = self._failures.get(namespace)
            if self.written.get(namespace) == pem or (failed and failed[1] > now):
                continue
            path = f"/api/v1/namespaces/{namespace}/configmaps/{ROOT_CONFIG_MAP}"
            try:
                status, body = await server_side_apply(
                    self._api, path, config_map(namespace, pem), field_manager=FIELD_MANAGER
                )
            except ApiUnavailable as exc:
                self._failed(namespace, str(exc))
                continue
            if status in (200, 201) or namespace_going(status, body):
                self.written[namespace] = pem
                if self._failures.pop(namespace, None) is not None:
                    log.info("root_cert_recovered", namespace=namespace)
            else:
                self._failed(namespace, f"HTTP {status}: {str(body.get('message'))[:300]}")

    def next_retry(self) -> float | None:
        return min((f[1] for f in self._failures.values()), default=None)

    def _failed(self, namespace: str, why: str) -> None:
        count, _, before = self._failures.get(namespace, (0, 0.0, ""))
        delay = self._timing.backoff.delay(count + 1)
        self._failures[namespace] = (count + 1, trio.current_time() + delay, why)
        if why != before:
            log.warning(
                "root_cert_write_failed", namespace=namespace, reason=why,
                hint="may the control plane's service account patch configmaps?",
            )  # fmt: skip


async def run_root_cert_publisher(
    api: Requests,
    store: ObjectStore,
    roots: Callable[[], bytes],
    *,
    timing: PublisherTiming | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``ambit-ca-root-cert`` with ``roots()`` in every namespace, until cancelled."""
    timing = timing or PublisherTiming()
    publisher = _Publisher(api, timing)
    task_status.started()
    seen = 0
    resync_at = trio.current_time() + timing.resync
    while True:
        while not store.complete:
            seen = await store.wait_changed(seen)
        seen = store.version
        if trio.current_time() >= resync_at:
            publisher.written.clear()
            resync_at = trio.current_time() + timing.resync
        namespaces = sorted(e.obj.name for e in store.entries("Namespace"))
        await publisher.sync(namespaces, roots().decode())
        wake = trio.current_time() + timing.check
        retry = publisher.next_retry()
        with trio.move_on_at(min(wake, resync_at, retry if retry is not None else wake)):
            seen = await store.wait_changed(seen)
