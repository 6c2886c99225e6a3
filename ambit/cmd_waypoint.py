"""``ambit waypoint generate|apply|list|delete|status|run``: waypoints, like ``istioctl
waypoint``.

A waypoint is a Gateway (``gateway.networking.k8s.io/v1``) of class ``ambit-waypoint``
with the listener ``{name: mesh, port: 15008, protocol: HBONE}``; it runs as the
service account of its name. ``generate`` prints one; ``apply`` sends it (and, with
``--enroll-namespace``, its Namespace labelled ``ambit.io/use-waypoint: NAME``) through
the local cluster's ``apply``, as ``ambit apply`` does, and the cluster's waypoint
deployer makes its ServiceAccount, Service and Pod. ``list``, ``delete`` and ``status``
read and change the local cluster. With ``--kubeconfig`` the four work on a
Kubernetes cluster instead (:mod:`ambit.cmd_waypoint_cluster`). ``run`` is the waypoint
proxy itself, the command a waypoint's pod (or a Kubernetes Deployment) runs: its flags
become a
:class:`waypoint.config.WaypointConfig` (:func:`config_from_args`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TypeAlias

import trio

from ambit import tables
from ambit.waypoint_docs import (
    bound_services,
    gateway_document,
    is_waypoint,
    missing_waypoint,
    print_waypoints,
    waypoint_for,
)
from k8s.local.config import state_dir_from
from k8s.local.errors import LocalClusterError
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    DEFAULT_TRUST_DOMAIN,
    LABEL_GATEWAY_NAME,
    LABEL_USE_WAYPOINT,
    WAYPOINT_SERVICE_ACCOUNT,
)

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
TRAFFIC = ("service", "workload", "all", "none")


def register(subparsers: Subparsers) -> None:
    waypoint = subparsers.add_parser(
        "waypoint",
        help="manage waypoints (L7 proxies of a namespace), like 'istioctl waypoint'",
        description="A waypoint is a Gateway of class ambit-waypoint; the local cluster"
        " runs a pod for each (its own identity, a Service VIP <name>.<namespace>).",
    )
    commands = waypoint.add_subparsers(dest="waypoint_command", metavar="COMMAND")
    state = argparse.ArgumentParser(add_help=False)
    where = state.add_mutually_exclusive_group()
    where.add_argument("--state-dir", help="the local cluster's state (default $AMBIT_STATE_DIR)")
    where.add_argument(
        "--kubeconfig", type=Path, metavar="PATH",
        help="work on the cluster this kubeconfig names instead of the local cluster",
    )  # fmt: skip
    state.add_argument("--context", help="with --kubeconfig: its context (default: current)")
    one = argparse.ArgumentParser(add_help=False)
    one.add_argument("-n", "--namespace", default="default")
    one.add_argument("--name", default=WAYPOINT_SERVICE_ACCOUNT, help="(default %(default)s)")
    traffic = argparse.ArgumentParser(add_help=False)
    traffic.add_argument(
        "--for", dest="for_traffic", choices=TRAFFIC, default="service",
        help="which traffic it takes: to Services, to workloads, all or none (default"
        " %(default)s)",
    )  # fmt: skip

    generate = commands.add_parser(
        "generate", parents=[one, traffic], help="print a waypoint's Gateway as YAML"
    )
    generate.set_defaults(run=run_generate)

    apply = commands.add_parser(
        "apply", parents=[state, one, traffic], help="create or update a waypoint"
    )
    apply.add_argument(
        "--enroll-namespace", action="store_true",
        help=f"label the namespace {LABEL_USE_WAYPOINT}=NAME: its Services use the waypoint",
    )  # fmt: skip
    apply.add_argument(
        "--overwrite", action="store_true",
        help="with --enroll-namespace, replace another waypoint the namespace uses",
    )  # fmt: skip
    apply.set_defaults(run=run_apply)

    list_ = commands.add_parser("list", parents=[state], help="list waypoints")
    list_.add_argument("-n", "--namespace", default="default")
    list_.add_argument("-A", "--all-namespaces", action="store_true")
    list_.set_defaults(run=run_list)

    delete = commands.add_parser("delete", parents=[state], help="delete waypoints")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument("--all", action="store_true", help="every waypoint of the namespace")
    delete.set_defaults(run=run_delete)

    status = commands.add_parser(
        "status", parents=[state, one], help="a waypoint's conditions and its pod"
    )
    status.set_defaults(run=run_status)

    run = commands.add_parser(
        "run",
        help="run the waypoint proxy (what a waypoint's pod runs)",
        description="Run the waypoint of Gateway NAMESPACE/NAME: it gets its certificate"
        " from the CA with its service account's token and its namespace's config from the"
        " control plane, and serves HBONE on 15008.",
    )
    add_run_flags(run)
    run.set_defaults(run=run_waypoint)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ambit waypoint run``, exactly those the deployer writes."""
    parser.add_argument("--namespace", required=True, help="the Gateway's namespace")
    parser.add_argument("--name", required=True, help="the Gateway's name: its service account")
    parser.add_argument(
        "--control-plane", required=True, help=f"HOST[:PORT] ({CONFIG_STREAM_PORT})"
    )
    parser.add_argument("--ca", required=True, help=f"HOST[:PORT] of the CA ({CONTROL_PLANE_PORT})")
    parser.add_argument(
        "--token-file", required=True, type=Path, help="the service account's bearer token"
    )
    parser.add_argument("--trust-bundle", required=True, type=Path, help="PEM roots to trust")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--listen-ip", default="0.0.0.0", help="address for 15008, 15020, 15021")
    parser.add_argument(
        "--drain-seconds", type=float, default=25.0,
        help="after SIGTERM, how long requests in flight may finish (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--ready-file", type=Path, default=os.environ.get("AMBIT_READY_FILE") or None,
        help="written once this waypoint is ready, so a restart can hand over to it before"
        " the old one drains (default: $AMBIT_READY_FILE, set by local mode)",
    )  # fmt: skip


