"""``ambit node-agent``: the node side's agent of one Kubernetes node (docs/node.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from mesh.constants import SYSTEM_NAMESPACE

READINESS_PORT = 15031


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "node-agent",
        help="run the node agent of one Kubernetes node (CNI plugin, capture, ztunnel hand-over)",
        description=(
            "Run the node agent for NODE: install the ambit-cni plugin into the node's CNI"
            " chain, watch the API server for the node's pods and the dataplane-mode labels,"
            " install capture rules in each meshed pod's network namespace and hand the pod"
            " to ztunnel over its socket. Runs one per node (a DaemonSet, host network)."
        ),
    )
    parser.add_argument(
        "--node", default=os.environ.get("NODE_NAME"), help="this node's name (default $NODE_NAME)"
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="kubeconfig (default: in-cluster credentials in a pod, else $KUBECONFIG)",
    )
    parser.add_argument(
        "--cni-bin-dir",
        type=Path,
        default=Path("/opt/cni/bin"),
        help="where the plugin binary goes, as this process sees it",
    )
    parser.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=Path("/etc/cni/net.d"),
        help="the node's CNI config directory, as this process sees it",
    )
    parser.add_argument(
        "--host-cni-conf-dir",
        type=Path,
        default=Path("/etc/cni/net.d"),
        help="the same directory as the node sees it (the plugin's config names its files)",
    )
    parser.add_argument(
        "--socket-dir",
        type=Path,
        default=Path("/var/run/ambit"),
        help="cni.sock (the plugin's) and ztunnel.sock (ztunnel's) live here",
    )
    parser.add_argument("--state-dir", type=Path, default=Path("/var/run/ambit/node-agent"))
    parser.add_argument(
        "--exclude-namespaces",
        default=f"kube-system,{SYSTEM_NAMESPACE}",
        metavar="NS,NS",
        help="namespaces whose pods are never captured (default %(default)s)",
    )
    parser.add_argument("--listen-ip", default="0.0.0.0", help="address of the readiness port")
    parser.add_argument(
        "--readiness-port",
        type=int,
        default=READINESS_PORT,
        help=f"/healthz/ready and /status (default {READINESS_PORT})",
    )
    parser.add_argument(
        "--uninstall-on-exit",
        action="store_true",
        help="always remove the plugin from the CNI config on exit (default: only when the"
        " agent's DaemonSet is gone, so that a restart or an upgrade keeps meshed pods from"
        " starting uncaptured)",
    )
    parser.add_argument(
        "--source",
        choices=("kubernetes", "files"),
        default="kubernetes",
        help="where the node's pods and the namespaces come from: the API server, or (local"
        " mode) the objects files given with -f, as an API server would serve them",
    )
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="with --source files: a file or directory of objects (repeatable)",
    )
    parser.add_argument(
        "--no-cni-install",
        dest="cni_install",
        action="store_false",
        help="install no CNI plugin (the runtime sends ADD and DEL to cni.sock itself, as"
        " local mode does); readiness then does not wait for a plugin",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from k8s.sources.kubernetes import KubeSourceConfig
    from node.main import NodeAgentConfig, run_node_agent

    if not args.node:
        print("ambit node-agent: give --node or set NODE_NAME", file=sys.stderr)
        return 2
    if (args.source == "files") != bool(args.files):
        print("ambit node-agent: --source files needs -f PATH, and -f only goes with it",
              file=sys.stderr)  # fmt: skip
        return 2
    config = NodeAgentConfig(
        node=args.node,
        kube=KubeSourceConfig(kubeconfig=args.kubeconfig),
        cni_bin_dir=args.cni_bin_dir,
        cni_conf_dir=args.cni_conf_dir,
        host_cni_conf_dir=args.host_cni_conf_dir,
        socket_dir=args.socket_dir,
        state_dir=args.state_dir,
        excluded=frozenset(n for n in args.exclude_namespaces.split(",") if n),
        listen_ip=args.listen_ip,
        readiness_port=args.readiness_port,
        uninstall_on_exit=args.uninstall_on_exit,
        pod_name=os.environ.get("POD_NAME"),
        pod_namespace=os.environ.get("POD_NAMESPACE"),
        files=tuple(args.files),
        cni_install=args.cni_install,
    )
    try:
        trio.run(run_node_agent, config)
    except KeyboardInterrupt:
        return 130
    return 0
