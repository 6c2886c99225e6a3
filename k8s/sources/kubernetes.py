"""The Kubernetes API client of ``ambit controlplane --source kubernetes``: the requests
its source (:mod:`k8s.sources.driver`) and its CA make, over kubernetes-asyncio.

Resources served by CRDs (ambit's and Istio's policies, Gateway API) follow the
CustomResourceDefinitions (the driver watches them the same way); a resource whose CRD
is absent is listed as empty, so ambit runs on a cluster without Gateway API.

Credentials: a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG`` or
``~/.kube/config``), or in a pod (``KUBERNETES_SERVICE_HOST`` set, no kubeconfig
given) the service account's token, CA and namespace files; the token file is read
again whenever it changes (the kubelet rotates projected tokens).

This is the only module that imports kubernetes-asyncio or trio-asyncio: the rest of
ambit is Trio; the source's loop (:mod:`k8s.sources.driver`) sees requests only through
:class:`k8s.sources.api.Api` and the errors in :data:`NETWORK_ERRORS`. asyncio runs
inside Trio through ``trio_asyncio.open_loop``; every request is one ``aio_as_trio``
call. Requests that fail (refused, 5xx, 403...) are retried after
:class:`mesh.backoff.Backoff`'s delays; each failure streak is logged once
(``kube_request_failed``, with a hint) and its end once (``kube_request_recovered``).

:func:`open_kube_api` opens the loop and the client once for the whole control plane:
the source's requests and the CA's (:meth:`ClientApi.request`, the seam
:class:`ca.kube.KubeRequests`: TokenReviews, the CA's Secrets) share them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Mapping
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
from k8s.sources.api import (
    Api,
    Gone,
    KubeSourceError,
    RequestFailed,
    Watch,
    hint,
)
from k8s.sources.watch import ListRequest, Raw
from mesh.backoff import Backoff

log = structlog.get_logger("k8s.sources.kubernetes")

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_TIMEOUT: Final = 60.0  # seconds for one page
CONNECT_TIMEOUT: Final = 10.0
CLOSE_GRACE: Final = 0.25  # aiohttp's advice for TLS connections to finish closing
WATCH_READ_MARGIN: Final = 60.0  # beyond timeoutSeconds, before a silent watch is cut
CLOSE_TIMEOUT: Final = 5.0  # at the end, for every connection to close
NETWORK_ERRORS: Final = (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)


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


Closing: TypeAlias = set["asyncio.Future[None]"]


def _closed(closing: Closing, future: asyncio.Future[None]) -> None:
    """A connection finished closing: no longer waited for, and its error read (a TLS
    shutdown the server cut short): unread, asyncio reports it as never retrieved, which
    trio-asyncio raises into the process, ending it with exit 1 after a clean drain."""
    closing.discard(future)
    if not future.cancelled():
        future.exception()


class _ResponseWatch:
    def __init__(self, response: aiohttp.ClientResponse, closing: Closing) -> None:
        self._response = response
        self._closing = closing

    async def next_event(self) -> tuple[str, Raw] | None:
        line = await trio_asyncio.aio_as_trio(self._response.content.readline)()
        if not line:
            return None
        event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError(f"not a watch event: {line[:200]!r}")
        return str(event.get("type")), event["object"]

    def close(self) -> None:
        """Close the connection (a watch is never read to its end, so it is not reused);
        its closing finishes later, in the asyncio loop: :meth:`ClientApi.close` waits."""
        connection = self._response.connection
        protocol = connection.protocol if connection is not None else None
        closed = protocol.closed if protocol is not None else None
        self._response.close()
        if closed is not None:
            if not closed.done():
                self._closing.add(closed)
            closed.add_done_callback(functools.partial(_closed, self._closing))


class ClientApi:
    """Requests to the API server through kubernetes-asyncio, each one ``aio_as_trio``
    call."""

    def __init__(self, client: kube_client.ApiClient) -> None:
        self._client = client
        self._closing: Closing = set()  # connections of ended watches, still closing

    @property
    def bearer_token(self) -> str | None:
        """The token the kubeconfig (or the pod's service account) authenticates with;
        None for client certificates or no credentials."""
        configuration = self._client.configuration
        value = configuration.api_key.get("BearerToken") or configuration.api_key.get(
            "authorization"
        )
        if not value:
            return None
        scheme, _, token = str(value).partition(" ")
        return token.strip() if scheme.lower() == "bearer" else str(value).strip()

    async def close(self) -> None:
        """(asyncio) Close the client's connections, and wait until those of ended watches
        are closed too: a loop that stops first leaves their sockets open (the TLS
        shutdown was under way), each a ResourceWarning."""
        await self._client.close()
        if self._closing:
            await asyncio.wait(set(self._closing))

    async def _open(
        self, path: str, query: list[tuple[str, str]], limits: float | aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        # A path may carry its own selectors (``/api/v1/pods?fieldSelector=...``).
        path, _, selectors = path.partition("?")
        query = [*urllib.parse.parse_qsl(selectors), *query]
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
        return _ResponseWatch(await self._open(path, query, timeout), self._closing)

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """One JSON request (TokenReviews, Secrets, Leases, Events, server-side applies):
        the status and the decoded body, whatever the status;
        :class:`ca.kube.ApiUnavailable` without one."""
        try:
            response: aiohttp.ClientResponse = await trio_asyncio.aio_as_trio(
                self._client.call_api
            )(
                path, method, body=body, query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=LIST_TIMEOUT,
            )  # fmt: skip
            try:
                text = await trio_asyncio.aio_as_trio(response.text)()
            finally:
                response.close()
        except NETWORK_ERRORS as exc:
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
        api = ClientApi(await trio_asyncio.aio_as_trio(configure)(config))
        try:
            yield api
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await trio_asyncio.aio_as_trio(api.close)()
                # Other closed transports (the CA's requests) finish closing in the loop's
                # next passes (TLS shuts down): let it run them, or their sockets leak.
                await trio_asyncio.aio_as_trio(asyncio.sleep)(CLOSE_GRACE)