def _address(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`waypoint.config.WaypointConfig` of ``ambit waypoint run``'s flags (the
    token and trust bundle read from their files). Raises OSError, ValueError or
    IdentityError with a message for the operator."""
    from mesh.credential import PemBundle
    from mesh.tokens import TokenFile
    from waypoint.config import WaypointConfig

    token = TokenFile(args.token_file)  # read again as the kubelet rotates it
    return WaypointConfig(
        namespace=args.namespace,
        name=args.name,
        control_plane=_address(args.control_plane, CONFIG_STREAM_PORT),
        ca=_address(args.ca, CONTROL_PLANE_PORT),
        token=token,
        bundle=PemBundle(args.trust_bundle.read_bytes()),
        trust_domain=args.trust_domain,
        listen_ip=args.listen_ip,
        drain_seconds=args.drain_seconds,
        ready_file=args.ready_file,
    )


def run_waypoint(args: argparse.Namespace) -> int:
    from mesh.identity import IdentityError

    try:
        config = config_from_args(args)
    except (OSError, ValueError, IdentityError) as exc:
        return _fail("run", str(exc))
    from waypoint.main import run_waypoint as serve

    try:
        trio.run(serve, config)
    except KeyboardInterrupt:
        return 130
    return 0


# --- The Gateway -----------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    document = gateway_document(args.namespace, args.name, args.for_traffic)
    print(tables.yaml_text(document), end="")
    return 0


def _enrolled(namespace: str, name: str, found: list[dict[str, Any]], overwrite: bool) -> Any:
    """The Namespace document labelled to use waypoint ``name``."""
    if found:
        doc = {k: v for k, v in found[0].items() if k != "status"}
        meta = {k: v for k, v in doc.get("metadata", {}).items()
                if k in ("name", "labels", "annotations")}  # fmt: skip
    else:
        doc, meta = {"apiVersion": "v1", "kind": "Namespace"}, {"name": namespace}
    labels = dict(meta.get("labels") or {})
    current = labels.get(LABEL_USE_WAYPOINT)
    if current not in (None, name) and not overwrite:
        raise LocalClusterError(
            f"namespace {namespace} already uses waypoint {current!r}; pass --overwrite to"
            f" use {name!r} instead"
        )
    labels[LABEL_USE_WAYPOINT] = name
    return {**doc, "metadata": {**meta, "labels": labels}}


def run_apply(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        from ambit.cmd_waypoint_cluster import run_on_cluster

        return run_on_cluster(args, "apply")
    state_dir = state_dir_from(args.state_dir)
    documents = [gateway_document(args.namespace, args.name, args.for_traffic)]
    try:
        if args.enroll_namespace:
            found = _objects(state_dir, "Namespace", None, args.namespace)
            documents.append(_enrolled(args.namespace, args.name, found, args.overwrite))
        result = _call(state_dir, {
            "op": "apply", "manifest": tables.yaml_all(documents),
            "source": "ambit waypoint apply",
        })  # fmt: skip
    except LocalClusterError as exc:
        return _fail("apply", str(exc))
    return tables.print_applied(result)


# --- Reading and deleting --------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        from ambit.cmd_waypoint_cluster import run_on_cluster

        return run_on_cluster(args, "list")
    namespace = None if args.all_namespaces else args.namespace
    try:
        found = _objects(state_dir_from(args.state_dir), "Gateway", namespace, None)
    except LocalClusterError as exc:
        return _fail("list", str(exc))
    print_waypoints([d for d in found if is_waypoint(d)], namespace)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        from ambit.cmd_waypoint_cluster import run_on_cluster

        return run_on_cluster(args, "delete")
    if bool(args.names) == args.all:
        return _fail("delete", "name the waypoints to delete, or pass --all (not both)")
    state_dir = state_dir_from(args.state_dir)
    try:
        found = {
            d["metadata"]["name"]: d
            for d in _objects(state_dir, "Gateway", args.namespace, None)
            if is_waypoint(d)
        }
        names = sorted(found) if args.all else args.names
        missing = [n for n in names if n not in found]
        if missing:
            raise LocalClusterError(
                f"no waypoint {', '.join(missing)} in namespace {args.namespace}"
                f" (see 'ambit waypoint list -n {args.namespace}')"
            )
        if not names:
            print(f"No waypoints found in namespace {args.namespace}")
            return 0
        documents = [_as_applied(found[n]) for n in names]
        result = _call(state_dir, {
            "op": "delete", "manifest": tables.yaml_all(documents),
            "source": "ambit waypoint delete",
        })  # fmt: skip
    except LocalClusterError as exc:
        return _fail("delete", str(exc))
    return tables.print_applied(result)


def _as_applied(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored object without what the server added (status, server metadata)."""
    keep = ("name", "namespace", "labels", "annotations")
    meta = {k: v for k, v in doc["metadata"].items() if k in keep}
    return {**{k: v for k, v in doc.items() if k != "status"}, "metadata": meta}


