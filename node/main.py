"""The ``ambit node-agent`` process: the agent (:mod:`node.agent`), the plugin's socket
(:mod:`node.cni_server`), the CNI installation (:mod:`node.cni_config`), the link to
ztunnel (:mod:`node.zds_client`) and a readiness port, until SIGTERM.

On exit the plugin stays in the node's CNI chain while the agent's DaemonSet exists (a
restart or an upgrade: meshed pods then wait for the agent, failing ADD, rather than
start uncaptured), and is removed, leaving the CNI config exactly as it was found, when
the DaemonSet is gone (uninstall) or with ``--uninstall-on-exit``."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from k8s.sources.api import Requests
from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
from mesh.admin import json_response, ready_route, serve_http
from mesh.capture import install_capture, remove_capture
from mesh.http import Request, Response
from node.agent import AgentConfig, NodeAgent
from node.cni_server import serve_cni

log = structlog.get_logger("node.main")


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


async def run_node_agent(config: NodeAgentConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop_signals:
        async with open_kube_api(config.kube) as api:
            await _run(config, api, stop_signals)


async def _run(config: NodeAgentConfig, api: Any, stop_signals: Any) -> None:
    raise NotImplementedError  # wired once the plugin installer and ztunnel link land


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


def status_route(agent: NodeAgent) -> Any:
    def route(_request: Request) -> Response:
        return json_response(agent.status())

    return route


__all__ = [
    "AgentConfig", "install_capture", "ready_route", "remove_capture", "serve_cni", "serve_http",
]  # fmt: skip
