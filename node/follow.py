"""Follow one API resource (a LIST, then a WATCH with bookmarks, again after a 410) with
:class:`k8s.sources.watch.ResourceWatch`, calling back with each batch of changes.

The node agent follows two resources (its node's pods, the namespaces); the control
plane's source (:mod:`k8s.sources.driver`) feeds a store through the same machine. A
path may carry a selector (``/api/v1/pods?fieldSelector=spec.nodeName%3Dn1``)."""

from __future__ import annotations

import random
from collections.abc import Callable

import structlog
import trio

from k8s.sources.api import Api, Gone, RequestFailed
from k8s.sources.kubernetes import NETWORK_ERRORS
from k8s.sources.watch import Change, ListRequest, ResourceWatch, Step, WatchRequest
from mesh.backoff import Backoff

log = structlog.get_logger("node.follow")

OnChange = Callable[[ResourceWatch, tuple[Change, ...]], None]


async def follow(
    api: Api,
    path: str,
    on_change: OnChange,
    *,
    name: str,
    backoff: Backoff | None = None,
    watch_timeout: int = 300,
) -> None:
    """Keep ``on_change`` told of ``path``'s objects until cancelled. Failures are retried
    with ``backoff``; each streak is logged once, and its end once."""
    backoff = backoff or Backoff(initial=0.5, maximum=30.0)
    machine = ResourceWatch()
    step = machine.start()
    failures = 0
    while True:
        if step.changes:
            on_change(machine, step.changes)
        if step.request is None:
            return
        if failures:
            await trio.sleep(backoff.delay(failures))
        try:
            if isinstance(step.request, ListRequest):
                items, rv, token = await api.list_page(path, step.request)
                step = machine.list_page(items, rv, token or None)
            else:
                step = await _watch(api, path, machine, step.request, on_change, watch_timeout)
        except Gone:
            step = machine.gone()
        except (RequestFailed, *NETWORK_ERRORS) as exc:
            failures += 1
            if failures == 1:
                hint = getattr(exc, "hint", "") or "is the API server reachable?"
                log.warning("kube_request_failed", resource=name, reason=str(exc), hint=hint)
            step = Step((), machine.request)
            continue
        if step.backoff:
            failures += 1
        elif failures:
            log.info("kube_request_recovered", resource=name, failures=failures)
            failures = 0


async def _watch(
    api: Api,
    path: str,
    machine: ResourceWatch,
    request: WatchRequest,
    on_change: OnChange,
    seconds: int,
) -> Step:
    rv = request.resource_version
    watch = await api.open_watch(path, rv, random.randrange(seconds, 2 * seconds))
    try:
        while True:
            try:
                event = await watch.next_event()
            except NETWORK_ERRORS:
                return Step((), machine.watch_ended().request, backoff=True)
            if event is None:
                return machine.watch_ended()
            step = machine.event(*event)
            if not isinstance(step.request, WatchRequest) or step.backoff:
                return step
            if step.changes:
                on_change(machine, step.changes)
    finally:
        watch.close()
