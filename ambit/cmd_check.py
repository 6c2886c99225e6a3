"""``ambit check``: is ambit installed and healthy on the cluster; ``ambit check --pre``:
is the cluster ready for it (like ``linkerd check``). Each check says ok (a check mark),
a warning (!!) or a failure (a cross), with a hint; exit 0 when nothing failed (warnings
allowed), 1 when something did, 2 for a usage error. The checks are in
:mod:`k8s.check`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh.constants import SYSTEM_NAMESPACE

DEADLINE_SECONDS = 120.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that the cluster is ready for ambit (--pre), or that ambit is healthy on it",
        description=(
            "Check a cluster, like 'linkerd check'. With --pre, before installing: the API"
            " server and its version, the permissions installing needs, Gateway API's CRDs,"
            " Istio on the same cluster. Without: ambit's CRDs, the control plane's RBAC,"
            " Deployment, pods and Service, its CA's certificates, the node side, and Istio's"
            " kinds ambit ignores. Exit 0 when nothing failed (warnings allowed), else 1."
        ),
    )
    parser.add_argument("--pre", action="store_true", help="check before installing")
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config"
                        " or in-cluster credentials")  # fmt: skip
    parser.add_argument("--context", help="the kubeconfig's context (default: its current)")
    parser.add_argument("-n", "--namespace", default=SYSTEM_NAMESPACE,
                        help=f"ambit's namespace (default {SYSTEM_NAMESPACE})")  # fmt: skip
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    parser.add_argument("--wait", type=float, default=DEADLINE_SECONDS, metavar="SECONDS",
                        help=f"give up after this long (default {DEADLINE_SECONDS:g})")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import trio

    from k8s.check import report
    from k8s.check.base import CheckConfig, Result
    from k8s.check.run import run_checks

    config = CheckConfig(
        kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace, pre=args.pre
    )

    async def bounded() -> list[Result]:
        with trio.move_on_after(args.wait):
            return await run_checks(config)
        return [Result("kubernetes-api", "checks finished in time", "fail",
                       f"the checks took more than {args.wait:g} s",
                       "is the API server reachable and answering? (--wait SECONDS)")]  # fmt: skip

    results = trio.run(bounded)
    render = report.to_json if args.output == "json" else report.text
    sys.stdout.write(render(results))
    return report.exit_code(results)
