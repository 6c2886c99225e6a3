"""What the tests of the control plane's authenticated API on a real API server share
(``ambit tap``, ``ambit dashboard``): a control plane serving it to callers the API server
authorizes (``--tap-kubernetes``), a service account's kubeconfig for the caller, and the
caller's right to read the mesh's trust bundle, once published; removed afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import Cluster, free_port, write_kubeconfig
from tests.kube.planes import PlaneProcess, running

RBAC = "rbac.authorization.k8s.io/v1"


@dataclass(frozen=True)
class Caller:
    port: int  # the control plane's API (15016's stand-in)
    kubeconfig: Path  # the service account's token
    user: str  # system:serviceaccount:NS:NAME


def role(name: str, ns: str, group: str, resources: list[str], verbs: list[str]) -> Obj:
    return {"apiVersion": RBAC, "kind": "Role", "metadata": {"name": name, "namespace": ns},
            "rules": [{"apiGroups": [group], "resources": resources, "verbs": verbs}]}  # fmt: skip


def binding(name: str, ns: str | None, user: str, *, cluster: bool = False) -> Obj:
    """A (Cluster)RoleBinding of the (Cluster)Role ``name`` to the service account ``user``."""
    namespace, account = user.split(":")[2:]
    kind = "ClusterRole" if cluster else "Role"
    metadata = {"name": name} if cluster else {"name": name, "namespace": ns}
    return {"apiVersion": RBAC, "kind": f"{kind}Binding", "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account,
                          "namespace": namespace}]}  # fmt: skip


@asynccontextmanager
async def operator_api(
    cluster: Cluster, admin: KubeAdmin, ns: str, account: str, tmp_path: Path
) -> AsyncIterator[Caller]:
    """A control plane with its API on a free port, and the service account ``account`` of
    ``ns`` with a token in a kubeconfig, allowed to read the roots the control plane has
    published (in namespace default) by the time this yields."""
    port = free_port()
    plane = PlaneProcess(
        tmp_path / "plane",
        ["--source", "kubernetes", "--kubeconfig", str(cluster.kubeconfig),
         "--no-leader-election", "--tap-kubernetes", "--tap-port", str(port)],
        {},
    )  # fmt: skip
    await admin.create({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": account, "namespace": ns}})  # fmt: skip
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": 600}}  # fmt: skip
    answer = await admin.post_subresource("v1", "ServiceAccount", account, "token", request, ns)
    kubeconfig = tmp_path / f"{account}.kubeconfig"
    write_kubeconfig(kubeconfig, cluster.server, cluster.ca_file, answer["status"]["token"])
    user = f"system:serviceaccount:{ns}:{account}"
    roots_grant = f"roots-{ns}"
    await admin.create(role(roots_grant, "default", "", ["configmaps"], ["get"]))
    await admin.create(binding(roots_grant, "default", user))
    try:
        async with running(plane):
            roots = (plane.ca_dir / "root-cert.pem").read_text()

            async def published() -> bool:
                try:
                    found = await admin.get("v1", "ConfigMap", ROOT_CONFIG_MAP, "default")
                except NotFound:
                    return False
                return roots.strip() in str(found["data"][ROOT_CONFIG_MAP_KEY])

            await wait_for(published, seconds=30)
            yield Caller(port, kubeconfig, user)
    finally:
        for kind in ("RoleBinding", "Role"):
            with suppress(NotFound):
                await admin.delete(RBAC, kind, roots_grant, "default")
