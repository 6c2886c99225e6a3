"""``ambit controlplane`` as a child process for tests/kube, and a ztunnel-like
subscriber to its config stream on loopback.

:class:`PlaneProcess` starts the command (``--source files`` or ``--source kubernetes``)
with its own CA directory, node tokens, status file and loopback ports, waits until
``/ready`` answers 200, and stops it by PID (SIGTERM, then SIGKILL); it can be started
again on the same ports and CA (a restart). :func:`ztunnel` subscribes as one node's
ztunnel and collects every snapshot it is sent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

from ca import CertificateAuthority
from mesh.backoff import Backoff
from mesh.config_stream import ConfigClient
from mesh.hbone.client import open_hbone_pool
from mesh.identity import SpiffeId, control_plane_identity, ztunnel_identity
from mesh.model import MeshSnapshot
from tests.kube.client import KubeAdmin
from tests.kube.cluster import REPO, free_port
from tests.kube.kubelet import namespace, pod, set_pod_running, wait_default_service_account

TD = "cluster.local"
READY_SECONDS = 60.0  # imports, the CA, and (kubernetes) listing every kind
STOP_SECONDS = 15.0


class PlaneError(Exception):
    """The control plane exited or never became ready; the message ends with its log."""


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


@dataclass
class PlaneProcess:
    """One control plane's command line, state directory and ports."""

    directory: Path
    source_args: list[str]
    tokens: dict[str, str]  # node -> token (files: a node's; kubernetes: its ztunnel pod's)
    ztunnel: SpiffeId = field(default_factory=lambda: ztunnel_identity(TD))
    ca_port: int = field(default_factory=free_port)
    config_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: trio.Process | None = None

    @property
    def ca_dir(self) -> Path:
        return self.directory / "ca"

    @property
    def status_file(self) -> Path:
        return self.directory / "status.json"

    @property
    def log_file(self) -> Path:
        return self.directory / "controlplane.log"

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.status_file.read_text())
        return doc

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def start(self) -> None:
        """Start the command and wait until ``/ready`` says 200."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tokens_file = self.directory / "tokens.json"
        tokens_file.write_text(json.dumps(self.tokens))
        argv = [
            sys.executable, "-m", "ambit.cli", "--log-format", "json", "controlplane",
            *self.source_args, "--ca-dir", str(self.ca_dir), "--tokens-file", str(tokens_file),
            "--status-file", str(self.status_file), "--host", "127.0.0.1",
            "--ca-port", str(self.ca_port), "--config-port", str(self.config_port),
            "--metrics-port", str(self.metrics_port), "--drain-seconds", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with _append(self.log_file) as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        with trio.move_on_after(READY_SECONDS):
            while self.process.returncode is None:
                try:
                    if (await _http_get(self.metrics_port, "/ready"))[0] == 200:
                        return
                except OSError:
                    pass
                await trio.sleep(0.05)
        await self.stop()
        raise PlaneError(f"the control plane never became ready\n{self.log_tail()}")

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_SECONDS``; waits for the exit either way."""
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_SECONDS):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def running(plane: PlaneProcess) -> AsyncIterator[PlaneProcess]:
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


@asynccontextmanager
async def ztunnel(plane: PlaneProcess, node: str) -> AsyncIterator[list[MeshSnapshot]]:
    """Subscribe as ``node``'s ztunnel (its token from the plane's tokens); every snapshot
    received, in order (the first is in when this yields). Reconnects with a short
    backoff, so it outlives a restart of the plane on the same ports and CA."""
    received: list[MeshSnapshot] = []

    async def on_update(snapshot: MeshSnapshot) -> None:
        received.append(snapshot)

    token = plane.tokens[node]
    # The ztunnel's certificate straight from the plane's CA directory (what the CA signs
    # on Kubernetes is tests/kube/test_ca.py's); its token proves its node.
    own = CertificateAuthority.load(plane.ca_dir).issue_workload_certificate(
        plane.ztunnel, caller=f"test:{node}"
    )
    async with open_hbone_pool(lambda _s: own) as pool, trio.open_nursery() as nursery:
        client = ConfigClient(
            pool, source=own.identity, address=("127.0.0.1", plane.config_port),
            expected=control_plane_identity(TD), node=node, token=token,
            on_update=on_update, backoff=Backoff(initial=0.05, maximum=0.2),
        )  # fmt: skip
        await nursery.start(client.run)
        yield received
        nursery.cancel_scope.cancel()


async def ztunnel_pods(admin: KubeAdmin, ns: str, nodes: list[str]) -> dict[str, str]:
    """What the node side would run: namespace ``ns`` (made here) with a ``ztunnel``
    ServiceAccount and a running pod of it on each of ``nodes``; each node's token as
    the kubelet projects it into that pod (bound to it, audience ``ambit-ca``)."""
    await admin.create(namespace(ns))
    await wait_default_service_account(admin, ns)
    account = {"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "ztunnel", "namespace": ns}}  # fmt: skip
    await admin.create(account)
    tokens = {}
    for i, node in enumerate(nodes):
        name = f"ztunnel-{i}"
        created = await admin.create(pod(ns, name, node=node, service_account="ztunnel"))
        await set_pod_running(admin, ns, name, f"10.254.0.{i + 1}")
        request = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["ambit-ca"], "expirationSeconds": 3600, "boundObjectRef": {
                "apiVersion": "v1", "kind": "Pod", "name": name,
                "uid": created["metadata"]["uid"]}},
        }  # fmt: skip
        answer = await admin.post_subresource("v1", "ServiceAccount", "ztunnel", "token",
                                              request, ns)  # fmt: skip
        tokens[node] = str(answer["status"]["token"])
    return tokens


def in_namespace(snapshot: MeshSnapshot, namespace: str) -> dict[str, list[Any]]:
    """The snapshot's JSON form, each collection's entries of ``namespace`` only, no
    version: what two control planes fed the same objects of one namespace must agree
    on, whatever else their sources hold (the cluster's other namespaces)."""
    doc = snapshot.to_json()
    assert isinstance(doc, dict)
    return {
        name: [e for e in entries if isinstance(e, dict) and e.get("namespace") == namespace]
        for name, entries in doc.items()
        if name != "version" and isinstance(entries, list)
    }


def conditions_in(status: dict[str, Any], namespace: str) -> dict[str, list[tuple[str, ...]]]:
    """The status file's conditions of ``namespace``'s objects, without times, uids and
    generations (which differ between a store fed by files and one fed by the API)."""
    return {
        ref: [(c["type"], c["status"], c["reason"], c["message"]) for c in entry["conditions"]]
        for ref, entry in status["objects"].items()
        if ref.split("/")[1] == namespace
    }
