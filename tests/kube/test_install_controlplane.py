"""The control plane with exactly the permissions ``ambit install`` gives it: ``ambit
controlplane --source kubernetes`` as the ``ambit-controlplane`` ServiceAccount (a token
of it, as the kubelet would mount one) lists and watches every kind and becomes ready,
and stops cleanly on SIGTERM. A permission it lacks would keep it from ever being
ready (a kind not listed is never published), and its CA keeps its keys in the Secret it
may create."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ca.secret_keys import SECRET_NAME
from mesh.constants import SYSTEM_NAMESPACE
from tests.kube.client import KubeAdmin, Obj
from tests.kube.cluster import REPO, Cluster, free_port, write_kubeconfig
from tests.kube.installing import installed
from tests.kube.test_install import NAME

pytestmark = pytest.mark.kube
__all__ = ["installed"]  # the fixture, used here

READY_SECONDS = 60.0


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


async def test_the_control_plane_runs_with_the_permissions_it_is_given(
    kube_admin: KubeAdmin, kube_cluster: Cluster, installed: list[Obj], tmp_path: Path
) -> None:
    with trio.fail_after(20):
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 600}}  # fmt: skip
        answer = await kube_admin.post_subresource(
            "v1", "ServiceAccount", NAME, "token", request, SYSTEM_NAMESPACE
        )
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, kube_cluster.server, kube_cluster.ca_file,
                     answer["status"]["token"])  # fmt: skip
    metrics = free_port()
    argv = [
        sys.executable, "-m", "ambit.cli", "--log-format", "json", "controlplane",
        "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
        "--host", "127.0.0.1",
        "--ca-port", str(free_port()), "--config-port", str(free_port()),
        "--metrics-port", str(metrics), "--drain-seconds", "1",
    ]  # fmt: skip
    log = tmp_path / "controlplane.log"
    async with await trio.open_file(log, "wb") as out:
        process = await trio.lowlevel.open_process(
            argv, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
            stdout=out.wrapped, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with trio.fail_after(READY_SECONDS):
            while not await trio.to_thread.run_sync(ready, metrics):
                assert process.poll() is None, log.read_text()
                await trio.sleep(0.2)
        # Its CA made its keys where every replica finds them (ca.secret_keys).
        with trio.fail_after(10):
            secret = await kube_admin.get("v1", "Secret", SECRET_NAME, SYSTEM_NAMESPACE)
        assert "root-cert.pem" in secret["data"]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    failed = [e for e in events if e.get("event") == "kube_request_failed"]
    assert failed == [], failed
    assert "controlplane_started" in {e.get("event") for e in events}
