"""``ambit tap --kubeconfig PATH --server HOST:PORT`` against the control plane on the real
API server (``--source kubernetes --tap-kubernetes``): the caller is who its kubeconfig's
token says (TokenReview), and may tap only what RBAC lets it watch on ``pods/tap`` of
``ambit.io`` (SubjectAccessReview): refused with the verb and resource named, then, once a
Role grants it, the tap opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster, free_port, write_kubeconfig
from tests.kube.planes import PlaneProcess, running

pytestmark = pytest.mark.kube


async def tap(kubeconfig: Path, port: int, target: str) -> tuple[int, str]:
    """``ambit tap TARGET`` as that kubeconfig's user for up to 4 s: (exit code, stderr)."""
    argv = [sys.executable, "-m", "ambit.cli", "tap", target, "--kubeconfig", str(kubeconfig),
            "--server", f"127.0.0.1:{port}"]  # fmt: skip
    with trio.move_on_after(4):
        done = await trio.run_process(
            argv, capture_stdout=True, capture_stderr=True, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return done.returncode, done.stderr.decode()
    return -1, "still tapping after 4 s"


async def test_tap_asks_the_api_server_who_may_tap(
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
               "metadata": {"name": "tapper", "namespace": kube_ns}}  # fmt: skip
    with trio.fail_after(90):
        await kube_admin.create(account)
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}  # fmt: skip
        answer = await kube_admin.post_subresource(
            "v1", "ServiceAccount", "tapper", "token", request, kube_ns
        )
        token = answer["status"]["token"]
        kubeconfig = tmp_path / "tapper.kubeconfig"
        write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.ca_file, token)
        user = f"system:serviceaccount:{kube_ns}:tapper"
        # The trust bundle it reads (the control plane publishes it to every namespace).
        await kube_admin.create(_role("read-roots", "default", "", ["configmaps"], ["get"]))
        await kube_admin.create(_binding("read-roots", "default", user))
        async with running(plane):
            roots = (plane.ca_dir / "root-cert.pem").read_text()

            async def published() -> bool:
                try:
                    found = await kube_admin.get("v1", "ConfigMap", ROOT_CONFIG_MAP, "default")
                except NotFound:
                    return False
                return roots.strip() in str(found["data"][ROOT_CONFIG_MAP_KEY])

            await wait_for(published, seconds=30)
            target = f"pod/{kube_ns}/server"
            code, err = await tap(kubeconfig, port, target)
            assert code == 1, err
            assert f"{user} may not watch pods/tap.ambit.io server in namespace {kube_ns}" in err

            role = _role("tap", kube_ns, "ambit.io", ["pods/tap"], ["watch"])
            await kube_admin.create(role)
            await kube_admin.create(_binding("tap", kube_ns, user))
            code, err = await tap(kubeconfig, port, target)
            assert code == -1, err  # the tap opened and waits for traffic
            wrong = tmp_path / "wrong.kubeconfig"
            write_kubeconfig(wrong, kube_cluster.server, kube_cluster.ca_file, "not-a-token")
            code, err = await tap(wrong, port, target)
            assert code == 1
            assert "401" in err or "Unauthorized" in err, err
        for kind, name, ns in (("RoleBinding", "read-roots", "default"),
                               ("Role", "read-roots", "default")):  # fmt: skip
            await kube_admin.delete("rbac.authorization.k8s.io/v1", kind, name, ns)


def _role(name: str, ns: str, group: str, resources: list[str], verbs: list[str]) -> Obj:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": [{"apiGroups": [group], "resources": resources, "verbs": verbs}]}  # fmt: skip


def _binding(name: str, ns: str, user: str) -> Obj:
    namespace, account = user.split(":")[2:]
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account,
                          "namespace": namespace}]}  # fmt: skip
