"""``ambit controlplane``: the control plane as a process of its own.

It loads (or creates) the CA from ``ca_dir`` (with ``--source kubernetes`` and no
``ca_dir``: from Secrets, :mod:`ca.secret_keys`), keeps one :class:`~k8s.store.ObjectStore`
fed by its source (``files``: :class:`k8s.files_source.FilesSource`; ``kubernetes``: the
API server, :class:`k8s.sources.driver.KubernetesSource`), translates and
publishes on every change (changes within ``coalesce`` seconds together), and serves:

- 15012: the CA, node-authorized. With ``--source files``, bearer tokens from
  ``tokens_file``, a JSON object ``{"caller": "token"}``, re-read when it changes: local
  mode adds a node's token before it starts the node's ztunnel, and a waypoint's before
  its pod starts, under ``system:serviceaccount:NS:SA``, which may have only that
  account's identity. With ``--source kubernetes``, service-account tokens reviewed by
  the API server for audience ``ambit-ca`` (:class:`ca.kube.TokenReviewAuthenticator`)
  and decided from the store's pods (:class:`k8s.ca_nodes.KubeNodeAuthorizer`: the
  ztunnel's service account may have the identities of pods on its pod's node, any
  other its own identity only);
- 15010: the config stream (HBONE, mutual TLS). A ztunnel proves its node with the same
  token as at the CA: with ``--source files`` its node's token from ``tokens_file``; with
  ``--source kubernetes`` its pod-bound service-account token, reviewed by the API server,
  whose pod must run on the node it asks for (:func:`k8s.ca_nodes.kube_proxy_authenticator`);
  a waypoint by its certificate, whose service account must name a waypoint Gateway of
  the namespace it asks for;
- 15014: ``/metrics`` (Prometheus; ``pilot_xds`` is Istio's count of connected
  proxies), ``/ready`` (200 once every kind is listed and a snapshot is published),
  ``/debug/syncz`` (each proxy, as istiod lists them: role, view, connection,
  the version sent and the one acknowledged) and ``/debug/graph?window=SECONDS`` (the
  traffic graph from the proxies' own metrics, :mod:`k8s.observer`, which also sets the
  ``ambit.io/LocalReplies`` condition of the objects whose Services had local replies);
- 15016, with ``tap_tokens_file`` (or on Kubernetes, the callers' own credentials asked of
  the API server, :mod:`k8s.tap_access`): ``ambit tap``'s API (:mod:`k8s.tap_server`), HTTPS with
  a bearer token of that file (same format as ``tokens_file``, re-read on change), and
  with the same token ``/v1/snapshot``, the published model (``ambit why``'s), and
  ``ambit dashboard``'s pages (:mod:`k8s.dashboard`).

With ``--source kubernetes`` the replicas elect a leader on a Lease (:mod:`k8s.leader`;
``lease``, None: this one always leads): only the leader runs :func:`leader_tasks` (the
status writer, :mod:`k8s.status_writer`: conditions to each object's ``/status``, and
Events); every replica serves the CA and the config stream.

Each object's conditions, and the documents the source refused, go to
``status_file`` (JSON, written atomically) after every translation: that is how
local mode's ``ambit get -o yaml`` shows them without sharing memory with this
process. SIGTERM or SIGINT drains it (:meth:`ControlPlane.drain`: not ready at once, no
new connection, GOAWAY and the end of every config stream, requests in flight finish
for up to ``drain_seconds``) and it exits 0.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ca import CaConfig, CertificateAuthority
from ca.kube import CA_AUDIENCE, ApiUnavailable, KubeRequests, TokenReviewAuthenticator
from ca.secret_keys import CaSecrets, load_ca_from_secrets
from k8s.ca_nodes import (
    DEFAULT_ZTUNNEL_ACCOUNT,
    KubeNodeAuthorizer,
    ServiceAccountRef,
    kube_proxy_authenticator,
)
from k8s.controlplane import Access, ControlPlane
from k8s.dashboard import dashboard_pages
from k8s.events import EventRecorder
from k8s.files_source import FilesSource
from k8s.kube_deployer import run_deployer
from k8s.leader import (
    Leadership,
    LeaderTask,
    LeaseConfig,
    default_identity,
    run_when_leader,
)
from k8s.observer import ObserverConfig, observing
from k8s.root_cert import run_root_cert_publisher
from k8s.status_writer import run_status_writer
from k8s.store import ObjectStore
from k8s.token_files import TokensFile, serve_tap_api, watch_tokens
from k8s.unsupported import report_unsupported
from k8s.waypoint_kube import DEFAULT_IMAGE as DEFAULT_WAYPOINT_IMAGE
from k8s.waypoint_kube import cluster_settings
from mesh.admin import json_response, metrics_route, ready_route, serve_http
from mesh.backoff import Backoff
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_METRICS_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
    TAP_PORT,
)
from mesh.files import write_atomically
from mesh.http import Request, Response
from mesh.model import MeshSnapshot

if TYPE_CHECKING:
    from k8s.sources.driver import KubernetesSource
    from k8s.sources.kubernetes import ClientApi, KubeSourceConfig

log = structlog.get_logger("k8s.controlplane_process")


@dataclass(frozen=True)
class ControlPlaneConfig:
    files: tuple[Path, ...]
    ca_dir: Path | None  # None: --source kubernetes keeps the CA's keys in Secrets
    source: Literal["files", "kubernetes"] = "files"
    kubeconfig: Path | None = None  # --source kubernetes: None is in-cluster or the default
    ca_secrets: CaSecrets = field(default_factory=CaSecrets)  # kubernetes, no ca_dir
    ztunnel_account: ServiceAccountRef = DEFAULT_ZTUNNEL_ACCOUNT  # may ask for its node's pods
    ca_audience: str = CA_AUDIENCE  # what the CA's TokenReviews ask tokens to be for
    tokens_file: Path | None = None
    status_file: Path | None = None
    host: str = "0.0.0.0"
    ca_port: int = CONTROL_PLANE_PORT
    config_port: int = CONFIG_STREAM_PORT
    metrics_port: int = CONTROL_PLANE_METRICS_PORT
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    coalesce: float = 0.1  # changes this close together are translated once
    poll: float = 0.2  # how often watched files are checked
    drain_seconds: float = 5.0  # after SIGTERM, for requests and connections in flight
    lease: LeaseConfig | None = field(default_factory=LeaseConfig)  # None: always leads
    waypoint_image: str = DEFAULT_WAYPOINT_IMAGE  # kubernetes: what the waypoint deployer runs
    tap_tokens_file: Path | None = None  # who may tap: {"caller": "token"}; None: no tap API
    tap_port: int = TAP_PORT
    tap_kubernetes: bool = False  # the tap API for callers the API server authorizes
    observer: ObserverConfig = field(default_factory=ObserverConfig)  # the proxies' metrics


@dataclass
class Ports:
    ca: int
    config: int
    metrics: int
    tap: int | None = None  # None: no tap API (no tap_tokens_file)


@dataclass
class _State:
    plane: ControlPlane
    store: ObjectStore
    source: FilesSource | KubernetesSource
    published: bool = False
    refused: list[str] = field(default_factory=list)
    leadership: Leadership = field(default_factory=Leadership)
    status_lock: trio.Lock = field(default_factory=trio.Lock)  # one status file write at once


class _Collector(Collector):
    """Read at scrape time: nothing on the config path counts anything."""

    def __init__(self, state: _State) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        plane, store = self._state.plane, self._state.store
        xds = GaugeMetricFamily("pilot_xds", "Proxies connected to the config stream")
        xds.add_metric([], sum(1 for n in plane.config.proxies() if n.connected))
        yield xds
        version = GaugeMetricFamily("ambit_config_version", "Version of the published config")
        version.add_metric([], plane.snapshot.version if plane.snapshot else 0)
        yield version
        objects = GaugeMetricFamily("ambit_config_objects", "Objects in the store", labels=["kind"])
        for kind in store.kinds:
            objects.add_metric([kind], len(store.entries(kind)))
        yield objects
        refused = GaugeMetricFamily(
            "ambit_config_refused_documents", "Documents the source refused (see the status)"
        )
        refused.add_metric([], len(self._state.source.errors))
        yield refused
        problems = GaugeMetricFamily(
            "ambit_config_object_problems", "Objects that do not take effect as written"
        )
        translation = plane.translation
        problems.add_metric([], len(translation.problems) if translation else 0)
        yield problems
        leader = GaugeMetricFamily(
            "ambit_controlplane_leader", "1 while this replica leads (writes status)"
        )
        leader.add_metric([], 1 if self._state.leadership.leading else 0)
        yield leader


def status_json(state: _State) -> dict[str, Any]:
    """What the status file holds: each object's conditions (by ``Kind/namespace/name``,
    with its uid) and the documents the source refused."""
    objects = {}
    for entry in state.store.entries():
        if entry.conditions:
            kind, namespace, name = entry.ref
            objects[f"{kind}/{namespace}/{name}"] = {
                "uid": entry.obj.uid,
                "conditions": [c.to_json() for c in entry.conditions],
            }
    snapshot = state.plane.snapshot
    return {
        "version": snapshot.version if snapshot else None,
        "objects": objects,
        "refused": list(state.source.errors),
    }


async def _sync(state: _State, config: ControlPlaneConfig) -> None:
    """Publish after every change of the store; write the status file after each."""

    async def after(snapshot: MeshSnapshot | None) -> None:
        state.published = state.published or snapshot is not None
        await _write_status(state, config)

    await state.plane.serve_store(state.store, window=config.coalesce, after=after)


async def _write_status(state: _State, config: ControlPlaneConfig) -> None:
    if config.status_file is not None:
        async with state.status_lock:  # computed under the lock: the last write is the newest
            data = json.dumps(status_json(state), indent=1).encode()
            await trio.to_thread.run_sync(
                partial(write_atomically, config.status_file, data, sync=False)
            )


def _kube_config(config: ControlPlaneConfig) -> KubeSourceConfig:
    # Imported here: only this source needs asyncio, aiohttp and kubernetes-asyncio.
    from k8s.sources.kubernetes import KubeSourceConfig

    return KubeSourceConfig(kubeconfig=config.kubeconfig)


def _source(config: ControlPlaneConfig) -> FilesSource | KubernetesSource:
    if config.source == "kubernetes":
        from k8s.sources.driver import KubernetesSource

        return KubernetesSource(_kube_config(config))
    return FilesSource(config.files)


async def _run_source(
    state: _State,
    config: ControlPlaneConfig,
    api: ClientApi | None,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    if isinstance(state.source, FilesSource):
        await state.source.run(state.store, poll=config.poll, task_status=task_status)
    else:
        assert api is not None
        await state.source.serve(api, state.store, task_status=task_status)


@asynccontextmanager
async def _open_api(config: ControlPlaneConfig) -> AsyncIterator[ClientApi | None]:
    """The API server's client that the source and the CA share, or None (files)."""
    if config.source != "kubernetes":
        yield None
        return
    from k8s.sources.kubernetes import open_kube_api

    async with open_kube_api(_kube_config(config)) as api:
        yield api


