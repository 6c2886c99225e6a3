"""The Kubernetes API source: ``ambit controlplane --source kubernetes``.

The thin I/O around :class:`k8s.sources.watch.ResourceWatch`: one task per API
resource (:data:`k8s.sources.resources.RESOURCES`) carries out the requests its machine
asks for (a paged LIST, a WATCH with bookmarks), hands it the answers, and feeds the
changes to the store through :class:`k8s.sources.feed.StoreFeed`, the same store and
translation as local mode and the files source. Nothing is published before every kind
is listed once (the store's gate).

Resources served by CRDs (ambit's and Istio's policies, Gateway API) follow the
CustomResourceDefinitions, watched the same way: until the CRDs are listed their kinds
are not; a resource whose CRD is absent is listed as empty, and is started when its CRD
is established (istiod's delayed informers), stopped (its objects deleted) when it goes.
So ambit runs on a cluster without Gateway API.

Credentials: a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG`` or
``~/.kube/config``), or in a pod (``KUBERNETES_SERVICE_HOST`` set, no kubeconfig
given) the service account's token, CA and namespace files; the token file is read
again whenever it changes (the kubelet rotates projected tokens).

This is the only module that imports kubernetes-asyncio or trio-asyncio: the rest of
ambit is Trio. asyncio runs inside Trio through ``trio_asyncio.open_loop``; every
request is one ``aio_as_trio`` call. Requests that fail (refused, 5xx, 403...) are
retried after :class:`mesh.backoff.Backoff`'s delays; each failure streak is logged
once (``kube_request_failed``, with a hint) and its end once (``kube_request_recovered``).

:func:`open_kube_api` opens the loop and the client once for the whole control plane:
the source's requests and the CA's (:meth:`ClientApi.request`, the seam
:class:`ca.kube.KubeRequests`: TokenReviews, the CA's Secrets) share them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import aiohttp
import structlog
import trio
import trio_asyncio
import yaml
from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio import config as kube_config

from ca.kube import ApiUnavailable
from k8s.sources.api import Api, Gone, KubeSourceError, RequestFailed, Watch, hint
from k8s.sources.feed import StoreFeed
from k8s.sources.resources import (
    CRD_RESOURCE,
    Resource,
    chosen_version,
    resources_of,
    served_versions,
)
from k8s.sources.strip import stripper
from k8s.sources.watch import ListRequest, Phase, Raw, ResourceWatch, Step, WatchRequest
from k8s.store import ObjectStore
from mesh.backoff import Backoff

log = structlog.get_logger("k8s.sources.kubernetes")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_TIMEOUT: Final = 60.0  # seconds for one page
CONNECT_TIMEOUT: Final = 10.0
CLOSE_SECONDS: Final = 5.0  # for the client's connections to close at the end
CLOSE_GRACE: Final = 0.25  # aiohttp's advice for TLS connections to finish closing
WATCH_READ_MARGIN: Final = 60.0  # beyond timeoutSeconds, before a silent watch is cut
_NETWORK_ERRORS: Final = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)
After: TypeAlias = Callable[[Step], None] | None


__all__ = ["Api", "Gone", "KubeSourceError", "RequestFailed", "Watch"]  # from .api


@dataclass(frozen=True)
class KubeSourceConfig:
    kubeconfig: Path | None = None  # None: in-cluster if in a pod, else the default
    context: str | None = None
    watch_timeout: int = 300  # each watch asks for timeoutSeconds in [this, twice this)
    page_limit: int = 500
    service_account_dir: Path = SERVICE_ACCOUNT_DIR  # in-cluster: token and ca.crt
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))


class TokenFile:
    """The service account's token, read again whenever the file changes (the kubelet
    rotates projected tokens, swapping the file): a kubernetes-asyncio
    ``refresh_api_key_hook``, called before each request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def refresh(self, configuration: kube_client.Configuration, *_args: object) -> None:
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature == self._seen:
                return
            token = self.path.read_text().strip()
        except OSError as exc:
            log.warning("kube_token_unreadable", path=str(self.path), reason=exc.strerror)
            return
        self._seen = signature
        configuration.api_key["BearerToken"] = f"Bearer {token}"


