"""The seam between the Kubernetes source's Trio loop and its HTTP requests: the
:class:`Api` and :class:`Watch` protocols (``k8s.sources.kubernetes.ClientApi`` makes
the requests through kubernetes-asyncio; tests answer them in memory or wrap the real
one), the errors a request ends in with the hint an operator gets, and the per-resource
counters the source reports (:class:`ResourceStatistics`). No I/O here, and no asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from k8s.sources.watch import ListRequest, Raw


class KubeSourceError(Exception):
    """The source cannot start: no usable kubeconfig or in-cluster credentials."""


class Gone(Exception):
    """410 Gone: the resourceVersion (or the continue token) has expired."""


class RequestFailed(Exception):
    """A request failed; ``hint`` says what an operator may do about it."""

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.hint = hint


class Watch(Protocol):
    """One open watch: its events in order, then None at its end."""

    async def next_event(self) -> tuple[str, Raw] | None: ...

    def close(self) -> None: ...


class Requests(Protocol):
    """One JSON request with the control plane's credentials (``ClientApi.request``): the
    status and the decoded body, whatever the status."""

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]: ...


APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"  # JSON is YAML


def namespace_going(status: int, body: Mapping[str, Any]) -> bool:
    """The request's namespace is being deleted (403: the API server refuses new content
    in it) or gone (404 naming a namespace): nothing to write there, and nothing wrong."""
    message = str(body.get("message") or "")
    return (status == 403 and "being terminated" in message) or (
        status == 404 and "namespaces" in message
    )


async def server_side_apply(
    api: Requests, path: str, document: Mapping[str, Any], *, field_manager: str
) -> tuple[int, dict[str, Any]]:
    """Server-Side Apply of ``document`` at ``path`` (an object's path, or its
    ``/status``), taking ownership of its fields from other managers (``force``)."""
    return await api.request(
        "PATCH", path, document, content_type=APPLY_CONTENT_TYPE,
        query={"fieldManager": field_manager, "force": "true"},
    )  # fmt: skip


class Api(Protocol):
    """The requests the source makes; ``k8s.sources.kubernetes.ClientApi`` makes them over
    HTTP."""

    async def list_page(self, path: str, request: ListRequest) -> tuple[list[Raw], str, str]:
        """A LIST page's items, its resourceVersion and its continue token ("" if last);
        raises :class:`Gone` on 410, :class:`RequestFailed` or a network error else."""
        ...

    async def open_watch(self, path: str, resource_version: str, seconds: int) -> Watch: ...


@dataclass(frozen=True)
class ResourceStatistics:
    """One resource's watch as ``KubernetesSource.statistics()`` reports it."""

    phase: str  # the machine's: idle, listing, watching, absent (its CRD is not installed)
    listed: bool
    lists: int = 0  # complete lists: the first, then each re-list
    watches: int = 0  # watches opened
    watch_ends: int = 0  # watches the server ended (timeoutSeconds), each resumed, no re-list
    expired: int = 0  # 410 Gone (the resourceVersion compacted away): a re-list follows
    failures: int = 0  # requests that failed and were retried, watches cut by an error


@dataclass
class Counts:
    """The mutable counters behind :class:`ResourceStatistics`."""

    lists: int = 0
    watches: int = 0
    watch_ends: int = 0
    expired: int = 0
    failures: int = 0


def hint(status: int) -> str:
    """What an operator may do about a failed LIST or WATCH answered with ``status``."""
    if status in (401, 403):
        return (
            "may the control plane's service account list and watch this resource?"
            " (its ClusterRole needs get, list and watch)"
        )
    if status == 404:
        return "is the resource served? (for a CRD, it may have just been removed)"
    return "the API server may be overloaded or restarting; retrying"
