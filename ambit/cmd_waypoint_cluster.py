"""``ambit waypoint apply|list|delete|status --kubeconfig PATH``: the same commands against
a cluster's API server, as ``istioctl waypoint`` works on a cluster.

``apply`` server-side applies the waypoint's Gateway (field manager ``ambit-cli``) and,
with ``--enroll-namespace``, the label ``ambit.io/use-waypoint: NAME`` on its Namespace
(refused when the namespace uses another waypoint, unless ``--overwrite``); the control
plane's deployer then makes its ServiceAccount, Service and Deployment. ``list`` reads
the waypoint Gateways with their ``Programmed`` condition, ``delete`` deletes Gateways
(the garbage collector takes their objects), ``status`` prints a Gateway's conditions
and its Deployment's ready replicas. Each prints what changed, or one line saying what
failed and exits 1; ``status`` of a waypoint that does not exist then names the Services
whose labels still bind them to it, whose traffic is refused, as local mode does
(:func:`ambit.waypoint_docs.missing_waypoint`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ambit.waypoint_docs import (
    bound_services,
    gateway_document,
    is_waypoint,
    missing_waypoint,
    print_waypoints,
    waypoint_for,
)
from k8s.sources.api import APPLY_CONTENT_TYPE, KubeSourceError, Requests
from mesh.constants import LABEL_USE_WAYPOINT

FIELD_MANAGER: Final = "ambit-cli"
GATEWAYS: Final = "/apis/gateway.networking.k8s.io/v1"
Json = dict[str, Any]


class KubeCommandError(Exception):
    """What the operator is told, one line."""


def _gateways_path(namespace: str | None, name: str | None = None) -> str:
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{GATEWAYS}{where}/gateways" + (f"/{name}" if name else "")


_HINTS: Final = {
    401: " (are the kubeconfig's credentials valid?)",
    403: " (may these credentials do it?)",
    404: " (are Gateway API's CRDs installed? 'ambit install --help' says how)",
}


class Cluster:
    """The requests the commands make, with the kubeconfig's credentials."""

    def __init__(self, api: Requests) -> None:
        self._api = api

    async def call(self, method: str, path: str, body: Json | None = None, **kw: Any) -> Json:
        status, answer = await self._api.request(method, path, body, **kw)
        if status >= 300:
            message = answer.get("message") or f"HTTP {status}"
            raise KubeCommandError(f"{method} {path}: {message}{_HINTS.get(status, '')}")
        return answer

    async def get(self, path: str) -> Json | None:
        status, answer = await self._api.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise KubeCommandError(f"GET {path}: {answer.get('message') or f'HTTP {status}'}")
        return answer

    async def apply(self, path: str, document: Json) -> Json:
        return await self.call(
            "PATCH", path, document, content_type=APPLY_CONTENT_TYPE,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )  # fmt: skip


def run_on_cluster(args: argparse.Namespace, command: str) -> int:
    """Run ``command``'s coroutine against the cluster ``args.kubeconfig`` names."""
    from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api

    config = KubeSourceConfig(kubeconfig=args.kubeconfig, context=args.context)
    action: Callable[[Cluster, argparse.Namespace], Awaitable[int]] = _COMMANDS[command]

    async def main() -> int:
        async with open_kube_api(config) as api:
            return await action(Cluster(api), args)

    failed: list[BaseException] = []
    try:
        return trio.run(main)
    except* (KubeCommandError, KubeSourceError, OSError) as group:  # raised in the loop's nursery
        failed.extend(_leaves(group))
    print(f"ambit waypoint {command}: {failed[0]}", file=sys.stderr)
    return 1


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for e in error.exceptions for leaf in _leaves(e)]
    return [error]


