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

from tests.integration.test_dashboard_proxy import ask
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster
from tests.kube.operator_access import RBAC, binding, operator_api

pytestmark = pytest.mark.kube


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
    """A ClusterRole letting ``user`` get meshsnapshots of ambit.io, and its binding."""
    rule = {"apiGroups": ["ambit.io"], "resources": ["meshsnapshots"], "verbs": ["get"]}
    role = {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": name},
            "rules": [rule]}  # fmt: skip
    return role, binding(name, None, user, cluster=True)


async def test_the_dashboard_is_served_to_whom_rbac_lets_read_the_mesh(
    kube_cluster: Cluster, kube_admin: KubeAdmin, kube_ns: str, tmp_path: Path
) -> None:
    grant = f"dashboard-{kube_ns}"
    with trio.fail_after(90):
        try:
            async with (
                operator_api(kube_cluster, kube_admin, kube_ns, "viewer", tmp_path) as caller,
                dashboard(caller.kubeconfig, caller.port) as (local, login),
            ):
                logged = await ask(local, login)
                assert logged.status == 303
                cookie = logged.headers["set-cookie"].partition(";")[0]
                refused = await ask(local, "/v1/dashboard", cookie=cookie)
                assert refused.status == 403
                said = json.loads(refused.body)["error"]
                assert f"{caller.user} may not get meshsnapshots.ambit.io" in said, said

                for obj in _cluster_role(grant, caller.user):
                    await kube_admin.create(obj)

                async def served() -> bool:
                    answer = await ask(local, "/v1/dashboard", cookie=cookie)
                    return answer.status == 200 and json.loads(answer.body)["version"] >= 1

                await wait_for(served, seconds=20, interval=0.5)  # RBAC's cache may lag
                page = await ask(local, "/dashboard/", cookie=cookie)
                assert page.status == 200
                assert b"app.js" in page.body
        finally:
            for kind in ("ClusterRoleBinding", "ClusterRole"):
                with suppress(NotFound):
                    await kube_admin.delete(RBAC, kind, grant, None)
