"""End-to-end fixtures: real local clusters driven through the ``ambit`` command.

Tests marked ``root`` are skipped, with the reason, unless they run as root with
``ip``, ``iptables`` and ``iptables-restore`` available. Every cluster gets its
own state directory under ``tmp_path`` and its own random CIDRs, and is always
removed by ``ambit down`` in the fixture's finalizer, which then checks that no
namespace, link or recorded process of it is left.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from k8s.local.state import ProcessRecord, StateRecord, is_alive, read_state

REPO = Path(__file__).resolve().parents[2]
COMMAND_SECONDS = 30.0


def root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, links and iptables rules"
    missing = [t for t in ("ip", "iptables", "iptables-restore") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)} (install iproute2 and iptables)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None:
        reason = root_skip_reason()
        if reason:
            pytest.skip(reason)


def host_networks() -> str:
    return subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout


def free_octet() -> int:
    """A second octet N such that 10.N.0.0/16 is not used on this host."""
    routes = host_networks()
    for _ in range(100):
        octet = random.randint(128, 250)
        if f"10.{octet}." not in routes:
            return octet
    raise RuntimeError("no free 10.N.0.0/16 for a test cluster")


class Cluster:
    """One test cluster: its state directory, CIDRs, and the ``ambit`` command for it."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_dir = tmp_path / "state"
        self.tmp_path = tmp_path
        self.octet = free_octet()
        self.records: list[StateRecord] = []

    @property
    def pod_cidr(self) -> str:
        return f"10.{self.octet}.0.0/17"

    @property
    def service_cidr(self) -> str:
        return f"10.{self.octet}.128.0/17"

    def manifest(self, name: str, text: str) -> Path:
        path = self.tmp_path / name
        path.write_text(text)
        return path

    async def ambit(
        self, *args: str, seconds: float = COMMAND_SECONDS
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "AMBIT_STATE_DIR": str(self.state_dir), "PYTHONPATH": str(REPO)}
        with trio.fail_after(seconds):
            result = await trio.run_process(
                [sys.executable, "-m", "ambit.cli", *args],
                capture_stdout=True, capture_stderr=True, check=False, env=env, cwd=REPO,
            )  # fmt: skip
        self.remember()
        return result

    async def up(self, *files: Path, expect_ok: bool = True) -> subprocess.CompletedProcess[bytes]:
        args = [arg for f in files for arg in ("-f", str(f))]
        for _ in range(5):
            result = await self.ambit(
                "up", *args, "--pod-cidr", self.pod_cidr, "--service-cidr", self.service_cidr
            )
            if b"addresses in use" not in result.stderr:
                break
            self.octet = free_octet()  # raced with another cluster: pick again
        if expect_ok:
            assert result.returncode == 0, result.stderr.decode()
        return result

    async def get(self, kind: str, *args: str) -> Any:
        result = await self.ambit("get", kind, "-o", "json", *args)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    async def exec(
        self, pod: str, *argv: str, namespace: str = "demo"
    ) -> subprocess.CompletedProcess[bytes]:
        return await self.ambit("exec", "-n", namespace, pod, "--", *argv)

    def remember(self) -> None:
        try:
            record = read_state(self.state_dir / "state.json")
        except Exception:
            return
        if record is not None:
            self.records.append(record)

    def leftovers(self) -> list[str]:
        """Namespaces, links and processes of any cluster this test made that still exist."""
        found: list[str] = []
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        for cluster_id in {r.cluster_id for r in self.records}:
            found += [f"netns {line}" for line in netns.splitlines() if f"amb-{cluster_id}" in line]
            found += [
                f"link {line.split(':')[1].strip()}" for line in links.splitlines()
                if f"amb-{cluster_id}" in line or f": v{cluster_id}" in line
            ]  # fmt: skip
            if Path(f"/etc/netns/amb-{cluster_id}").exists():
                found.append(f"/etc/netns/amb-{cluster_id}")
        processes: set[ProcessRecord] = set()
        for record in self.records:
            processes.update(record.processes)
            if record.daemon:
                processes.add(record.daemon)
        found += [f"process {p.pid} ({p.what})" for p in processes if is_alive(p)]
        for record in self.records:
            found += [f"netns {n}" for n in record.netns if Path(f"/run/netns/{n}").exists()]
            found += [f"link {n}" for n in record.links if Path(f"/sys/class/net/{n}").exists()]
        return sorted(set(found))


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    handle = Cluster(tmp_path)
    try:
        yield handle
    finally:
        with trio.CancelScope(shield=True):
            result = await handle.ambit("down")
        assert result.returncode == 0, result.stderr.decode()
        assert handle.leftovers() == []
        assert not handle.state_dir.exists()


def demo_manifest(extra: Sequence[str] = ()) -> str:
    """Namespace ``demo``: a server pod on node-2 behind Service ``server`` (80 -> 8080),
    a client pod on node-1."""
    return "\n---\n".join([DEMO, *extra])


DEMO = """\
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: demo
  labels: {app: server}
spec:
  nodeName: node-2
  serviceAccountName: server-sa
  containers:
  - name: server
    image: ignored
    command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec:
  nodeName: node-1
  containers:
  - name: client
    command: [sleep, "600"]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"""