def run_status(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        from ambit.cmd_waypoint_cluster import run_on_cluster

        return run_on_cluster(args, "status")
    state_dir = state_dir_from(args.state_dir)
    try:
        found = _objects(state_dir, "Gateway", args.namespace, args.name)
        snapshot = _call(state_dir, {"op": "get"})
    except LocalClusterError as exc:
        return _fail("status", str(exc))
    if not found or not is_waypoint(found[0]):
        users = _bound_to_missing(state_dir, f"{args.namespace}/{args.name}")
        return _fail("status", missing_waypoint(args.namespace, args.name, users))
    doc = found[0]
    print(f"waypoint {args.namespace}/{args.name} (class {doc['spec']['gatewayClassName']},"
          f" for {waypoint_for(doc)})")  # fmt: skip
    conditions = (doc.get("status") or {}).get("conditions") or []
    if not conditions:
        print("  no conditions yet: the control plane has not seen it")
    for c in conditions:
        print(f"  {c.get('type')}: {c.get('status')} ({c.get('reason')}) {c.get('message')}")
    pods = [
        p for p in snapshot["pods"]
        if p["namespace"] == args.namespace and p["labels"].get(LABEL_GATEWAY_NAME) == args.name
    ]  # fmt: skip
    if not pods:
        print("  no pod")
    for p in pods:
        print(f"  pod {p['name']}: {tables._pod_status(p)} on {p['node']}, {p['ip']},"
              f" {p['identity']}")  # fmt: skip
    key = (args.namespace, args.name)
    service = next((s for s in snapshot["services"] if (s["namespace"], s["name"]) == key), None)
    if service is not None:
        print(f"  service {args.name}.{args.namespace}: {service['vip']}")
    return 0


def _bound_to_missing(state_dir: Path, key: str) -> list[str]:
    """The Services whose labels bind them to waypoint ``key``, which does not exist."""
    try:
        namespaces = _objects(state_dir, "Namespace", None, None)
        return bound_services(key, namespaces, _objects(state_dir, "Service", None, None))
    except LocalClusterError:
        return []


def _objects(
    state_dir: Path, kind: str, namespace: str | None, name: str | None
) -> list[dict[str, Any]]:
    request = {"op": "objects", "kind": kind, "namespace": namespace, "name": name}
    found: list[dict[str, Any]] = _call(state_dir, request)
    return found


def _call(state_dir: Path, request: dict[str, Any]) -> Any:
    from ambit.cmd_local import _call as call

    return call(state_dir, request)


def _fail(command: str, message: str) -> int:
    print(f"ambit waypoint {command}: {message}", file=sys.stderr)
    return 1
