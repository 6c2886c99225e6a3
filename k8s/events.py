"""Kubernetes Events (``events.k8s.io/v1``) for problems an operator must see: a route
that is not accepted, a policy ztunnel cannot enforce as written, a Service left out by a
conflict or bound to a waypoint it cannot use, a waypoint that cannot be deployed.

:class:`EventRecorder` writes one Event per object and distinct problem (reason and
note): the same problem again (it cleared and came back) adds to that Event's ``series``
(``count``, ``lastObservedTime``) instead of making another, as client-go's recorder
does. Events are best effort: one that cannot be written is logged once and dropped,
never retried (the object's status says the same and is retried). ``reportingController``
is :data:`REPORTING_CONTROLLER`; ``reportingInstance`` the replica's identity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from ca.kube import ApiUnavailable
from k8s.leader import micro_time
from k8s.sources.api import Requests, namespace_going

log = structlog.get_logger("k8s.events")

REPORTING_CONTROLLER: Final = "ambit.io/controlplane"
MERGE_PATCH: Final = "application/merge-patch+json"
NOTE_LIMIT: Final = 1024  # the API server refuses longer notes
REMEMBERED: Final = 4096  # Events kept for deduplication; the oldest forgotten first
Json = dict[str, Any]


EventApi = Requests  # the requests Events need


@dataclass(frozen=True)
class Regarding:
    """The object an Event is about."""

    api_version: str
    kind: str
    namespace: str  # "" for a cluster-scoped object (its Events go to "default")
    name: str
    uid: str

    def to_json(self) -> Json:
        out = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
               "uid": self.uid}  # fmt: skip
        if self.namespace:
            out["namespace"] = self.namespace
        return out


@dataclass
class _Sent:
    namespace: str
    name: str
    count: int


class EventRecorder:
    def __init__(self, api: EventApi, *, instance: str, action: str = "Translate") -> None:
        self._api = api
        self._instance = instance
        self._action = action
        self._sent: dict[tuple[str, str, str], _Sent] = {}  # (uid, reason, note)

    async def warn(self, regarding: Regarding, reason: str, note: str) -> None:
        """A Warning about ``regarding``: a new Event, or the count of the same one."""
        note = note[:NOTE_LIMIT]
        key = (regarding.uid, reason, note)
        sent = self._sent.get(key)
        try:
            if sent is None or not await self._count(sent):
                await self._create(key, regarding, reason, note)
        except ApiUnavailable as exc:
            log.warning("event_not_written", kind=regarding.kind, name=regarding.name,
                        reason=reason, error=str(exc))  # fmt: skip

    def _path(self, namespace: str) -> str:
        return f"/apis/events.k8s.io/v1/namespaces/{namespace}/events"

    async def _create(
        self, key: tuple[str, str, str], regarding: Regarding, reason: str, note: str
    ) -> None:
        namespace = regarding.namespace or "default"
        event = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": f"{regarding.name}.{time.time_ns():x}", "namespace": namespace},
            "eventTime": micro_time(), "type": "Warning", "reason": reason, "note": note,
            "action": self._action, "regarding": regarding.to_json(),
            "reportingController": REPORTING_CONTROLLER, "reportingInstance": self._instance,
        }  # fmt: skip
        status, body = await self._api.request("POST", self._path(namespace), event)
        if namespace_going(status, body):  # nothing to tell anyone there any more
            log.debug("event_skipped", namespace=namespace, reason="namespace terminating")
            return
        if status != 201:
            raise ApiUnavailable(
                f"create Event: HTTP {status}: {body.get('message')}", _hint(status)
            )
        if len(self._sent) >= REMEMBERED:
            del self._sent[next(iter(self._sent))]
        self._sent[key] = _Sent(namespace, str(body["metadata"]["name"]), 1)
        log.info("event_written", kind=regarding.kind, namespace=regarding.namespace,
                 name=regarding.name, reason=reason)  # fmt: skip

    async def _count(self, sent: _Sent) -> bool:
        """Add one to the Event's series; False if it is gone (Events expire)."""
        sent.count += 1
        patch = {"series": {"count": sent.count, "lastObservedTime": micro_time()}}
        status, body = await self._api.request(
            "PATCH", f"{self._path(sent.namespace)}/{sent.name}", patch, content_type=MERGE_PATCH
        )
        if status == 404:
            return False
        if status != 200:
            message = f"count Event {sent.name}: HTTP {status}: {body.get('message')}"
            raise ApiUnavailable(message, _hint(status))
        return True


def _hint(status: int) -> str:
    if status in (401, 403):
        return "may the control plane create and patch events? (ambit install's ClusterRole)"
    return "the API server refused it"
