"""``ambit install``: render what installs ambit on a cluster, as YAML on stdout (render
only, like ``linkerd install``; nothing is sent to any cluster).

- ``ambit install --crds | kubectl apply --server-side -f -``: the CRDs of ambit's own
  kinds (:mod:`k8s.crds`);
- ``ambit install | kubectl apply -f -``: the control plane (:mod:`k8s.install`);
- ``ambit install --gateway-api``: how to install Gateway API's CRDs, which ambit does
  not ship.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import yaml


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "install",
        help="print the manifests that install ambit (pipe them to kubectl apply)",
        description=(
            "Print manifests as YAML, render only: 'ambit install --crds | kubectl apply"
            " --server-side -f -' installs ambit's CRDs, then 'ambit install | kubectl"
            " apply -f -' the control plane in ambit-system. Gateway API's CRDs are not"
            " ambit's to ship: 'ambit install --gateway-api' says how to install them."
        ),
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--crds", action="store_true", help="the CRDs of ambit's own kinds")
    what.add_argument(
        "--gateway-api", action="store_true", help="how to install Gateway API's CRDs"
    )
    parser.set_defaults(run=run)


class _Dumper(yaml.SafeDumper):
    """No ``&id001`` anchors where the same schema appears twice: each spelled out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(documents: Iterable[Mapping[str, Any]]) -> str:
    """Documents as one multi-document YAML text, keys in the order they were built."""
    return yaml.dump_all(
        [dict(d) for d in documents],
        Dumper=_Dumper,
        sort_keys=False,
        explicit_start=True,
        allow_unicode=True,
        width=100,
    )


def run(args: argparse.Namespace) -> int:
    from k8s import crds

    if args.crds:
        sys.stdout.write(to_yaml(crds.crds()))
        return 0
    print("ambit install: only --crds is built so far", file=sys.stderr)
    return 1