def in_cluster(config: KubeSourceConfig) -> bool:
    return config.kubeconfig is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


async def configure(config: KubeSourceConfig) -> kube_client.ApiClient:
    """(asyncio) The API client, from in-cluster credentials or a kubeconfig."""
    configuration = kube_client.Configuration()
    if config.kubeconfig is not None and not config.kubeconfig.is_file():
        raise KubeSourceError(f"the kubeconfig {config.kubeconfig} does not exist")
    try:
        if in_cluster(config):
            token_file = config.service_account_dir / "token"
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration,
                token_filename=str(token_file),
                cert_filename=str(config.service_account_dir / "ca.crt"),
                try_refresh_token=False,
            )
            configuration.refresh_api_key_hook = TokenFile(token_file).refresh
        else:
            await kube_config.load_kube_config(
                config_file=str(config.kubeconfig) if config.kubeconfig else None,
                context=config.context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (kube_config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        where = "in-cluster credentials" if in_cluster(config) else "the kubeconfig"
        raise KubeSourceError(
            f"cannot read {where}: {exc} (give --kubeconfig PATH, or run in a pod with a"
            " service account)"
        ) from exc
    return kube_client.ApiClient(configuration=configuration)


class _ResponseWatch:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def next_event(self) -> tuple[str, Raw] | None:
        line = await trio_asyncio.aio_as_trio(self._response.content.readline)()
        if not line:
            return None
        event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError(f"not a watch event: {line[:200]!r}")
        return str(event.get("type")), event["object"]

    def close(self) -> None:
        self._response.close()


class ClientApi:
    """Requests to the API server through kubernetes-asyncio, each one ``aio_as_trio``
    call."""

    def __init__(self, client: kube_client.ApiClient) -> None:
        self._client = client

    async def _open(
        self, path: str, query: list[tuple[str, str]], limits: float | aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await trio_asyncio.aio_as_trio(self._client.call_api)(
            path, "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _request_timeout=limits,
        )  # fmt: skip
        if response.status == 410:
            response.close()
            raise Gone()
        if response.status != 200:
            body = await trio_asyncio.aio_as_trio(response.text)()
            response.close()
            raise RequestFailed(f"HTTP {response.status}: {body[:300]}", hint(response.status))
        return response

    async def list_page(self, path: str, request: ListRequest) -> tuple[list[Raw], str, str]:
        query = [("limit", str(request.limit))]
        if request.continue_token:
            query.append(("continue", request.continue_token))
        response = await self._open(path, query, LIST_TIMEOUT)
        try:
            body = await trio_asyncio.aio_as_trio(response.json)()
        finally:
            response.close()
        if not isinstance(body, dict):
            raise RequestFailed(f"a LIST answered {type(body).__name__}, not an object")
        meta = body.get("metadata") or {}
        return (
            [item for item in body.get("items") or [] if isinstance(item, dict)],
            str(meta.get("resourceVersion") or ""),
            str(meta.get("continue") or ""),
        )

    async def open_watch(self, path: str, resource_version: str, seconds: int) -> Watch:
        query = [
            ("watch", "1"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(seconds)),
        ]
        timeout = aiohttp.ClientTimeout(
            connect=CONNECT_TIMEOUT, sock_read=seconds + WATCH_READ_MARGIN
        )
        return _ResponseWatch(await self._open(path, query, timeout))

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One JSON request (the CA's: TokenReviews, its Secrets): the status and the
        decoded body, whatever the status; :class:`ca.kube.ApiUnavailable` without one."""
        try:
            response: aiohttp.ClientResponse = await trio_asyncio.aio_as_trio(
                self._client.call_api
            )(
                path, method, body=body, header_params={
                    "Accept": "application/json", "Content-Type": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=LIST_TIMEOUT,
            )  # fmt: skip
            try:
                text = await trio_asyncio.aio_as_trio(response.text)()
            finally:
                response.close()
        except _NETWORK_ERRORS as exc:
            raise ApiUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        try:
            decoded = json.loads(text) if text else {}
        except ValueError:
            decoded = {"message": text[:300]}
        return response.status, decoded if isinstance(decoded, dict) else {}


@asynccontextmanager
async def open_kube_api(config: KubeSourceConfig) -> AsyncIterator[ClientApi]:
    """The API server's client for this process, inside an asyncio loop run by Trio; both
    closed on exit. Raises :class:`KubeSourceError` without usable credentials."""
    async with trio_asyncio.open_loop():
        client = await trio_asyncio.aio_as_trio(configure)(config)
        try:
            yield ClientApi(client)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                await trio_asyncio.aio_as_trio(client.close)()
                # Closed transports finish closing in the loop's next passes (TLS shuts
                # down): let it run them before it closes, or their sockets leak.
                await trio_asyncio.aio_as_trio(asyncio.sleep)(CLOSE_GRACE)


class KubernetesSource:
    """Feeds an :class:`ObjectStore` from the API server; :meth:`run` until cancelled."""

    def __init__(self, config: KubeSourceConfig | None = None) -> None:
        self.config = config or KubeSourceConfig()
        self._feed: StoreFeed | None = None
        self._api: Api | None = None
        self._machines: dict[Resource, ResourceWatch] = {}
        self._versions: dict[Resource, str | None] = {}
        self._scopes: dict[Resource, trio.CancelScope] = {}

    @property
    def errors(self) -> list[str]:
        """Objects the API server holds that ambit refuses, each with why."""
        return self._feed.errors if self._feed is not None else []

    async def run(
        self,
        store: ObjectStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Watch every resource of the store's kinds; ``task_status.started()`` once the
        watches are started (not listed: the store's gate says when they are)."""
        async with open_kube_api(self.config) as api:
            await self.serve(api, store, task_status=task_status)

    async def serve(
        self,
        api: Api,
        store: ObjectStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`run` with the requests made by ``api``."""
        self._api = api
        resources = resources_of(store.kinds)
        self._feed = StoreFeed(store, resources)
        async with trio.open_nursery() as nursery:
            for resource in resources:
                machine = self._machine(resource)
                if not resource.crd:
                    self._start(nursery, resource, resource.versions[0], machine.start())
            if any(r.crd for r in resources):
                crds = ResourceWatch(
                    strip=stripper(CRD_RESOURCE.kind, "apiextensions.k8s.io/v1"),
                    limit=self.config.page_limit,
                )
                nursery.start_soon(self._serve_crds, nursery, crds)
            log.info("kube_source_started", resources=[r.name for r in resources])
            task_status.started()

    def _machine(self, resource: Resource) -> ResourceWatch:
        machine = ResourceWatch(limit=self.config.page_limit)
        self._machines[resource] = machine
        return machine

    def _start(self, nursery: trio.Nursery, resource: Resource, version: str, first: Step) -> None:
        machine = self._machines[resource]
        machine.strip = stripper(resource.kind, resource.api_version(version))
        scope = trio.CancelScope()
        self._scopes[resource] = scope
        self._versions[resource] = version
        nursery.start_soon(self._serve_resource, scope, resource, resource.path(version), first)

    # --- The CRDs: which resources are served --------------------------------------------

    async def _serve_crds(self, nursery: trio.Nursery, machine: ResourceWatch) -> None:
        path = CRD_RESOURCE.path("v1")

        def changed(step: Step) -> None:
            if machine.listed:
                self._follow_crds(nursery, served_versions(machine.cache.values()))

        await self._drive(CRD_RESOURCE, path, machine, machine.start(), after=changed)

    def _follow_crds(self, nursery: trio.Nursery, served: Mapping[str, tuple[str, ...]]) -> None:
        """Start, stop or move the CRD resources to what the CRDs now serve. Runs without
        a checkpoint, so a moved resource's deletes and its gate closing land together."""
        assert self._feed is not None
        for resource, machine in self._machines.items():
            if not resource.crd:
                continue
            version = chosen_version(resource, served)
            if resource in self._versions and self._versions[resource] == version:
                continue
            old_scope = self._scopes.pop(resource, None)
            if old_scope is not None:
                old_scope.cancel()
            self._versions[resource] = version
            if version is None:
                log.info("kube_resource_absent", resource=resource.name)
                self._feed.apply(resource, machine.absent().changes)
                continue
            if machine.phase not in (Phase.IDLE, Phase.ABSENT):  # served at another version
                self._feed.apply(resource, machine.absent().changes)
            log.info("kube_resource_served", resource=resource.name, version=version)
            self._start(nursery, resource, version, machine.present())

    # --- One resource --------------------------------------------------------------------

    async def _serve_resource(
        self, scope: trio.CancelScope, resource: Resource, path: str, first: Step
    ) -> None:
        with scope:
            await self._drive(resource, path, self._machines[resource], first, scope=scope)

    async def _drive(
        self,
        resource: Resource,
        path: str,
        machine: ResourceWatch,
        step: Step,
        *,
        after: After = None,
        scope: trio.CancelScope | None = None,
    ) -> None:
        """Carry out what ``machine`` asks, feeding its changes, until it asks nothing.
        Once ``scope`` is cancelled (the CRD went or moved: the machine is no longer this
        task's), an answer that was already in is dropped, never fed to the machine."""
        assert self._api is not None
        failures = 0  # in a row: requests that failed, watches that ended in an error

        def superseded() -> bool:
            return scope is not None and scope.cancel_called

        while True:
            self._apply(resource, step, after)
            if step.request is None:
                return
            if failures:
                await trio.sleep(self.config.backoff.delay(failures))
            try:
                if isinstance(step.request, ListRequest):
                    items, rv, token = await self._api.list_page(path, step.request)
                    if superseded():
                        return
                    step = machine.list_page(items, rv, token or None)
                    if not token:
                        log.info("kube_listed", resource=resource.name, objects=len(machine.cache),
                                 relists=machine.relists)  # fmt: skip
                else:
                    step = await self._watch(resource, path, machine, step.request, after, scope)
                    if superseded():
                        return
            except Gone:
                if superseded():
                    return
                log.info("kube_resource_version_expired", resource=resource.name)
                step = machine.gone()
            except (RequestFailed, *_NETWORK_ERRORS) as exc:
                if superseded():
                    return
                failures += 1
                if failures == 1:
                    log.warning(
                        "kube_request_failed", resource=resource.name, reason=str(exc),
                        hint=getattr(exc, "hint", "") or "is the API server reachable?",
                    )  # fmt: skip
                step = Step((), machine.request)
                continue
            if step.backoff:
                failures += 1
            elif failures:
                log.info("kube_request_recovered", resource=resource.name, failures=failures)
                failures = 0

    def _apply(self, resource: Resource, step: Step, after: After) -> None:
        if resource != CRD_RESOURCE:
            assert self._feed is not None
            self._feed.apply(resource, step.changes)
        if after is not None and step.changes:
            after(step)

    async def _watch(
        self,
        resource: Resource,
        path: str,
        machine: ResourceWatch,
        request: WatchRequest,
        after: After,
        scope: trio.CancelScope | None,
    ) -> Step:
        """One watch: events fed until it ends (the server's timeout: resume), or the
        machine asks for something else (410: a LIST; an ERROR: backoff)."""
        assert self._api is not None
        seconds = random.randrange(self.config.watch_timeout, 2 * self.config.watch_timeout)
        watch = await self._api.open_watch(path, request.resource_version, seconds)
        try:
            while True:
                try:
                    event = await watch.next_event()
                except _NETWORK_ERRORS as exc:
                    if scope is not None and scope.cancel_called:
                        return Step()
                    log.info("kube_watch_cut", resource=resource.name, reason=str(exc))
                    return Step((), machine.watch_ended().request, backoff=True)
                if scope is not None and scope.cancel_called:
                    return Step()
                if event is None:
                    return machine.watch_ended()
                step = machine.event(*event)
                if not isinstance(step.request, WatchRequest) or step.backoff:
                    if step.backoff:
                        log.warning("kube_watch_error", resource=resource.name, error=event[1])
                    return step
                self._apply(resource, step, after)
        finally:
            watch.close()