async def _authority(
    config: ControlPlaneConfig, api: KubeRequests | None, backoff: Backoff
) -> CertificateAuthority:
    """The CA: from ``ca_dir`` (made there if absent), else from the Secrets, asked again
    after ``backoff``'s delays while the API server cannot be asked (logged once)."""
    ca_config = CaConfig(trust_domain=config.trust_domain)
    directory = config.ca_dir
    if directory is not None or api is None:
        if directory is None:
            raise ValueError("--source files needs --ca-dir")
        return await trio.to_thread.run_sync(
            lambda: CertificateAuthority.load_or_create(directory, ca_config)
        )
    failures = 0
    while True:
        try:
            authority = await load_ca_from_secrets(api, config.ca_secrets, ca_config)
        except ApiUnavailable as exc:
            failures += 1
            if failures == 1:
                log.warning("ca_secret_unavailable", reason=str(exc), hint=exc.hint)
            await trio.sleep(backoff.delay(failures))
            continue
        if failures:
            log.info("ca_secret_recovered", failures=failures)
        return authority


def leader_tasks(
    config: ControlPlaneConfig, api: ClientApi, state: _State, identity: str
) -> list[LeaderTask]:
    """What only the leader runs, each until cancelled (leadership lost, or shutdown): the
    status writer, the waypoint deployer (which also owns the waypoint GatewayClass) and
    the trust bundle's ConfigMap in every namespace (what waypoint pods mount)."""
    source, store = state.source, state.store
    refusals = source.refusals if not isinstance(source, FilesSource) else lambda: ()
    deployer = cluster_settings(config.waypoint_image, config.trust_domain)
    return [
        lambda: run_status_writer(api, store, identity=identity, refusals=refusals),
        lambda: run_deployer(
            api, store, deployer, events=EventRecorder(api, instance=identity, action="Deploy")
        ),
        lambda: run_root_cert_publisher(
            api, store, lambda: state.plane.authority.trust_bundle.pem()
        ),
    ]


