"""``ambit ztunnel``: run the node proxy of one node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from mesh.constants import (
    ADMIN_PORT,
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
    METRICS_PORT,
    READINESS_PORT,
    SYSTEM_NAMESPACE,
    ZTUNNEL_SERVICE_ACCOUNT,
)
from mesh.pending import PendingLimits


def _address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, int(port)


def _service_account(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not (sep and namespace and name):
        raise ValueError(f"--service-account must be NAMESPACE/NAME, not {text!r}")
    return namespace, name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ztunnel",
        help="run the node proxy (ztunnel) of one node",
        description=(
            "Run ztunnel for NODE: it gets certificates from the CA, the mesh model from the"
            " control plane's config stream, and serves the node's meshed pods: those the node"
            " agent hands over --pods-socket (on Kubernetes and in local mode alike)."
        ),
    )
    parser.add_argument("--node", required=True)
    parser.add_argument(
        "--control-plane", required=True, help=f"HOST[:PORT] ({CONFIG_STREAM_PORT})"
    )
    parser.add_argument("--ca", required=True, help=f"HOST[:PORT] of the CA ({CONTROL_PLANE_PORT})")
    parser.add_argument("--token-file", required=True, type=Path, help="the node's bearer token")
    parser.add_argument("--trust-bundle", required=True, type=Path, help="PEM roots to trust")
    parser.add_argument(
        "--pods-socket",
        type=Path,
        required=True,
        help="a unix socket to bind, where the node agent hands pods over"
        " (/var/run/ambit/ztunnel.sock on Kubernetes)",
    )
    parser.add_argument("--listen-ip", default="0.0.0.0", help="address for 15020 and 15021")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument(
        "--service-account", default=f"{SYSTEM_NAMESPACE}/{ZTUNNEL_SERVICE_ACCOUNT}",
        metavar="NS/NAME",
        help="ztunnel's own ServiceAccount: its identity towards the CA and the config stream"
        " (default %(default)s; the control plane's --ztunnel-service-account)",
    )  # fmt: skip
    for flag, default, what in (
        ("--admin-port", ADMIN_PORT, "/config_dump on 127.0.0.1"),
        ("--metrics-port", METRICS_PORT, "Prometheus /metrics on --listen-ip"),
        ("--readiness-port", READINESS_PORT, "/healthz/ready on --listen-ip"),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=25.0,
        help="after SIGTERM, how long open connections may finish (default 25: below a"
        " pod's 30 s grace period)",
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        help="written once this ztunnel is ready (a hand-over waits for it before the old"
        " ztunnel drains)",
    )
    limits = PendingLimits()
    for flag, default, what in (
        ("--max-pending-per-source", limits.per_source_pending,
         "connections of one source IP waiting for their destination (a dial, a handshake);"
         " past it new ones are reset"),
        ("--max-pending", limits.pending, "the same, every source together"),
        ("--max-half-closed-per-source", limits.per_source_half_closed,
         "connections of one source IP with one side closed; past it the oldest is cut"),
        ("--max-half-closed", limits.half_closed, "the same, every source together"),
    ):  # fmt: skip
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mesh.identity import IdentityError, TrustBundle
    from mesh.tokens import TokenFile
    from ztunnel.main import ZtunnelConfig, run_ztunnel

    try:
        config = ZtunnelConfig(
            node=args.node,
            control_plane=_address(args.control_plane, CONFIG_STREAM_PORT),
            ca=_address(args.ca, CONTROL_PLANE_PORT),
            token=TokenFile(args.token_file),
            bundle=TrustBundle.from_pem(args.trust_bundle.read_bytes()),
            pods_socket=args.pods_socket,
            trust_domain=args.trust_domain,
            service_account=_service_account(args.service_account),
            listen_ip=args.listen_ip,
            admin_port=args.admin_port,
            metrics_port=args.metrics_port,
            readiness_port=args.readiness_port,
            drain_seconds=args.drain_seconds,
            ready_file=args.ready_file,
            limits=PendingLimits(
                per_source_pending=args.max_pending_per_source,
                pending=args.max_pending,
                per_source_half_closed=args.max_half_closed_per_source,
                half_closed=args.max_half_closed,
            ),
        )
    except (OSError, ValueError, IdentityError) as exc:
        print(f"ambit ztunnel: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(run_ztunnel, config)
    except KeyboardInterrupt:
        return 130
    return 0