async def _apply(cluster: Cluster, args: argparse.Namespace) -> int:
    ns, name = args.namespace, args.name
    if args.enroll_namespace:
        found = await cluster.get(f"/api/v1/namespaces/{ns}")
        if found is None:
            raise KubeCommandError(f"namespace {ns} does not exist")
        current = (found["metadata"].get("labels") or {}).get(LABEL_USE_WAYPOINT)
        if current not in (None, name) and not args.overwrite:
            raise KubeCommandError(
                f"namespace {ns} already uses waypoint {current!r}; pass --overwrite to use"
                f" {name!r} instead"
            )
    existed = await cluster.get(_gateways_path(ns, name)) is not None
    await cluster.apply(_gateways_path(ns, name), gateway_document(ns, name, args.for_traffic))
    print(f"waypoint {ns}/{name} {'applied' if existed else 'created'}")
    if args.enroll_namespace:
        label = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": ns, "labels": {LABEL_USE_WAYPOINT: name}}}  # fmt: skip
        await cluster.apply(f"/api/v1/namespaces/{ns}", label)
        print(f"namespace {ns} labelled {LABEL_USE_WAYPOINT}={name}")
    return 0


async def _waypoints(cluster: Cluster, namespace: str | None) -> list[Json]:
    found = await cluster.call("GET", _gateways_path(namespace))
    return [d for d in found.get("items") or [] if is_waypoint(d)]


async def _list(cluster: Cluster, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else args.namespace
    print_waypoints(await _waypoints(cluster, namespace), namespace)
    return 0


async def _delete(cluster: Cluster, args: argparse.Namespace) -> int:
    if bool(args.names) == args.all:
        raise KubeCommandError("name the waypoints to delete, or pass --all (not both)")
    found = {d["metadata"]["name"] for d in await _waypoints(cluster, args.namespace)}
    names = sorted(found) if args.all else args.names
    missing = [n for n in names if n not in found]
    if missing:
        raise KubeCommandError(
            f"no waypoint {', '.join(missing)} in namespace {args.namespace}"
            f" (see 'ambit waypoint list -n {args.namespace}')"
        )
    if not names:
        print(f"No waypoints found in namespace {args.namespace}")
    for name in names:
        await cluster.call("DELETE", _gateways_path(args.namespace, name))
        print(f"waypoint {args.namespace}/{name} deleted")
    return 0


async def _status(cluster: Cluster, args: argparse.Namespace) -> int:
    doc = await cluster.get(_gateways_path(args.namespace, args.name))
    if doc is None or not is_waypoint(doc):
        users = await _bound_to_missing(cluster, f"{args.namespace}/{args.name}")
        raise KubeCommandError(missing_waypoint(args.namespace, args.name, users))
    print(f"waypoint {args.namespace}/{args.name} (class {doc['spec']['gatewayClassName']},"
          f" for {waypoint_for(doc)})")  # fmt: skip
    conditions = (doc.get("status") or {}).get("conditions") or []
    # The CRD's defaults (Unknown, Pending) until a controller writes its own.
    ours = [c for c in conditions if (c.get("status"), c.get("reason")) != ("Unknown", "Pending")]
    if not ours:
        print("  no conditions yet: the control plane has not seen it")
    for c in ours:
        print(f"  {c.get('type')}: {c.get('status')} ({c.get('reason')}) {c.get('message')}")
    path = f"/apis/apps/v1/namespaces/{args.namespace}/deployments/{args.name}"
    deployment = await cluster.get(path)
    if deployment is None:
        print("  no deployment yet: the control plane's deployer has not made it")
    else:
        status = deployment.get("status") or {}
        wanted = (deployment.get("spec") or {}).get("replicas", 1)
        print(f"  deployment {args.name}: {status.get('readyReplicas', 0)}/{wanted} ready")
    addresses = (doc.get("status") or {}).get("addresses") or []
    for address in addresses:
        print(f"  address {address.get('value')}")
    return 0


async def _bound_to_missing(cluster: Cluster, key: str) -> list[str]:
    """The Services whose labels bind them to waypoint ``key``, which does not exist (none
    when these credentials may not list Namespaces and Services)."""
    try:
        namespaces = (await cluster.call("GET", "/api/v1/namespaces")).get("items") or []
        services = (await cluster.call("GET", "/api/v1/services")).get("items") or []
    except KubeCommandError:
        return []
    return bound_services(key, namespaces, services)


_COMMANDS: Final[dict[str, Callable[[Cluster, argparse.Namespace], Awaitable[int]]]] = {
    "apply": _apply,
    "list": _list,
    "delete": _delete,
    "status": _status,
}