async def _lead(config: ControlPlaneConfig, api: ClientApi, state: _State) -> None:
    lease = config.lease
    if lease is None:
        state.leadership.leading = True
        async with trio.open_nursery() as nursery:
            for task in leader_tasks(config, api, state, default_identity()):
                nursery.start_soon(task)
        return
    tasks = leader_tasks(config, api, state, lease.identity)
    await run_when_leader(api, lease, tasks, leadership=state.leadership)


async def run_controlplane(
    config: ControlPlaneConfig, *, task_status: trio.TaskStatus[Ports] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until SIGTERM or SIGINT (or cancellation); ``task_status.started(Ports)`` once
    every port listens."""
    async with _open_api(config) as api:
        await _run(config, api, task_status)


async def _run(
    config: ControlPlaneConfig, api: ClientApi | None, task_status: trio.TaskStatus[Ports]
) -> None:
    authority = await _authority(config, api, Backoff(initial=0.5, maximum=30.0))
    store = ObjectStore()
    access = None
    if api is not None:
        reviewer = TokenReviewAuthenticator(api, audience=config.ca_audience)
        nodes = KubeNodeAuthorizer(
            store, trust_domain=config.trust_domain, ztunnel=config.ztunnel_account
        )
        access = Access(
            ca_authenticator=reviewer,
            ca_authorizer=nodes,
            proxies=kube_proxy_authenticator(reviewer, nodes),
        )
    plane = ControlPlane(authority, trust_domain=config.trust_domain, access=access)
    tokens = TokensFile(config.tokens_file, plane.tokens)
    tokens.reload()
    state = _State(plane, store, _source(config))
    registry = CollectorRegistry()
    registry.register(_Collector(state))

    def ready() -> tuple[bool, str]:
        if plane.draining:
            return False, "draining: the control plane is shutting down"
        if not state.store.complete:
            return False, f"not listed yet: {', '.join(state.store.unlisted())}"
        return (True, "") if state.published else (False, "no config published yet")

    def syncz(_request: Request) -> Response:
        return json_response([vars(n) for n in plane.config.proxies()])

    routes = {"/metrics": metrics_route(registry), "/ready": ready_route(ready),
              "/debug/syncz": syncz}  # fmt: skip
    observer, observe = observing(plane.config.proxies, store, config.observer, routes,
                                  after=lambda: _write_status(state, config))  # fmt: skip
    pages = dashboard_pages(observer, lambda: plane.snapshot, store.objects)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            ca_port, config_port = await nursery.start(
                lambda task_status: plane.serve(
                    config.host, ca_port=config.ca_port, config_port=config.config_port,
                    task_status=task_status,
                )
            )  # fmt: skip
            metrics = await nursery.start(
                lambda task_status: serve_http(
                    routes, host=config.host, port=config.metrics_port, task_status=task_status
                )
            )
            nursery.start_soon(watch_tokens, tokens, config.poll)
            tap = None
            if config.tap_tokens_file or (api is not None and config.tap_kubernetes):
                serving = partial(serve_tap_api, plane, config.tap_tokens_file, api,
                                  host=config.host, port=config.tap_port,
                                  trust_domain=config.trust_domain, poll=config.poll,
                                  pages=pages)  # fmt: skip
                tap = await nursery.start(serving)
            nursery.start_soon(_sync, state, config)
            nursery.start_soon(observe)
            await nursery.start(_run_source, state, config, api)
            if api is not None:  # Istio's kinds ambit ignores: said, never silently skipped
                nursery.start_soon(report_unsupported, api)
            if api is not None:
                nursery.start_soon(_lead, config, api, state)
            log.info(
                "controlplane_started", ca_port=ca_port, config_port=config_port,
                metrics_port=metrics[1], source=config.source,
                files=[str(f) for f in config.files],
            )  # fmt: skip
            task_status.started(Ports(ca_port, config_port, metrics[1], tap))
            async for signum in signals:
                log.info("controlplane_stopping", signal=signal.Signals(signum).name)
                break
            await plane.drain(config.drain_seconds)
            nursery.cancel_scope.cancel()
