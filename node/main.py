"""The ``ambit node-agent`` process: the agent (:mod:`node.agent`), the plugin's socket
(:mod:`node.cni_server`), the CNI installation (:mod:`node.cni_config`), the link to
ztunnel (:mod:`node.zds_client`) and a readiness port, until SIGTERM.

With ``--source files`` (local mode) the agent follows the local cluster's objects
files instead of the API server (:class:`node.sources.FileSource`), and with
``--no-cni-install`` it installs no plugin: the local cluster, which is the container
runtime there, sends the plugin's ADD and DEL to ``cni.sock`` itself.

On exit the plugin stays in the node's CNI chain while the agent's DaemonSet exists (a
restart or an upgrade: meshed pods then wait for the agent, failing ADD, rather than
start uncaptured), and is removed, leaving the CNI config exactly as it was found, when
the DaemonSet is gone (uninstall) or with ``--uninstall-on-exit``."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
import yaml

from k8s.sources.api import KubeSourceError, Requests
from k8s.sources.kubernetes import ClientApi, KubeSourceConfig, in_cluster, open_kube_api
from mesh.admin import Route, json_response, ready_route, serve_http
from mesh.capture import install_capture, remove_capture
from mesh.http import Request, Response
from node.agent import AgentConfig, NodeAgent
from node.cni_config import KUBECONFIG_NAME, PluginKubeconfig, PluginSettings
from node.cni_install import (
    Changes,
    InstallConfig,
    Installed,
    keep_installed,
    uninstall,
)
from node.cni_server import serve_cni
from node.sources import FileSource, KubeSource, PodSource
from node.zds_client import ZdsClient

log = structlog.get_logger("node.main")

UNINSTALL_CHECK_SECONDS = 5.0  # asking whether the DaemonSet is gone, at exit


@dataclass(frozen=True)
class NodeAgentConfig:
    node: str
    kube: KubeSourceConfig
    cni_bin_dir: Path
    cni_conf_dir: Path
    host_cni_conf_dir: Path
    socket_dir: Path
    state_dir: Path
    excluded: frozenset[str]
    listen_ip: str
    readiness_port: int
    uninstall_on_exit: bool = False
    pod_name: str | None = None
    pod_namespace: str | None = None
    files: tuple[Path, ...] = ()  # --source files: follow these instead of the API server
    cni_install: bool = True


NO_CNI_INSTALL = {"installed": False, "conflist": None, "error": None,
                  "disabled": "--no-cni-install: the runtime sends ADD and DEL itself"}  # fmt: skip


async def run_node_agent(config: NodeAgentConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop_signals:
        if config.files:
            files = FileSource(config.files, config.node)
            await _run(config, None, files, files, stop_signals)
            return
        async with open_kube_api(config.kube) as api:
            await _run(config, api, KubeSource(api, config.node), api, stop_signals)


class CniState:
    """What the last installation round found, for readiness and the status annotation."""

    def __init__(self, conf_dir: Path) -> None:
        self._conf_dir = conf_dir
        self.doc: dict[str, Any] = {"installed": False, "conflist": None, "error": None}

    def on_round(self, outcome: Changes | Exception) -> None:
        if isinstance(outcome, Exception):
            self.doc = {"installed": False, "conflist": None, "error": str(outcome)}
        elif outcome.config is Installed.WAITING:
            error = f"waiting for the primary CNI's config in {self._conf_dir}"
            self.doc = {"installed": False, "conflist": None, "error": error}
        else:
            self.doc = {"installed": True, "conflist": outcome.conflist, "error": None}

    def status(self) -> dict[str, Any]:
        return dict(self.doc)


async def _run(
    config: NodeAgentConfig,
    api: ClientApi | None,
    source: PodSource,
    requests: Requests,
    stop_signals: AsyncIterator[int],
) -> None:
    """Serve until a signal; ``api`` is None with the files source (local mode)."""
    zds = ZdsClient(config.socket_dir / "ztunnel.sock")
    settings = PluginSettings(
        agent_socket=str(config.socket_dir / "cni.sock"),
        kubeconfig=str(config.host_cni_conf_dir / KUBECONFIG_NAME),
        exclude_namespaces=tuple(sorted(config.excluded)),
    )
    install = InstallConfig(
        conf_dir=config.cni_conf_dir,
        bin_dir=config.cni_bin_dir,
        state_dir=config.state_dir,
        settings=settings,
        kubeconfig=lambda: plugin_kubeconfig(config.kube),
    )
    if config.cni_install:
        plugin_kubeconfig(config.kube)  # unusable credentials: fail at start, with why
    cni = CniState(config.cni_conf_dir)
    agent = NodeAgent(
        AgentConfig(
            node=config.node,
            state_dir=config.state_dir,
            excluded=config.excluded,
            pod_name=config.pod_name if api is not None else None,
            pod_namespace=config.pod_namespace,
            cni_install=config.cni_install,
        ),
        source=source,
        requests=requests,
        ztunnel=zds,
        install_rules=install_capture,
        remove_rules=remove_capture,
        cni_status=cni.status if config.cni_install else lambda: dict(NO_CNI_INSTALL),
    )
    handlers = {"ADD": agent.cni_add, "DEL": agent.cni_del, "CHECK": agent.cni_check}
    routes = {"/healthz/ready": ready_route(agent.ready), "/status": status_route(agent)}
    async with trio.open_nursery() as nursery:
        await nursery.start(zds.run)
        await nursery.start(agent.run)
        # The socket before the plugin: the plugin is never in the chain with no one to ask.
        await nursery.start(serve_cni, config.socket_dir / "cni.sock", handlers)
        if config.cni_install:
            nursery.start_soon(partial(keep_installed, install, on_round=cni.on_round))
        await nursery.start(partial(serve_http, routes, host=config.listen_ip,
                                    port=config.readiness_port))  # fmt: skip
        log.info("node_agent_running", node=config.node, socket_dir=str(config.socket_dir))
        async for signum in stop_signals:
            log.info("node_agent_stopping", signal=signal.Signals(signum).name)
            break
        nursery.cancel_scope.cancel()
    if not config.cni_install:
        return
    remove = config.uninstall_on_exit
    if not remove and api is not None and config.pod_name and config.pod_namespace:
        with trio.move_on_after(UNINSTALL_CHECK_SECONDS):
            remove = await daemonset_gone(api, config.pod_namespace, config.pod_name)
    if remove:
        await trio.to_thread.run_sync(uninstall, install)
        log.info("cni_uninstalled", conf_dir=str(config.cni_conf_dir))
    else:
        log.info("cni_kept", reason="the agent is restarting or being upgraded: meshed pods"
                 " wait for it rather than start uncaptured")  # fmt: skip


def plugin_kubeconfig(kube: KubeSourceConfig) -> PluginKubeconfig:
    """The plugin's credentials, from the agent's own: in a pod, the service account's
    token (re-read each round: it rotates) and CA; else the kubeconfig's current
    context (a token, or a token file; a CA file or data)."""
    if in_cluster(kube):
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return PluginKubeconfig(
            server=f"https://{host}:{port}",
            ca_pem=(kube.service_account_dir / "ca.crt").read_bytes(),
            token=(kube.service_account_dir / "token").read_text().strip(),
        )
    path = kube.kubeconfig or Path(os.environ.get("KUBECONFIG", Path.home() / ".kube/config"))
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        context_name = kube.context or doc.get("current-context")
        context = _named(doc.get("contexts"), context_name)["context"]
        cluster = _named(doc.get("clusters"), context["cluster"])["cluster"]
        user = _named(doc.get("users"), context["user"])["user"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise KubeSourceError(f"cannot read the kubeconfig {path} for the plugin: {exc}") from exc
    ca_pem = None
    if cluster.get("certificate-authority-data"):
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca_pem = Path(cluster["certificate-authority"]).read_bytes()
    if user.get("token"):
        return PluginKubeconfig(server=cluster["server"], ca_pem=ca_pem, token=user["token"])
    if user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
        return PluginKubeconfig(server=cluster["server"], ca_pem=ca_pem, token=token)
    raise KubeSourceError(
        f"the kubeconfig {path} has no bearer token for the plugin (client certificates and"
        " exec plugins are not passed on to it)"
    )


def _named(items: Any, name: Any) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item)
    raise KeyError(f"no entry named {name!r}")


async def daemonset_gone(requests: Requests, namespace: str, pod: str) -> bool:
    """Whether the DaemonSet that owns ``pod`` is gone or being deleted: the agent is
    being uninstalled, not restarted. False when that cannot be told (keep the plugin)."""
    status, body = await requests.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    if status != 200:
        return False
    owners = [o for o in (body.get("metadata") or {}).get("ownerReferences") or []
              if o.get("kind") == "DaemonSet"]  # fmt: skip
    if not owners:
        return False
    name = owners[0].get("name")
    status, body = await requests.request(
        "GET", f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"
    )
    if status == 404:
        return True
    return status == 200 and (body.get("metadata") or {}).get("deletionTimestamp") is not None


def status_route(agent: NodeAgent) -> Route:
    def route(_request: Request) -> Response:
        return json_response(agent.status())

    return route
