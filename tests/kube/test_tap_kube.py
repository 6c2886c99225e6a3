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

from tests.kube.client import KubeAdmin
from tests.kube.cluster import REPO, Cluster, write_kubeconfig
from tests.kube.operator_access import binding, operator_api, role

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
    with trio.fail_after(90):
        async with operator_api(kube_cluster, kube_admin, kube_ns, "tapper", tmp_path) as caller:
            target = f"pod/{kube_ns}/server"
            code, err = await tap(caller.kubeconfig, caller.port, target)
            assert code == 1, err
            refusal = f"{caller.user} may not watch pods/tap.ambit.io server in namespace {kube_ns}"
            assert refusal in err

            await kube_admin.create(role("tap", kube_ns, "ambit.io", ["pods/tap"], ["watch"]))
            await kube_admin.create(binding("tap", kube_ns, caller.user))
            code, err = await tap(caller.kubeconfig, caller.port, target)
            assert code == -1, err  # the tap opened and waits for traffic
            wrong = tmp_path / "wrong.kubeconfig"
            write_kubeconfig(wrong, kube_cluster.server, kube_cluster.ca_file, "not-a-token")
            code, err = await tap(wrong, caller.port, target)
            assert code == 1
            assert "401" in err or "Unauthorized" in err, err
