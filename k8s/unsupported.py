"""Istio's kinds that ambit does not implement, found on the cluster and reported, never
silently ignored.

ambit reads Istio's ``security.istio.io`` AuthorizationPolicy, PeerAuthentication and
RequestAuthentication, and ``networking.istio.io`` DestinationRule
(:data:`k8s.sources.resources.RESOURCES`). Every other kind of Istio's groups that
describe traffic (:data:`ISTIO_GROUPS`: VirtualService, ServiceEntry, Sidecar,
EnvoyFilter, Istio's Gateway, Telemetry, WasmPlugin...) is ignored: the traffic rules
such an object describes are not applied.
Which of them exist is read from the cluster's CustomResourceDefinitions
(:func:`unsupported_kinds`, pure), then each kind's objects are listed
(:func:`find_unsupported`).

Two users: ``ambit check`` (a warning per kind, with a count and some names) and the
control plane, through :func:`report_unsupported`: once the API is open it logs one
``istio_kind_ignored`` warning per kind present, then looks again every ``period``
(10 minutes) and logs again only when what it found changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
import trio

from ca.kube import ApiUnavailable
from k8s.istio_kinds import IGNORED_HINT, ISTIO_GROUPS
from k8s.sources.api import Requests
from k8s.sources.resources import RESOURCES

log = structlog.get_logger("k8s.unsupported")

CRDS_PATH: Final = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PAGE: Final = 500
MAX_PAGES: Final = 200  # 100,000 objects of one kind: more is not counted
NAMES_SHOWN: Final = 5
REPORT_PERIOD: Final = 600.0
EVENT_IGNORED: Final = "istio_kind_ignored"
EVENT_NONE_LEFT: Final = "istio_kinds_ignored_none"
EVENT_UNAVAILABLE: Final = "istio_kinds_unavailable"
# The kinds people most often carry over from Istio, listed first.
FIRST: Final = ("VirtualService", "ServiceEntry", "Gateway", "Sidecar")

Json = dict[str, Any]


class ListFailed(Exception):
    """The API server answered a LIST with an error status; ``hint`` says what to check."""

    def __init__(self, path: str, status: int, message: str) -> None:
        self.status = status
        self.hint = "may these credentials list it?" if status in (401, 403) else "retry later"
        super().__init__(f"GET {path} answered HTTP {status}: {message} ({self.hint})")


# What it asks of the API server: k8s.sources.api.Requests (ClientApi makes them).


@dataclass(frozen=True, order=True)
class IstioKind:
    """One kind of Istio's groups ambit does not implement, as its CRD serves it."""

    group: str
    kind: str
    plural: str
    version: str  # the CRD's storage version (else its first served one)
    namespaced: bool

    def path(self) -> str:
        return f"/apis/{self.group}/{self.version}/{self.plural}"

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.group}"


@dataclass(frozen=True)
class Found:
    """The objects of one ignored kind: how many, and their names (``namespace/name``,
    sorted; all of them up to what was listed)."""

    kind: IstioKind
    names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.names)

    def shown(self, limit: int = NAMES_SHOWN) -> str:
        """``3 (a/x, a/y, b/z)``, or ``12 (a/x, ... and 7 more)``."""
        more = f", and {self.count - limit} more" if self.count > limit else ""
        return f"{self.count} ({', '.join(self.names[:limit])}{more})"


def _supported() -> frozenset[tuple[str, str]]:
    return frozenset((r.group, r.plural) for r in RESOURCES)


def unsupported_kinds(crds: Iterable[Mapping[str, Any]]) -> list[IstioKind]:
    """The kinds of :data:`ISTIO_GROUPS` among ``crds`` (CustomResourceDefinitions as the API
    server lists them) that ambit does not read, in :data:`FIRST`'s order, then by name."""
    supported = _supported()
    out: list[IstioKind] = []
    for crd in crds:
        spec = crd.get("spec")
        if not isinstance(spec, Mapping):
            continue
        group, names = str(spec.get("group") or ""), spec.get("names") or {}
        plural = str(names.get("plural") or "")
        if group not in ISTIO_GROUPS or not plural or (group, plural) in supported:
            continue
        versions = [v for v in spec.get("versions") or [] if isinstance(v, Mapping)]
        served = [v for v in versions if v.get("served") is True]
        if not served:
            continue
        stored = next((v for v in served if v.get("storage") is True), served[0])
        kind = str(names.get("kind") or plural)
        namespaced = spec.get("scope") != "Cluster"
        out.append(IstioKind(group, kind, plural, str(stored.get("name")), namespaced))

    def order(k: IstioKind) -> tuple[int, str, str]:
        first = FIRST.index(k.kind) if k.kind in FIRST else len(FIRST)
        return first, k.kind, k.group

    return sorted(out, key=order)


async def list_all(
    api: Requests, path: str, *, query: Mapping[str, str] | None = None
) -> list[Json]:
    """Every item of a collection, page by page (at most :data:`MAX_PAGES`); raises
    :class:`ListFailed` for an answer other than 200, :class:`ca.kube.ApiUnavailable`
    for none."""
    items: list[Json] = []
    token = ""
    for _ in range(MAX_PAGES):
        params = {**(query or {}), "limit": str(PAGE)}
        if token:
            params["continue"] = token
        status, body = await api.request("GET", path, query=params)
        if status != 200:
            raise ListFailed(path, status, str(body.get("message", "")))
        items.extend(i for i in body.get("items") or [] if isinstance(i, dict))
        token = str((body.get("metadata") or {}).get("continue") or "")
        if not token:
            break
    return items


def _key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), str(meta.get("name") or "?")
    return f"{namespace}/{name}" if namespace else name


async def find_unsupported(
    api: Requests, crds: Iterable[Mapping[str, Any]] | None = None
) -> tuple[Found, ...]:
    """The objects of each ignored Istio kind present on the cluster (kinds without any
    object are left out). ``crds``: the cluster's CRDs when already listed."""
    if crds is None:
        crds = await list_all(api, CRDS_PATH)
    found: list[Found] = []
    for kind in unsupported_kinds(crds):
        try:
            items = await list_all(api, kind.path())
        except ListFailed as error:
            if error.status == 404:  # the CRD went away meanwhile
                continue
            raise
        if items:
            found.append(Found(kind, tuple(sorted(_key(i) for i in items))))
    return tuple(found)


def _log(found: tuple[Found, ...], before: tuple[Found, ...] | None) -> None:
    for each in found:
        log.warning(
            EVENT_IGNORED, kind=each.kind.kind, group=each.kind.group, count=each.count,
            names=list(each.names[:NAMES_SHOWN]), hint=IGNORED_HINT,
        )  # fmt: skip
    if not found and before:
        log.info(EVENT_NONE_LEFT)


async def report_unsupported(
    api: Requests,
    *,
    period: float = REPORT_PERIOD,
    task_status: trio.TaskStatus[tuple[Found, ...]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Log the ignored Istio objects now, then every ``period`` seconds when they
    changed; runs until cancelled. ``task_status.started`` with the first finding (an
    empty tuple when the API server could not be asked: that is logged once per streak
    of failures, and asked again next period)."""
    last: tuple[Found, ...] | None = None
    failing = False
    started = False
    while True:
        try:
            found = await find_unsupported(api)
        except (ApiUnavailable, ListFailed) as error:
            if not failing:
                log.warning(EVENT_UNAVAILABLE, reason=str(error), hint=error.hint)
            failing = True
        else:
            failing = False
            if found != last:
                _log(found, last)
                last = found
        if not started:
            task_status.started(last or ())
            started = True
        await trio.sleep(period)
