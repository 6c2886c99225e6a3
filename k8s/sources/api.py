"""The seam between the Kubernetes source and the API server, with no asyncio in it: the
requests the source makes (:class:`Api`, :class:`Watch`) and their errors. The one
implementation over HTTP is :class:`k8s.sources.kubernetes.ClientApi`; tests answer in
memory."""

from __future__ import annotations

from typing import Protocol

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


class Api(Protocol):
    """The requests the source makes; :class:`k8s.sources.kubernetes.ClientApi` makes
    them over HTTP."""

    async def list_page(self, path: str, request: ListRequest) -> tuple[list[Raw], str, str]:
        """A LIST page's items, its resourceVersion and its continue token ("" if last);
        raises :class:`Gone` on 410, :class:`RequestFailed` or a network error else."""
        ...

    async def open_watch(self, path: str, resource_version: str, seconds: int) -> Watch: ...


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
