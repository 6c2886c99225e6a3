"""``ambit controlplane --source files`` (and ``kubernetes`` without an API server) as an
operator runs it: manifests in a directory,
node tokens in a file, a ztunnel-like subscriber on the config stream, the status file,
the metrics port; and the real command, stopped with SIGTERM. Loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ca import CertificateAuthority
from k8s.controlplane_process import ControlPlaneConfig, Ports, run_controlplane
from mesh.backoff import Backoff
from mesh.ca_client import CaClient
from mesh.certs import open_certificate_manager
from mesh.config_stream import ConfigClient
from mesh.hbone.client import open_hbone_pool
from mesh.identity import control_plane_identity, ztunnel_identity
from mesh.model import MeshSnapshot
from tests.waiting import wait_until

TD = "cluster.local"
REPO = Path(__file__).resolve().parents[2]

OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {ambit.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, image: web}]
status: {podIP: 10.244.1.10, phase: Running}
"""

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  rules: [{from: [{source: {principal: [x]}}]}]
"""


def write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[ControlPlaneConfig, Ports]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write(manifests / "apps.yaml", OBJECTS)
    write(tmp_path / "tokens.json", json.dumps({"node-1": "secret-1"}))
    config = ControlPlaneConfig(
        files=(manifests,),
        ca_dir=tmp_path / "ca",
        tokens_file=tmp_path / "tokens.json",
        status_file=tmp_path / "status.json",
        host="127.0.0.1",
        ca_port=0,
        config_port=0,
        metrics_port=0,
        trust_domain=TD,
        poll=0.05,
        coalesce=0.02,
    )
    async with trio.open_nursery() as nursery:
        ports: Ports = await nursery.start(lambda task_status: run_controlplane(
            config, task_status=task_status
        ))  # fmt: skip
        yield config, ports
        nursery.cancel_scope.cancel()


def policy_names(snapshot: MeshSnapshot) -> list[str]:
    return [a.name for a in snapshot.authorizations]


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_files_in_a_directory_become_config_status_and_metrics(tmp_path: Path) -> None:
    received: list[MeshSnapshot] = []

    async def on_update(snapshot: MeshSnapshot) -> None:
        received.append(snapshot)

    with trio.fail_after(30):
        async with running(tmp_path) as (config, ports):
            await wait_until(lambda: config.status_file is not None and config.status_file.exists())
            # The status file may be written before the first publish opens /ready: wait
            # for the answer, bounded, rather than take the first one.
            status, body = 0, b""
            for _ in range(100):
                status, body = await http_get(ports.metrics, "/ready")
                if status == 200:
                    break
                await trio.sleep(0.05)
            assert status == 200, body
            bundle = CertificateAuthority.load(tmp_path / "ca").trust_bundle
            ca = CaClient(("127.0.0.1", ports.ca), token="secret-1", bundle=bundle)
            async with open_certificate_manager(ca) as certs:
                own = await certs.fetch_now(ztunnel_identity(TD))
                async with open_hbone_pool(lambda _s: own) as pool, trio.open_nursery() as n:
                    client = ConfigClient(
                        pool, source=own.identity, address=("127.0.0.1", ports.config),
                        expected=control_plane_identity(TD), node="node-1", token="secret-1",
                        on_update=on_update, backoff=Backoff(initial=0.05, maximum=0.2),
                    )  # fmt: skip
                    await n.start(client.run)
                    assert [w.name for w in received[-1].workloads] == ["web"]
                    assert policy_names(received[-1]) == []

                    # A new file: its good policy is published; the bad one is refused,
                    # and both show in the status file.
                    write(config.files[0] / "policy.yaml", POLICY)
                    await wait_until(lambda: bool(received[-1].authorizations))
                    assert policy_names(received[-1]) == ["get-only"]
                    assert config.status_file is not None

                    def status_of() -> dict[str, Any]:
                        assert config.status_file is not None
                        doc: dict[str, Any] = json.loads(config.status_file.read_text())
                        return doc

                    await wait_until(lambda: status_of()["refused"] != [])
                    doc = status_of()
                    (refused,) = doc["refused"]
                    assert "(AuthorizationPolicy shop/typo): spec.rules[0].from[0]" in refused
                    (condition,) = doc["objects"]["AuthorizationPolicy/shop/get-only"]["conditions"]
                    assert condition["type"] == "ambit.io/ZtunnelAccepted"
                    assert condition["reason"] == "L7AttributesIgnored"

                    status, body = await http_get(ports.metrics, "/metrics")
                    assert status == 200
                    text = body.decode()
                    assert "pilot_xds 1.0" in text
                    assert 'ambit_config_objects{kind="AuthorizationPolicy"} 1.0' in text
                    assert "ambit_config_refused_documents 1.0" in text
                    status, body = await http_get(ports.metrics, "/debug/syncz")
                    (node,) = json.loads(body)
                    assert node["node"] == "node-1"
                    assert node["connected"] is True

                    # Removing a file removes its objects.
                    (config.files[0] / "policy.yaml").unlink()
                    await wait_until(lambda: received[-1].authorizations == ())
                    n.cancel_scope.cancel()


async def test_a_node_token_added_later_is_accepted(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running(tmp_path) as (config, ports):
            bundle = CertificateAuthority.load(tmp_path / "ca").trust_bundle
            assert config.tokens_file is not None
            write(config.tokens_file, json.dumps({"node-1": "secret-1", "node-2": "secret-2"}))
            ca = CaClient(("127.0.0.1", ports.ca), token="secret-2", bundle=bundle)
            async with open_certificate_manager(ca) as certs:

                async def issued() -> bool:
                    try:
                        await certs.fetch_now(ztunnel_identity(TD))
                    except Exception:
                        return False
                    return True

                for _ in range(50):
                    if await issued():
                        break
                    await trio.sleep(0.05)
                assert certs.get(ztunnel_identity(TD)) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_command_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "apps.yaml", OBJECTS)
    metrics = free_port()
    argv = [
        sys.executable, "-m", "ambit.cli", "--log-format", "json", "controlplane",
        "-f", str(tmp_path / "m"), "--ca-dir", str(tmp_path / "ca"), "--host", "127.0.0.1",
        "--ca-port", str(free_port()), "--config-port", str(free_port()),
        "--metrics-port", str(metrics),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            ready = False
            for _ in range(200):
                try:
                    ready = (await http_get(metrics, "/ready"))[0] == 200
                except OSError:
                    ready = False
                if ready:
                    break
                await trio.sleep(0.05)
            assert ready, "the control plane never became ready"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.stdout is not None
    output = await process.stdout.receive_some(1 << 20)
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith(b"{")]
    assert "controlplane_started" in events
    assert "controlplane_stopping" in events
    assert "control_plane_drained" in events


async def test_kubernetes_source_without_a_kubeconfig_says_so() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "ambit.cli", "controlplane", "--source", "kubernetes",
         "--kubeconfig", "/nonexistent/config", "--ca-dir", "/nonexistent",
         "--host", "127.0.0.1", "--ca-port", "0", "--config-port", "0", "--metrics-port", "0"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_stderr=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert b"the kubeconfig /nonexistent/config does not exist" in result.stderr


async def test_kubernetes_source_refuses_files() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "ambit.cli", "controlplane", "--source", "kubernetes",
         "-f", "x.yaml", "--ca-dir", "/nonexistent"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_stderr=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert b"-f is for --source files" in result.stderr


async def test_kubernetes_source_unreachable_is_never_ready(tmp_path: Path) -> None:
    """Until every kind is listed nothing is published, and /ready says which are not."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:{closed}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    config = ControlPlaneConfig(
        files=(), ca_dir=tmp_path / "ca", source="kubernetes", kubeconfig=kubeconfig,
        host="127.0.0.1", ca_port=0, config_port=0, metrics_port=0, trust_domain=TD,
    )  # fmt: skip
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ports: Ports = await nursery.start(lambda task_status: run_controlplane(
                config, task_status=task_status
            ))  # fmt: skip
            status, body = await http_get(ports.metrics, "/ready")
            assert status == 503
            assert b"not listed yet: Namespace, ServiceAccount, Pod, Service" in body
            nursery.cancel_scope.cancel()
