"""``ambit install``: render what installs ambit on a cluster, as YAML on stdout (render
only, like ``linkerd install``; nothing is sent to any cluster).

- ``ambit install --crds | kubectl apply --server-side -f -``: the CRDs of ambit's own
  kinds (:mod:`k8s.crds`);
- ``ambit install | kubectl apply -f -``: the control plane (:mod:`k8s.install`);
- ``ambit install --node | kubectl apply -f -``: the node side, ztunnel and the node
  agent (:mod:`k8s.install_node`), in the control plane's namespace;
- ``ambit install --gateway-api``: how to install Gateway API's CRDs, which ambit does
  not ship.
"""

from __future__ import annotations

import argparse
import sys

from k8s import gateway_api


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "install",
        help="print the manifests that install ambit (pipe them to kubectl apply)",
        description=(
            "Print manifests as YAML, render only: 'ambit install --crds | kubectl apply"
            " --server-side -f -' installs ambit's CRDs, then 'ambit install | kubectl"
            " apply -f -' the control plane in ambit-system, then 'ambit install --node |"
            " kubectl apply -f -' the node side (ztunnel, the node agent and the CNI plugin"
            " it installs). Gateway API's CRDs are not"
            " ambit's to ship: 'ambit install --gateway-api' says how to install them."
        ),
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--crds", action="store_true", help="the CRDs of ambit's own kinds")
    what.add_argument(
        "--gateway-api", action="store_true", help="how to install Gateway API's CRDs"
    )
    what.add_argument(
        "--node", action="store_true",
        help="the node side: the ztunnel and node agent DaemonSets (their own --set keys:"
        " trustDomain, image, imagePullPolicy, logLevel, controlPlane, cni.binDir,"
        " cni.confDir, excludeNamespaces, ztunnel.resources.*, nodeAgent.resources.*,"
        " tolerations, nodeSelector; lists and objects as JSON)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="a value (repeatable): trustDomain, image, imagePullPolicy, replicas,"
        " resources.requests.cpu, resources.requests.memory, resources.limits.cpu,"
        " resources.limits.memory, logLevel",
    )  # fmt: skip
    parser.add_argument("--trust-domain", help="the SPIFFE trust domain (--set trustDomain=)")
    parser.add_argument("--image", help="the ambit image (--set image=)")
    parser.add_argument("--replicas", help="control plane replicas (--set replicas=)")
    parser.set_defaults(run=run)


# How to install Gateway API's CRDs, shared with ``ambit check`` (k8s.gateway_api).
GATEWAY_API_VERSION = gateway_api.VERSION
GATEWAY_API_HELP = gateway_api.INSTALL_HELP


def run(args: argparse.Namespace) -> int:
    from k8s import crds, install

    if args.gateway_api:
        sys.stdout.write(GATEWAY_API_HELP)
        return 0
    if args.crds:
        sys.stdout.write(install.to_yaml(crds.crds()))
        return 0
    shorthands = (("trustDomain", args.trust_domain), ("image", args.image),
                  ("replicas", args.replicas))  # fmt: skip
    settings = [*args.settings, *(f"{k}={v}" for k, v in shorthands if v is not None)]
    try:
        if args.node:
            from k8s import install_node

            documents = install_node.manifests(install_node.values_from(settings))
        else:
            documents = install.manifests(install.values_from(settings))
    except install.ValuesError as error:
        print(f"ambit install: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(install.to_yaml(documents))
    return 0
