"""``ambit controlplane``: the control plane on its own (CA, config stream, metrics)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_METRICS_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
    SYSTEM_NAMESPACE,
    TAP_PORT,
    ZTUNNEL_SERVICE_ACCOUNT,
)

if TYPE_CHECKING:
    from k8s.controlplane_process import ControlPlaneConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "controlplane",
        help="run the control plane (CA, config stream, metrics) on its own",
        description=(
            "Run the control plane: objects come from its source, are validated and"
            " translated, and are streamed to the proxies; the CA signs for nodes that"
            " prove themselves with their token. --source files watches manifest files"
            " (a directory means every *.yaml, *.yml and *.json in it); --source kubernetes"
            " lists and watches the API server (--kubeconfig, else in-cluster credentials in"
            " a pod, else $KUBECONFIG or ~/.kube/config). With --source kubernetes the CA"
            " authenticates callers by the API server's TokenReview (audience ambit-ca) and"
            " keeps its keys in Secrets (an operator's 'cacerts' if present, else"
            " 'ambit-ca', created once and never overwritten) unless --ca-dir is given."
        ),
    )
    parser.add_argument("--source", choices=["files", "kubernetes"], default="files")
    parser.add_argument(
        "-f", "--filename", dest="files", action="append", type=Path, default=[],
        metavar="PATH", help="manifest file or directory to watch (repeatable; --source files)",
    )  # fmt: skip
    parser.add_argument(
        "--kubeconfig", type=Path, metavar="PATH",
        help="kubeconfig for --source kubernetes (default: in-cluster, $KUBECONFIG,"
        " ~/.kube/config)",
    )  # fmt: skip
    parser.add_argument(
        "--ca-dir", type=Path,
        help="the CA's keys on disk, made if absent (required with --source files; with"
        " --source kubernetes the keys are in Secrets unless this is given)",
    )  # fmt: skip
    parser.add_argument(
        "--ca-secret-namespace", default=SYSTEM_NAMESPACE, metavar="NS",
        help="--source kubernetes: where the CA's Secrets are, 'cacerts' (an operator's"
        " plug-in CA, Istio's layout) or 'ambit-ca' (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--ztunnel-service-account", default=f"{SYSTEM_NAMESPACE}/{ZTUNNEL_SERVICE_ACCOUNT}",
        metavar="NS/NAME",
        help="--source kubernetes: the service account whose pod-bound tokens may ask for"
        " the identities of pods on their pod's node (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--tokens-file", type=Path, help='node tokens, JSON {"node": "token"}; re-read on change'
    )
    parser.add_argument(
        "--tap-tokens-file", type=Path, metavar="PATH",
        help='who may use ambit tap: JSON {"caller": "token"}, re-read on change; serves the'
        " tap API on --tap-port (without it, none)",
    )  # fmt: skip
    parser.add_argument(
        "--tap-kubernetes", action="store_true",
        help="--source kubernetes: serve the tap API on --tap-port to callers the API server"
        " authenticates (TokenReview) and authorizes (SubjectAccessReview: watch on"
        " pods/tap, services/tap or namespaces/tap of ambit.io)",
    )  # fmt: skip
    parser.add_argument("--tap-port", type=int, default=TAP_PORT)
    parser.add_argument(
        "--status-file", type=Path, help="where each object's conditions are written (JSON)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--ca-port", type=int, default=CONTROL_PLANE_PORT)
    parser.add_argument("--config-port", type=int, default=CONFIG_STREAM_PORT)
    parser.add_argument("--metrics-port", type=int, default=CONTROL_PLANE_METRICS_PORT)
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument(
        "--leader-election-namespace", default=SYSTEM_NAMESPACE, metavar="NS",
        help="--source kubernetes: where the replicas' Lease 'ambit-controlplane' is; its"
        " holder writes status (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-leader-election", dest="leader_election", action="store_false",
        help="--source kubernetes: this replica writes status without a Lease (run one only)",
    )  # fmt: skip
    parser.add_argument(
        "--waypoint-image", metavar="IMAGE",
        help="--source kubernetes: the image of the waypoints the deployer makes (default:"
        " ambit install's image, ambit:<version>)",
    )  # fmt: skip
    parser.add_argument(
        "--drain-seconds", type=float, default=5.0,
        help="after SIGTERM, how long requests in flight may finish (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--observe-interval", type=float, default=5.0, metavar="SECONDS",
        help="how often the proxies' /metrics (15020) are read for /debug/graph and the"
        " LocalReplies condition; 0: never (default %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ca.errors import CaError
    from ca.secret_keys import CaSecrets
    from k8s.ca_nodes import ServiceAccountRef
    from k8s.controlplane_process import ControlPlaneConfig
    from k8s.leader import LeaseConfig
    from k8s.observer import ObserverConfig
    from k8s.waypoint_kube import DEFAULT_IMAGE

    if args.source == "kubernetes" and args.files:
        print("ambit controlplane: -f is for --source files, not kubernetes", file=sys.stderr)
        return 2
    if args.source == "files" and args.kubeconfig is not None:
        print("ambit controlplane: --kubeconfig is for --source kubernetes", file=sys.stderr)
        return 2
    if args.source == "files" and not args.files:
        print("ambit controlplane: --source files needs at least one -f PATH", file=sys.stderr)
        return 2
    if args.source == "files" and args.ca_dir is None:
        print("ambit controlplane: --source files needs --ca-dir", file=sys.stderr)
        return 2
    try:
        ztunnel = ServiceAccountRef.parse(args.ztunnel_service_account)
    except ValueError as exc:
        print(f"ambit controlplane: --ztunnel-service-account: {exc}", file=sys.stderr)
        return 2
    if args.source == "files" and args.waypoint_image is not None:
        print("ambit controlplane: --waypoint-image is for --source kubernetes", file=sys.stderr)
        return 2
    config = ControlPlaneConfig(
        files=tuple(args.files),
        ca_dir=args.ca_dir,
        source=args.source,
        kubeconfig=args.kubeconfig,
        ca_secrets=CaSecrets(namespace=args.ca_secret_namespace),
        ztunnel_account=ztunnel,
        tokens_file=args.tokens_file,
        tap_tokens_file=args.tap_tokens_file,
        tap_port=args.tap_port,
        tap_kubernetes=args.tap_kubernetes,
        status_file=args.status_file,
        host=args.host,
        ca_port=args.ca_port,
        config_port=args.config_port,
        metrics_port=args.metrics_port,
        trust_domain=args.trust_domain,
        drain_seconds=args.drain_seconds,
        lease=LeaseConfig(namespace=args.leader_election_namespace)
        if args.leader_election
        else None,
        waypoint_image=args.waypoint_image or DEFAULT_IMAGE,
        observer=ObserverConfig(interval=max(args.observe_interval, 0.0)),
    )
    try:
        failed = _run(config)
    except (OSError, CaError) as exc:
        print(f"ambit controlplane: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if failed is not None:
        print(f"ambit controlplane: {failed}", file=sys.stderr)
        return 1
    return 0


def _run(config: ControlPlaneConfig) -> str | None:
    """``trio.run`` the control plane; what stopped a source from starting (it is raised
    inside the control plane's nursery), or None."""
    from k8s.controlplane_process import run_controlplane

    source_errors: tuple[type[Exception], ...] = ()
    if config.source == "kubernetes":
        from k8s.sources.kubernetes import KubeSourceError

        source_errors = (KubeSourceError,)
    failed: list[str] = []
    try:
        trio.run(run_controlplane, config)
    except* source_errors as group:
        failed += _leaves(group)
    return "; ".join(failed) or None


def _leaves(error: BaseException) -> list[str]:
    if isinstance(error, BaseExceptionGroup):
        return [text for e in error.exceptions for text in _leaves(e)]
    return [str(error)]
