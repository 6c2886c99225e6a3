"""End-to-end fixtures: real local clusters driven through the ``ambit`` command.

Tests marked ``root`` are skipped, with the reason, unless they run as root with
``ip``, ``iptables`` and ``iptables-restore`` available. Every cluster gets its
own state directory under ``tmp_path`` and its own random CIDRs, and is always
removed by ``ambit down`` in the fixture's finalizer, which then checks that no
namespace, link, host route, host iptables rule or recorded process of it is left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from k8s.local.state import ProcessRecord, StateRecord, is_alive, read_state
from mesh import cgroups

REPO = Path(__file__).resolve().parents[2]
COMMAND_SECONDS = 30.0


def root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates network namespaces, links and iptables rules"
    tools = ("ip", "iptables", "iptables-restore", "iptables-save")
    missing = [t for t in tools if not shutil.which(t)]
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
        self,
        *args: str,
        seconds: float = COMMAND_SECONDS,
        env: Mapping[str, str] | None = None,
        run_as: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        """``ambit ARGS`` for this cluster; ``env`` replaces variables of the environment,
        ``run_as`` prefixes the command (e.g. ``setpriv ...`` to drop root)."""
        env = {
            **os.environ, "AMBIT_STATE_DIR": str(self.state_dir), "PYTHONPATH": str(REPO),
            **(env or {}),
        }  # fmt: skip
        with trio.fail_after(seconds):
            result = await trio.run_process(
                [*run_as, sys.executable, "-m", "ambit.cli", *args],
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

    async def ztunnel_events(self, node: str, event: str) -> list[dict[str, Any]]:
        """The JSON lines of ``ambit logs ztunnel/NODE`` whose event is ``event``."""
        result = await self.ambit("logs", f"ztunnel/{node}")
        assert result.returncode == 0, result.stderr.decode()
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith(b"{")]
        return [line for line in lines if line.get("event") == event]

    async def get(self, kind: str, *args: str) -> Any:
        result = await self.ambit("get", kind, "-o", "json", *args)
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    async def exec(
        self, pod: str, *argv: str, namespace: str = "demo", seconds: float = COMMAND_SECONDS
    ) -> subprocess.CompletedProcess[bytes]:
        return await self.ambit("exec", "-n", namespace, pod, "--", *argv, seconds=seconds)

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
            found += [f"cgroup {root}/amb-{cluster_id}" for root in cgroups.ROOTS
                      if (root / f"amb-{cluster_id}").exists()]  # fmt: skip
        processes: set[ProcessRecord] = set()
        for record in self.records:
            processes.update(record.processes)
            if record.daemon:
                processes.add(record.daemon)
        found += [f"process {p.pid} ({p.what})" for p in processes if is_alive(p)]
        for record in self.records:
            found += [f"netns {n}" for n in record.netns if Path(f"/run/netns/{n}").exists()]
            found += [f"link {n}" for n in record.links if Path(f"/sys/class/net/{n}").exists()]
            found += [f"iptables {rule}" for rule in host_rules_of(record)]
            found += [f"route {route}" for route in host_routes_of(record)]
        return sorted(set(found))


_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b")


def _touches(record: StateRecord, line: str) -> bool:
    """Whether ``line`` names the cluster's bridge or veths, or an address in its CIDRs."""
    if re.search(rf"\b(amb-{record.cluster_id}|v{record.cluster_id}[0-9a-f]{{6}})\b", line):
        return True
    ranges = [ipaddress.IPv4Network(record.pod_cidr), ipaddress.IPv4Network(record.service_cidr)]
    for token in _ADDRESS.findall(line):
        try:
            network = ipaddress.IPv4Network(token, strict=False)
        except ValueError:
            continue
        if any(network.overlaps(r) for r in ranges):
            return True
    return False


def host_rules_of(record: StateRecord) -> list[str]:
    """Rules of the host's iptables (every table) that belong to the cluster of ``record``."""
    dump = subprocess.run(
        ["iptables-save"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return [line for line in dump.splitlines() if line.startswith("-A ") and _touches(record, line)]


def host_routes_of(record: StateRecord) -> list[str]:
    """Routes of the host (every table) to or through the cluster of ``record``."""
    return [line for line in host_networks().splitlines() if _touches(record, line)]


# An echo server for pods (python3 -c ECHO_SERVER): every connection gets its bytes back.
ECHO_SERVER = (
    "import socket,threading\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000)); s.listen(16)\n"
    "def serve(c):\n"
    "    while (d := c.recv(65536)): c.sendall(d)\n"
    "    c.close()\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)


async def kill_daemon(cluster: Cluster) -> None:
    """SIGKILL the cluster's local daemon (in local mode it also runs the control plane)."""
    record = read_state(cluster.state_dir / "state.json")
    assert record is not None
    assert record.daemon is not None
    os.kill(record.daemon.pid, signal.SIGKILL)
    with trio.fail_after(5):
        while is_alive(record.daemon):  # noqa: ASYNC110 - not our child: nothing to wait on
            await trio.sleep(0.02)


async def run(argv: Sequence[str], seconds: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    """A command on the host, its output captured, bounded in time."""
    with trio.fail_after(seconds):
        return await trio.run_process(
            list(argv), capture_stdout=True, capture_stderr=True, check=False
        )


async def curl_status(url: str, netns: str | None = None) -> str:
    """The HTTP status curl gets for ``url`` (from the host or inside ``netns``), or "000"."""
    where = ["ip", "netns", "exec", netns] if netns else []
    result = await run(
        [*where, "curl", "-s", "-m", "4", "-o", "/dev/null", "-w", "%{http_code}", url]
    )
    return result.stdout.decode().strip() or "000"


async def config_dump(node_netns: str) -> dict[str, Any]:
    """ztunnel's ``/config_dump``, from the loopback of the node's network namespace."""
    url = "http://127.0.0.1:15000/config_dump"
    result = await run(["ip", "netns", "exec", node_netns, "curl", "-s", "-m", "3", url])
    assert result.returncode == 0, result.stderr.decode()
    dump: dict[str, Any] = json.loads(result.stdout)
    return dump


async def eventually(
    check: Callable[[], Awaitable[bool]], *, seconds: float, poll: float = 0.1
) -> bool:
    """Whether ``check()`` is true in a call that starts within ``seconds`` from now."""
    deadline = trio.current_time() + seconds
    while trio.current_time() <= deadline:
        if await check():
            return True
        await trio.sleep(poll)
    return False


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
