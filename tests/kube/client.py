"""A small admin client for tests against the real API server: create, get, list,
patch and delete any kind by ``apiVersion`` and ``kind``, on the standard
library (``http.client`` and ``ssl``) with the static admin token.

Every call is one HTTPS request run in a worker thread with a socket timeout, so
a test's ``trio.fail_after`` cancels it; kinds are resolved to their resource
paths through the API server's discovery, asked again when a kind is unknown
(a CRD just installed). Errors are ``KubeError`` with the API's status, reason
and message (``NotFound``, ``Conflict`` for 404 and 409).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import trio

from tests.kube.cluster import Cluster

Obj = dict[str, Any]
T = TypeVar("T")
REQUEST_SECONDS = 30.0
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is YAML)
FIELD_MANAGER = "ambit-tests"


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: AlreadyExists or a conflicting update."""


@dataclass(frozen=True)
class Resource:
    """Where a kind lives: ``/api/v1`` or ``/apis/GROUP/VERSION``, its plural."""

    base: str
    plural: str
    namespaced: bool

    def path(self, name: str | None, namespace: str | None, subresource: str | None) -> str:
        path = self.base
        if self.namespaced:
            if namespace is None:
                raise ValueError(f"{self.plural} are namespaced: give a namespace")
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{self.plural}"
        if name is not None:
            path += f"/{quote(name)}"
        if subresource is not None:
            path += f"/{subresource}"
        return path


def _base(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


@dataclass
class KubeAdmin:
    """The cluster's admin. Methods that talk to the server are async."""

    cluster: Cluster
    _context: ssl.SSLContext = field(init=False, repr=False)
    _resources: dict[tuple[str, str], Resource] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(cafile=str(self.cluster.ca_file))

    def request_sync(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> Obj:
        """One request, blocking, bounded by ``REQUEST_SECONDS``; the decoded body."""
        connection = http.client.HTTPSConnection(
            self.cluster.host, self.cluster.port, context=self._context, timeout=REQUEST_SECONDS
        )
        headers = {
            "Authorization": f"Bearer {token or self.cluster.token}",
            "Accept": "application/json",
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        decoded: Obj = json.loads(raw) if raw else {}
        if response.status >= 400:
            kind = {404: NotFound, 409: Conflict}.get(response.status, KubeError)
            raise kind(
                response.status,
                str(decoded.get("reason", response.reason)),
                str(decoded.get("message", raw[:500])),
            )
        return decoded

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> Obj:
        call = partial(
            self.request_sync, method, path, body, content_type=content_type, token=token
        )
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True)

    async def resource(self, api_version: str, kind: str) -> Resource:
        """The resource path of a kind, from discovery (asked again on a miss)."""
        key = (api_version, kind)
        if key not in self._resources:
            listing = await self.request("GET", _base(api_version))
            for entry in listing.get("resources", []):
                if "/" not in entry["name"]:
                    self._resources[(api_version, entry["kind"])] = Resource(
                        _base(api_version), entry["name"], bool(entry["namespaced"])
                    )
        if key not in self._resources:
            raise NotFound(404, "NotFound", f"no kind {kind} in {api_version}")
        return self._resources[key]

    async def create(
        self, obj: Obj, *, dry_run: bool = False, field_validation: str | None = None
    ) -> Obj:
        """POST ``obj``; ``dry_run``: validated and admitted, not stored;
        ``field_validation``: ``Strict`` refuses unknown fields (kubectl's default)."""
        resource = await self.resource(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace")
        path = resource.path(None, namespace, None) + _query(dry_run, field_validation)
        return await self.request("POST", path, obj)

    async def apply(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Server-side apply (``kubectl apply --server-side --force-conflicts``), with
        strict field validation."""
        resource = await self.resource(obj["apiVersion"], obj["kind"])
        namespace = obj["metadata"].get("namespace")
        path = resource.path(obj["metadata"]["name"], namespace, None)
        query = {"fieldManager": FIELD_MANAGER, "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            query["dryRun"] = "All"
        return await self.request(
            "PATCH", f"{path}?{urlencode(query)}", obj, content_type=APPLY_PATCH
        )

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Obj:
        resource = await self.resource(api_version, kind)
        return await self.request("GET", resource.path(name, namespace, None))

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> list[Obj]:
        resource = await self.resource(api_version, kind)
        path = resource.path(None, namespace, None)
        if label_selector is not None:
            path += "?" + urlencode({"labelSelector": label_selector})
        items: list[Obj] = (await self.request("GET", path))["items"]
        return items

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Obj,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> Obj:
        resource = await self.resource(api_version, kind)
        path = resource.path(name, namespace, subresource)
        return await self.request("PATCH", path, patch, content_type=content_type)

    async def post_subresource(
        self,
        api_version: str,
        kind: str,
        name: str,
        subresource: str,
        body: Obj,
        namespace: str | None = None,
    ) -> Obj:
        """POST to a subresource: a ServiceAccount's ``token``, a Pod's ``binding``."""
        resource = await self.resource(api_version, kind)
        return await self.request("POST", resource.path(name, namespace, subresource), body)

    async def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
    ) -> Obj:
        resource = await self.resource(api_version, kind)
        path = resource.path(name, namespace, None)
        if grace_period_seconds is not None:
            path += "?" + urlencode({"gracePeriodSeconds": grace_period_seconds})
        return await self.request("DELETE", path)


def _query(dry_run: bool, field_validation: str | None) -> str:
    query = {"dryRun": "All"} if dry_run else {}
    if field_validation is not None:
        query["fieldValidation"] = field_validation
    return f"?{urlencode(query)}" if query else ""


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, seconds: float, interval: float = 0.05
) -> T:
    """Ask ``probe`` until it returns something other than None (or False); that
    value. ``trio.TooSlowError`` after ``seconds``."""
    with trio.fail_after(seconds):
        while True:
            value = await probe()
            if value is not None and value is not False:
                return value
            await trio.sleep(interval)


async def gone(admin: KubeAdmin, api_version: str, kind: str, name: str, ns: str | None) -> bool:
    """Whether the object no longer exists (404)."""
    try:
        await admin.get(api_version, kind, name, ns)
    except NotFound:
        return True
    return False
