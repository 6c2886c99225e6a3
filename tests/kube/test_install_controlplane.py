"""The control plane with exactly the permissions ``ambit install`` gives it: ``ambit
controlplane --source kubernetes`` as the ``ambit-controlplane`` ServiceAccount (a token
of it, as the kubelet would mount one) lists and watches every kind and becomes ready,
and stops cleanly on SIGTERM. A permission it lacks would keep it from ever being
ready (a kind not listed is never published), and its CA keeps its keys in the Secret it
may create. As the Lease's holder it deploys a waypoint Gateway (its Deployment, and the
trust bundle its pod mounts, equal to the CA's root) and writes the Gateway's status,
with nothing refused on the way."""

from __future__ import annotations

import base64
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
from tests.kube.client import KubeAdmin, NotFound, Obj, wait_for
from tests.kube.cluster import REPO, Cluster, free_port, write_kubeconfig
from tests.kube.installing import installed
from tests.kube.test_deployer import GATEWAY_API, gateway
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
    kube_admin: KubeAdmin,
    kube_cluster: Cluster,
    installed: list[Obj],
    gateway_crds: list[str],
    kube_ns: str,
    tmp_path: Path,
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
        # The leader's work: a waypoint deployed, the roots it mounts, its status.
        await kube_admin.create(gateway(kube_ns, "waypoint"))
        with trio.fail_after(READY_SECONDS):
            deployment = await wait_for(
                lambda: found(kube_admin, "apps/v1", "Deployment", "waypoint", kube_ns),
                seconds=READY_SECONDS,
            )
            roots = await wait_for(
                lambda: found(kube_admin, "v1", "ConfigMap", "ambit-ca-root-cert", kube_ns),
                seconds=READY_SECONDS,
            )
            accepted = await wait_for(lambda: condition(kube_admin, kube_ns, "Accepted"),
                                      seconds=READY_SECONDS)  # fmt: skip
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "waypoint"
        assert (
            roots["data"]["root-cert.pem"]
            == base64.b64decode(secret["data"]["root-cert.pem"]).decode()
        )
        assert accepted["status"] == "True"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # What it could not do (the cluster is shared: other tests' objects have problems of
    # their own, which are theirs to report, not failures of this control plane).
    failures = {
        "kube_request_failed", "status_write_failed", "waypoint_apply_failed",
        "waypoint_delete_failed", "root_cert_write_failed", "event_not_written",
        "leader_election_failed", "istio_kinds_unavailable", "ca_secret_unavailable",
    }  # fmt: skip
    failed = [e for e in events if e.get("event") in failures]
    assert failed == [], failed
    assert "controlplane_started" in {e.get("event") for e in events}


async def found(admin: KubeAdmin, api_version: str, kind: str, name: str, ns: str) -> Obj | None:
    try:
        return await admin.get(api_version, kind, name, ns)
    except NotFound:
        return None


async def condition(admin: KubeAdmin, ns: str, kind: str) -> Obj | None:
    """The waypoint Gateway's condition ``kind``, once the control plane wrote it."""
    doc = await found(admin, GATEWAY_API, "Gateway", "waypoint", ns)
    conditions = ((doc or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind and c["reason"] != "Pending"),
                None)  # fmt: skip
