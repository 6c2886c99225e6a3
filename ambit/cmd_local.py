"""``ambit up|down|apply|delete|get|exec|logs``: the one-machine cluster (local mode).

Argument handling and output only; the cluster lives in :mod:`k8s.local`.
``ambit local-daemon`` (hidden) is the process ``ambit up`` starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import trio

from ambit import tables
from k8s.local.config import (
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    files_of,
    node_agent_log,
    pod_log,
    state_dir_from,
    ztunnel_log,
)
from k8s.local.errors import LocalClusterError

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
KINDS = ("pods", "nodes", "services", "workloads", "components")
_KIND_ALIASES = {
    "component": "components",
    "pod": "pods",
    "po": "pods",
    "node": "nodes",
    "no": "nodes",
    "service": "services",
    "svc": "services",
    "workload": "workloads",
}


def register(subparsers: Subparsers) -> None:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        help="directory of the cluster's state (default $AMBIT_STATE_DIR or /run/ambit)",
    )
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="YAML manifests (repeatable)",
    )

    up = subparsers.add_parser(
        "up",
        parents=[state, files],
        help="start a local cluster from manifests",
        description="Run manifests on this machine: pods become network"
        " namespaces on a bridge. Needs root. Returns once every pod runs.",
    )
    up.add_argument(
        "--pod-cidr", default=DEFAULT_POD_CIDR, help="pod and node addresses (default %(default)s)"
    )
    up.add_argument(
        "--service-cidr", default=DEFAULT_SERVICE_CIDR, help="Service VIPs (default %(default)s)"
    )
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    up.set_defaults(run=run_up)

    down = subparsers.add_parser("down", parents=[state], help="remove the local cluster")
    down.set_defaults(run=run_down)

    apply = subparsers.add_parser(
        "apply", parents=[state, files], help="apply objects in the local cluster"
    )
    apply.set_defaults(run=run_change, op="apply")
    delete = subparsers.add_parser("delete", parents=[state], help="delete objects in the local"
                                   " cluster: -f FILE..., or KIND NAME... [-n NS]")  # fmt: skip
    delete.add_argument("-f", "--filename", dest="files", action="append", default=[],
                        metavar="FILE", help="YAML manifests (repeatable)")  # fmt: skip
    delete.add_argument("kind", nargs="?")
    delete.add_argument("names", nargs="*", metavar="NAME")
    _namespace_args(delete)
    delete.set_defaults(run=run_change, op="delete")

    get = subparsers.add_parser(
        "get",
        parents=[state],
        help="list objects, nodes, workloads or components",
        description="KIND is nodes, workloads, components (the supervised processes) or"
        " any kind ambit understands, by its plural, singular or short name:"
        f" {', '.join(_kind_names())}. With NAME, one object;"
        " '-o yaml' shows objects as stored, with their conditions.",
    )
    get.add_argument("kind", help="what to list (see above)")
    get.add_argument("name", nargs="?", help="one object's name")
    _namespace_args(get)
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    get.set_defaults(run=run_get)

    restart = subparsers.add_parser(
        "restart",
        parents=[state],
        help="restart a component: ztunnel/NODE (hand-over, no connection lost) or controlplane",
        description="ztunnel/NODE: a new ztunnel listens beside the old one until it is ready,"
        " then the old one drains (open connections finish, up to its drain deadline), so no"
        " new connection is refused and none that ends in time is lost. controlplane and"
        " node-agent/NODE: stopped and started; the proxies keep their config and pods"
        " meanwhile.",
    )
    restart.add_argument("component", help="ztunnel/NODE, node-agent/NODE or controlplane")
    restart.set_defaults(run=run_restart)

    exec_ = subparsers.add_parser(
        "exec",
        parents=[state],
        help="run a command inside a pod",
        description="ambit exec [-n NS] POD -- COMMAND [ARG...] (POD: NAME or NS/NAME)",
    )
    _namespace_args(exec_, of_pod=True)
    exec_.add_argument("pod")
    exec_.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    exec_.set_defaults(run=run_exec)

    logs = subparsers.add_parser(
        "logs",
        parents=[state],
        help="print the log of a component",
        description="COMPONENT: pod/NAME (or NAME), ztunnel/NODE, node-agent/NODE,"
        " waypoint/NS/NAME, controlplane, daemon",
    )
    _namespace_args(logs, of_pod=True)
    logs.add_argument("component")
    logs.add_argument("--tail", type=int, default=0, help="only the last N lines")
    logs.set_defaults(run=run_logs)

    # No help=: stays out of the command list (it is what "ambit up" starts).
    daemon = subparsers.add_parser("local-daemon", parents=[state, files])
    daemon.add_argument("--cluster-id", required=True)
    daemon.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR)
    daemon.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR)
    daemon.add_argument("--ready-timeout", type=float, default=60.0)
    daemon.set_defaults(run=run_daemon)


def _namespace_args(parser: argparse.ArgumentParser, *, of_pod: bool = False) -> None:
    if of_pod:
        parser.add_argument(
            "-n", "--namespace",
            help="the pod's namespace (default: the only namespace with a pod of that name,"
            " else 'default')",
        )  # fmt: skip
    else:
        parser.add_argument("-n", "--namespace", default="default")


def _pick_namespace(name: str, namespaces: Sequence[str], given: str | None) -> str:
    """The namespace of pod ``name``: as given, else the only one that has it, else default."""
    if given is not None:
        return given
    if len(set(namespaces)) == 1 or "default" in namespaces:
        return "default" if "default" in namespaces else namespaces[0]
    if namespaces:
        raise LocalClusterError(
            f"pod {name} exists in namespaces {', '.join(sorted(namespaces))}: pick one with -n"
        )
    return "default"


def _fail(command: str, message: str) -> int:
    print(f"ambit {command}: {message}", file=sys.stderr)
    return 1


def run_up(args: argparse.Namespace) -> int:
    from k8s.local.lifecycle import start_cluster

    state_dir = state_dir_from(args.state_dir)
    notes: list[str] = []
    try:
        result = trio.run(
            start_cluster,
            state_dir,
            args.files,
            args.pod_cidr,
            args.service_cidr,
            args.timeout,
            notes,
        )
    except LocalClusterError as exc:
        for note in notes:
            print(f"ambit up: {note}", file=sys.stderr)
        return _fail("up", str(exc))
    for note in notes:
        print(f"ambit up: {note}", file=sys.stderr)
    if not result.ok:
        return _fail("up", result.message)
    try:
        snapshot = _call(state_dir, {"op": "get"})
    except LocalClusterError as exc:
        return _fail("up", f"the cluster reported ready but does not answer: {exc}")
    print(f"local cluster {snapshot['cluster_id']} is ready (state in {state_dir})")
    print(tables.pods_table(snapshot["pods"], all_namespaces=True))
    return 0


def run_down(args: argparse.Namespace) -> int:
    from k8s.local.lifecycle import stop_cluster

    state_dir = state_dir_from(args.state_dir)
    if not files_of(state_dir)[0].exists():
        print(f"no local cluster in {state_dir}; nothing to remove")
        return 0
    try:
        problems = trio.run(stop_cluster, state_dir)
    except LocalClusterError as exc:
        return _fail("down", str(exc))
    if problems:
        return _fail(
            "down",
            "could not remove everything:\n  "
            + "\n  ".join(problems)
            + f"\nFix the above and run 'ambit down' again (record: {files_of(state_dir)[0]})",
        )
    print("local cluster removed")
    return 0


def run_change(args: argparse.Namespace) -> int:
    paths = [str(Path(p).absolute()) for p in args.files]
    request: dict[str, Any] = {"op": args.op, "paths": paths}
    if args.op == "delete":
        by_name = getattr(args, "kind", None) is not None
        if by_name == bool(paths) or (by_name and not args.names):
            return _fail("delete", "give -f FILE..., or KIND NAME... (not both)")
        if by_name:
            from k8s.manifests import kind_info

            info = kind_info(args.kind)
            if info is None:
                return _fail("delete", f"unknown kind {args.kind!r}: {', '.join(_kind_names())}")
            namespace = args.namespace if info.namespaced else ""
            request = {"op": "delete", "refs": [[info.kind, namespace, n] for n in args.names]}
    try:
        result = _call(state_dir_from(args.state_dir), request)
    except LocalClusterError as exc:
        return _fail(args.op, str(exc))
    return tables.print_applied(result)


def _kind_names() -> list[str]:
    from k8s.manifests import KINDS as OBJECT_KINDS

    return [
        f"{k.plural} ({', '.join(k.short_names)})" if k.short_names else k.plural
        for k in OBJECT_KINDS
    ]


def run_get(args: argparse.Namespace) -> int:
    from k8s.manifests import kind_info

    kind = _KIND_ALIASES.get(args.kind, args.kind)
    info = kind_info(args.kind)
    if kind not in KINDS and info is None:
        return _fail(
            "get",
            f"unknown kind {args.kind!r}; use nodes, workloads or one of:"
            f" {', '.join(_kind_names())}",
        )
    # Local mode's nodes are its own (network namespaces, ztunnels), not Node objects.
    if (
        info is not None
        and kind != "nodes"
        and (args.output == "yaml" or args.name or kind not in KINDS)
    ):
        return _get_objects(args, info.kind, info.namespaced)
    if kind == "components":
        return _get_components(args)
    try:
        snapshot = _call(state_dir_from(args.state_dir), {"op": "get"})
    except LocalClusterError as exc:
        return _fail("get", str(exc))
    items: list[dict[str, Any]] = snapshot[
        "nodes" if kind == "nodes" else "services" if kind == "services" else "pods"
    ]
    if kind != "nodes" and not args.all_namespaces:
        items = [i for i in items if i["namespace"] == args.namespace]
    if args.name:
        items = [i for i in items if i["name"] == args.name]
        if not items:
            return _fail("get", f"{kind} {args.name!r} not found")
    if args.output == "yaml":
        print(tables.yaml_text(items), end="")
    elif args.output == "json":
        print(json.dumps(items, indent=2))
    elif kind == "pods":
        print(tables.pods_table(items, args.all_namespaces))
    elif kind == "workloads":
        print(tables.workloads_table(items))
    elif kind == "nodes":
        print(
            tables.table(
                ["NAME", "IP", "NETNS", "ZTUNNEL"],
                [[n["name"], n["ip"], n["netns"], tables.ztunnel_status(n)] for n in items],
            )
        )
    else:
        print(tables.services_table(items, args.all_namespaces))
    return 0


def _get_objects(args: argparse.Namespace, kind: str, namespaced: bool) -> int:
    """Stored objects with their conditions: a table, or the objects as YAML or JSON."""
    request = {
        "op": "objects",
        "kind": kind,
        "namespace": None if args.all_namespaces else args.namespace,
        "name": args.name,
    }
    try:
        items: list[dict[str, Any]] = _call(state_dir_from(args.state_dir), request)
    except LocalClusterError as exc:
        return _fail("get", str(exc))
    if args.name and not items:
        where = f" in namespace {args.namespace}" if namespaced else ""
        return _fail("get", f"{kind} {args.name!r} not found{where}")
    one = bool(args.name)
    if args.output == "yaml":
        print(tables.yaml_text(items[0] if one else items), end="")
    elif args.output == "json":
        print(json.dumps(items[0] if one else items, indent=2))
    elif not items:
        print("No resources found")
    elif kind in ("HTTPRoute", "GRPCRoute"):
        print(tables.routes_table(items, namespaced and args.all_namespaces))
    else:
        header = ["NAME", "STATUS", "AGE"]
        rows = [[i["metadata"]["name"], tables.status(i), tables.age(i)] for i in items]
        if kind in tables.TRAFFIC_KINDS:  # what their Services' waypoint answered itself
            header.insert(2, "LOCAL-REPLIES")
            for row, item in zip(rows, items, strict=True):
                row.insert(2, tables.local_replies(item))
        if namespaced and args.all_namespaces:
            header.insert(0, "NAMESPACE")
            for row, item in zip(rows, items, strict=True):
                row.insert(0, item["metadata"]["namespace"])
        print(tables.table(header, rows))
    return 0


def _get_components(args: argparse.Namespace) -> int:
    """The supervised processes (control plane, ztunnels), like ``kubectl get pods``."""
    try:
        items: list[dict[str, Any]] = _call(state_dir_from(args.state_dir), {"op": "components"})
    except LocalClusterError as exc:
        return _fail("get", str(exc))
    if args.name:
        items = [i for i in items if i["name"] == args.name]
    if args.output == "json":
        print(json.dumps(items, indent=2))
    elif args.output == "yaml":
        print(tables.yaml_text(items), end="")
    else:
        rows = [
            [i["name"], str(i["pid"] or "-"), i["status"], str(i["restarts"]),
             tables.duration(i["age"])]
            for i in items
        ]  # fmt: skip
        print(tables.table(["NAME", "PID", "STATUS", "RESTARTS", "AGE"], rows))
    return 0


def run_restart(args: argparse.Namespace) -> int:
    from k8s.local.api import call

    state_dir = state_dir_from(args.state_dir)
    request = {"op": "restart", "component": args.component}
    try:
        result = trio.run(call, files_of(state_dir)[1], request, 120.0)
    except LocalClusterError as exc:
        return _fail("restart", str(exc))
    print(
        f"{result['name']} restarted: pid {result['old_pid']} -> {result['new_pid']}"
        f" ({result['seconds']}s)"
    )
    return 0


def run_exec(args: argparse.Namespace) -> int:
    from k8s.local.processes import POD_PATH

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        return _fail("exec", "no command given: ambit exec POD -- COMMAND [ARG...]")
    try:
        snapshot = _call(state_dir_from(args.state_dir), {"op": "get"})
        pods = {(p["namespace"], p["name"]): p for p in snapshot["pods"]}
        given, _, args.pod = args.pod.rpartition("/")  # NS/NAME, as why and tap take it
        found = [ns for ns, name in pods if name == args.pod]
        namespace = _pick_namespace(args.pod, found, given or args.namespace)
    except LocalClusterError as exc:
        return _fail("exec", str(exc))
    pod = pods.get((namespace, args.pod))
    if pod is None:
        return _fail("exec", f"pod {namespace}/{args.pod} not found; see 'ambit get pods -A'")
    env = {"PATH": POD_PATH, "HOSTNAME": pod["name"]}
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    sys.stdout.flush()
    try:
        os.execvpe("ip", ["ip", "netns", "exec", pod["netns"], "env", "--", *argv], env)
    except OSError as exc:
        return _fail(
            "exec", f"cannot run 'ip netns exec': {exc.strerror} (needs root and iproute2)"
        )


def run_logs(args: argparse.Namespace) -> int:
    state_dir = state_dir_from(args.state_dir)
    kind, _, name = args.component.partition("/")
    if not name:
        kind, name = (kind, "") if kind in ("controlplane", "daemon") else ("pod", kind)
    if kind in ("pod", "po", "pods"):
        logs = pod_log(state_dir, "x", name).parent
        found = [f.name.split("_", 1)[0] for f in logs.glob(f"*_{name}.log")]
        try:
            path = pod_log(state_dir, _pick_namespace(name, found, args.namespace), name)
        except LocalClusterError as exc:
            return _fail("logs", str(exc))
    elif kind == "waypoint":  # waypoint/NS/NAME, as 'ambit get components' lists it
        from k8s.waypoint_deployer import waypoint_pod_name

        namespace, _, gateway = name.rpartition("/")
        namespace = namespace or args.namespace or "default"
        path = pod_log(state_dir, namespace, waypoint_pod_name(namespace, gateway))
    elif kind == "ztunnel":
        path = ztunnel_log(state_dir, name)
    elif kind == "node-agent":
        path = node_agent_log(state_dir, name)
    elif kind == "controlplane":
        path = state_dir / "logs" / "controlplane.log"
    elif kind == "daemon":
        path = files_of(state_dir)[2]
    else:
        return _fail(
            "logs",
            f"unknown component {args.component!r}; use pod/NAME, ztunnel/NODE,"
            " node-agent/NODE, waypoint/NS/NAME, controlplane or daemon",
        )
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return _fail(
            "logs",
            f"no log at {path}; is the cluster running ('ambit get pods -A', 'ambit get nodes')?",
        )
    lines = text.splitlines(keepends=True)
    sys.stdout.write("".join(lines[-args.tail :] if args.tail > 0 else lines))
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    from k8s.local.config import ClusterConfig, parse_cidr
    from k8s.local.daemon import run_daemon as daemon_main
    from k8s.localmesh import default_hooks

    try:
        config = ClusterConfig(
            state_dir_from(args.state_dir),
            args.cluster_id,
            parse_cidr(args.pod_cidr, "pod CIDR"),
            parse_cidr(args.service_cidr, "service CIDR"),
        )
    except LocalClusterError as exc:
        return _fail("local-daemon", str(exc))
    return trio.run(daemon_main, config, args.files, default_hooks(), args.ready_timeout)


def _call(state_dir: Path, request: dict[str, Any]) -> Any:
    from k8s.local.api import call

    return trio.run(call, files_of(state_dir)[1], request)
