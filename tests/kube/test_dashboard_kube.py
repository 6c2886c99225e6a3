"""``ambit dashboard --kubeconfig PATH --server HOST:PORT`` against the control plane on the
real API server (``--source kubernetes --tap-kubernetes``): the page's data is the
control plane's, for a caller the API server says may ``get`` ``meshsnapshots`` of
``ambit.io`` (TokenReview, then SubjectAccessReview), as ``ambit why``'s snapshot is:
refused with the verb and resource named, then, once a ClusterRole grants it, served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import trio

from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
from tests.integration.test_dashboard_proxy import ask
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster, free_port, write_kubeconfig
from tests.kube.planes import PlaneProcess, running
from tests.kube.test_tap_kube import _binding, _role

pytestmark = pytest.mark.kube
RBAC = "rbac.authorization.k8s.io/v1"


@asynccontextmanager
async def dashboard(kubeconfig: Path, port: int) -> AsyncIterator[tuple[int, str]]:
    """``ambit dashboard`` as that kubeconfig's user: its port and the login path."""
    argv = [sys.executable, "-m", "ambit.cli", "dashboard", "--kubeconfig", str(kubeconfig),
            "--server", f"127.0.0.1:{port}"]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(
            trio.run_process, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
        ))  # fmt: skip
        printed = b""
        with trio.fail_after(20):
            while b"\n" not in printed:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "ambit dashboard exited before printing its URL"
                printed += chunk
        url = printed.decode().splitlines()[0].rpartition(" ")[2]
        where, _, login = url.removeprefix("http://127.0.0.1:").partition("/")
        yield int(where), "/" + login
        nursery.cancel_scope.cancel()


def _cluster_role(name: str, user: str) -> tuple[Obj, Obj]:
    namespace, account = user.split(":")[2:]
    role = {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [{"apiGroups": ["ambit.io"], "resources": ["meshsnapshots"],
                       "verbs": ["get"]}]}  # fmt: skip
    binding = {"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": account,
                             "namespace": namespace}]}  # fmt: skip
    return role, binding


async def test_the_dashboard_is_served_to_whom_rbac_lets_read_the_mesh(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    port = free_port()
    plane = PlaneProcess(
        tmp_path / "plane",
        ["--source", "kubernetes", "--kubeconfig", str(kube_cluster.kubeconfig),
         "--no-leader-election", "--tap-kubernetes", "--tap-port", str(port)],
        {},
    )  # fmt: skip
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "viewer", "namespace": kube_ns}}  # fmt: skip
    user = f"system:serviceaccount:{kube_ns}:viewer"
    grant = f"dashboard-{kube_ns}"
    with trio.fail_after(90):
        await kube_admin.create(account)
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}  # fmt: skip
        answer = await kube_admin.post_subresource(
            "v1", "ServiceAccount", "viewer", "token", request, kube_ns
        )
        kubeconfig = tmp_path / "viewer.kubeconfig"
        write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.ca_file,
                         answer["status"]["token"])  # fmt: skip
        await kube_admin.create(_role(f"roots-{kube_ns}", "default", "", ["configmaps"], ["get"]))
        await kube_admin.create(_binding(f"roots-{kube_ns}", "default", user))
        try:
            async with running(plane):
                roots = (plane.ca_dir / "root-cert.pem").read_text()

                async def published() -> bool:
                    try:
                        found = await kube_admin.get("v1", "ConfigMap", ROOT_CONFIG_MAP, "default")
                    except NotFound:
                        return False
                    return roots.strip() in str(found["data"][ROOT_CONFIG_MAP_KEY])

                await wait_for(published, seconds=30)
                async with dashboard(kubeconfig, port) as (local, login):
                    logged = await ask(local, login)
                    assert logged.status == 303
                    cookie = logged.headers["set-cookie"].partition(";")[0]
                    refused = await ask(local, "/v1/dashboard", cookie=cookie)
                    assert refused.status == 403
                    said = json.loads(refused.body)["error"]
                    assert f"{user} may not get meshsnapshots.ambit.io" in said, said

                    for obj in _cluster_role(grant, user):
                        await kube_admin.create(obj)

                    async def served() -> bool:
                        answer = await ask(local, "/v1/dashboard", cookie=cookie)
                        return answer.status == 200 and json.loads(answer.body)["version"] >= 1

                    await wait_for(
                        served, seconds=20, interval=0.5
                    )  # RBAC's cache may take a moment
                    page = await ask(local, "/dashboard/", cookie=cookie)
                    assert page.status == 200
                    assert b"app.js" in page.body
        finally:
            for kind, name, ns in (("ClusterRoleBinding", grant, None),
                                   ("ClusterRole", grant, None),
                                   ("RoleBinding", f"roots-{kube_ns}", "default"),
                                   ("Role", f"roots-{kube_ns}", "default")):  # fmt: skip
                with suppress(NotFound):
                    await kube_admin.delete(RBAC, kind, name, ns)
