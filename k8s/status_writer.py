"""The status writer: the conditions the control plane computed (kept in the
:class:`~k8s.store.ObjectStore`) written back to the cluster, where ``kubectl get
gateway,httproute -A`` and ``-o yaml`` show them; and Events for the problems among them.

It runs on the leader only (:mod:`k8s.leader`), on its own task: translation never waits
for it. It wakes on every revision of the store (content or conditions; changes close
together are written once, after ``window`` seconds), and, once every kind is listed,
applies to each object's ``/status`` what :mod:`k8s.status_docs` says, by Server-Side
Apply with field manager ``ambit`` (``force``: ambit owns these fields), when it differs
from what this writer last applied there: everything once when it starts (a new leader
does not trust its predecessor), then what changed. A route's ``status.parents`` (a
policy's ``ancestors``) is read first and the other controllers' entries kept; the apply
then carries the ``resourceVersion`` read, so a concurrent change makes it fail (409) and
it is read again.

- 404 (the object was deleted meanwhile) and a refused ``uid`` (409 when no object of
  the name exists, 422 when another of the same name replaced it) are skipped, logged at
  debug: the store will hear of it.
- Any other failure is retried after :class:`mesh.backoff.Backoff`'s delays, logged once
  per object until it is written (``status_write_failed``, ``status_write_recovered``).
- A problem that appears on an object (a condition of
  :data:`k8s.status_docs.EVENT_CONDITIONS`, False) becomes a Warning Event
  (:class:`k8s.events.EventRecorder`); so does an object the source refused (reason
  ``Refused``, the source's sentence: such an object is not in the store, so its
  refusals are asked for every ``REFUSALS_POLL`` seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import structlog
import trio

from ca.kube import ApiUnavailable
from k8s.events import EventApi, EventRecorder, Regarding
from k8s.sources.api import server_side_apply
from k8s.sources.feed import Refusal
from k8s.status_docs import (
    KINDS,
    StatusDoc,
    api_version,
    event_problems,
    merge_parents,
    same_parents,
    status_doc,
    status_of,
)
from k8s.store import Entry, ObjectRef, ObjectStore
from mesh.backoff import Backoff

log = structlog.get_logger("k8s.status_writer")

FIELD_MANAGER: Final = "ambit"
WINDOW: Final = 0.2  # seconds: revisions this close together are written once
REFUSALS_POLL: Final = 2.0  # seconds between looks at the objects the source refused
REFUSED: Final = "Refused"  # the reason of their Events
Json = dict[str, Any]
Written = tuple[str, Json | None]  # (uid, status applied)


class _Skip(Exception):
    """The object is gone or replaced: nothing to write, nothing to retry."""


class StatusWriter:
    def __init__(self, api: EventApi, store: ObjectStore, events: EventRecorder) -> None:
        self._api = api
        self._store = store
        self._events = events
        self._written: dict[ObjectRef, Written] = {}
        self._failing: dict[ObjectRef, str] = {}  # objects whose last write failed: why
        self._problems: dict[ObjectRef, tuple[str, set[tuple[str, str]]]] = {}
        self._refused: set[Refusal] = set()

    async def write_round(self) -> int:
        """Write every status that differs from what was last written, and the Events of
        new problems; the number of writes that failed (to be retried)."""
        failed = 0
        present: set[ObjectRef] = set()
        for kind in KINDS:
            for entry in self._store.entries(kind):
                present.add(entry.ref)
                if not await self._write(entry):
                    failed += 1
                await self._warn(entry)
        for ref in [r for r in self._written if r not in present]:
            del self._written[ref]
        for ref in [r for r in self._problems if r not in present]:
            del self._problems[ref]
        return failed

    async def warn_refused(self, refusals: Iterable[Refusal]) -> None:
        """An Event for each object refused since the last call (or refused again)."""
        current = set(refusals)
        for r in sorted(current - self._refused, key=lambda r: (r.namespace, r.name)):
            regarding = Regarding(r.api_version, r.kind, r.namespace, r.name, r.uid)
            await self._events.warn(regarding, REFUSED, r.error)
        self._refused = current

    async def _write(self, entry: Entry) -> bool:
        status = status_of(entry, self._store)
        uid = entry.obj.uid
        last = self._written.get(entry.ref)
        if last == (uid, status) or (status is None and (last is None or last[0] != uid)):
            return True  # written already, or nothing of ambit's to write or remove
        doc = status_doc(entry, status if status is not None else {})
        try:
            await self._apply(doc)
        except _Skip as skipped:
            log.debug("status_skipped", object=_name(entry), reason=str(skipped))
        except ApiUnavailable as exc:
            if self._failing.get(entry.ref) != str(exc):
                log.warning("status_write_failed", object=_name(entry), reason=str(exc))
            self._failing[entry.ref] = str(exc)
            return False
        if self._failing.pop(entry.ref, None) is not None:
            log.info("status_write_recovered", object=_name(entry))
        self._written[entry.ref] = (uid, status)
        return True

    async def _apply(self, doc: StatusDoc) -> None:
        document = doc.document
        if doc.merge:
            code, current = await self._api.request("GET", doc.path)
            _check(code, current)
            ours = document["status"][doc.merge]
            parents = merge_parents(current, ours, doc.merge)
            if same_parents(parents, (current.get("status") or {}).get(doc.merge) or []):
                return
            meta = current.get("metadata") or {}
            document = {**document, "status": {doc.merge: parents},
                        "metadata": {**document["metadata"],
                                     "resourceVersion": meta.get("resourceVersion")}}  # fmt: skip
        code, body = await server_side_apply(
            self._api, doc.path, document, field_manager=FIELD_MANAGER
        )
        _check(code, body)

    async def _warn(self, entry: Entry) -> None:
        found = set(event_problems(entry))
        uid = entry.obj.uid
        before = self._problems.get(entry.ref)
        seen = before[1] if before is not None and before[0] == uid else set()
        self._problems[entry.ref] = (uid, found)
        kind, namespace, name = entry.ref
        regarding = Regarding(api_version(entry), kind, namespace, name, uid)
        for reason, message in sorted(found - seen):
            await self._events.warn(regarding, reason, message)


def _check(code: int, body: Mapping[str, Any]) -> None:
    message = str(body.get("message") or "")
    if code == 404:
        raise _Skip("the object is gone")
    if _other_uid(code, body):
        raise _Skip("the object was replaced, or is gone")
    if code in (401, 403):
        hint = "may the control plane patch this kind's status? (ambit install's ClusterRole)"
        raise ApiUnavailable(f"HTTP {code}: {message[:300]}", hint)
    if code not in (200, 201):
        raise ApiUnavailable(f"HTTP {code}: {message[:300]}", "retried after a backoff")


def _other_uid(code: int, body: Mapping[str, Any]) -> bool:
    """Whether the API server refused the document's uid: 409 when no object of that name
    exists (``uid mismatch``), 422 naming ``metadata.uid`` when a successor does."""
    message = str(body.get("message") or "")
    if code == 409:
        return "uid mismatch" in message or "UID in precondition" in message
    causes = (body.get("details") or {}).get("causes") or []
    return code == 422 and any(
        isinstance(c, Mapping) and c.get("field") == "metadata.uid" for c in causes
    )


def _name(entry: Entry) -> str:
    kind, namespace, name = entry.ref
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


async def run_status_writer(
    api: EventApi,
    store: ObjectStore,
    *,
    identity: str,
    refusals: Callable[[], Iterable[Refusal]] = lambda: (),
    window: float = WINDOW,
    backoff: Backoff | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write statuses (and Events) after each revision of ``store`` once every kind is
    listed; failed writes again after ``backoff``'s delays (a bug in a round is logged
    once per round and retried the same way); Events for what ``refusals`` names. Runs
    until cancelled."""
    writer = StatusWriter(api, store, EventRecorder(api, instance=identity))
    backoff = backoff or Backoff(initial=0.5, maximum=30.0)
    task_status.started()
    seen, failures, retry_at = -1, 0, float("inf")
    while True:
        with trio.move_on_at(min(trio.current_time() + REFUSALS_POLL, retry_at)):
            await store.wait_revised(seen)
        await trio.sleep(window)
        due = store.revision != seen or trio.current_time() >= retry_at
        seen = store.revision
        if not store.complete:
            continue  # opening the gate is a revision: what is due then is written
        try:
            await writer.warn_refused(refusals())
            failed = await writer.write_round() if due else 0
        except Exception:  # a bug: logged, retried after the backoff, never fatal
            log.exception("status_round_failed")
            failed = 1
        if due or failed:
            failures = failures + 1 if failed else 0
            retry_at = trio.current_time() + backoff.delay(failures) if failures else float("inf")
