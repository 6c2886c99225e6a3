"""A flood of connect-and-close connections from one source against a meshed pod's
plaintext port: ztunnel holds a bounded number of descriptors, sheds the rest (refused
at once, or the oldest half-closed cut), counts and summarises what it shed, and another
client's requests through the same ztunnel all succeed.

Everything runs in a network namespace of the test's own (``unshare --net``) on its
loopback: one DNAT rule brings the clients' connections to 127.0.0.3:15006 as capture
would (so ``SO_ORIGINAL_DST`` names the app's port), and the apps live in the process
that holds the namespace, so the descriptors this process holds are ztunnel's and the
clients'. Needs root (namespaces, iptables, ztunnel's sockets)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from ca import CertificateAuthority, LocalSigner
from mesh.certs import open_certificate_manager
from mesh.metrics import TcpMetrics
from mesh.netns import NetworkNamespace
from mesh.pending import PendingLimits
from tests.builders import snapshot, workload
from tests.waiting import wait_until
from ztunnel.telemetry import ZtunnelTelemetry
from ztunnel.ztunnel import Ztunnel

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a network namespace, iptables"),
    pytest.mark.skipif(
        not all(map(shutil.which, ("unshare", "ip", "iptables-restore"))),
        reason="needs unshare, ip and iptables-restore",
    ),
]

POD = workload("b", ip="127.0.0.3", sa="server")
HEALTHY = workload("healthy", ip="127.0.0.5", meshed=False)  # a known client, not meshed
FLOOD_SRC = "127.0.0.9"  # unknown to the mesh
ECHO_PORT, NEVER_ACCEPTS_PORT, NEVER_READS_PORT = 18080, 18081, 18082
LIMITS = PendingLimits(
    per_source_pending=64, pending=256, per_source_half_closed=64, half_closed=256
)
FLOOD = 3000
FLOOD_WORKERS = 32
PAYLOAD = os.urandom(64 * 1024)

# Capture's job for this test: every client connection to the apps' ports goes to 15006
# (ztunnel's own, marked, dials to the apps go through).
RULES = f"""*nat
-A OUTPUT -p tcp -d {POD.ip} --dport {ECHO_PORT}:{NEVER_READS_PORT} -m mark ! --mark 0x539 \
-j DNAT --to-destination {POD.ip}:15006
COMMIT
"""

# The apps, in the namespace's own process: an echo server; one that never accepts (its
# queue of 4 fills, then dials to it wait); one that accepts and never reads.
APPS = f"""
import socket, sys, threading

def listen(port, backlog=128):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{POD.ip}", port))
    s.listen(backlog)
    return s

def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

def serve(listener, handle):
    while True:
        conn, _ = listener.accept()
        handle(conn)

held = []
threading.Thread(target=serve, daemon=True, args=(listen({ECHO_PORT}),
    lambda c: threading.Thread(target=echo, args=(c,), daemon=True).start())).start()
never_accepts = listen({NEVER_ACCEPTS_PORT}, 4)
threading.Thread(target=serve, daemon=True, args=(listen({NEVER_READS_PORT}), held.append)).start()
print("ready", flush=True)
sys.stdin.readline()
"""


@contextlib.asynccontextmanager
async def namespace_with_apps(tmp: Path) -> AsyncIterator[NetworkNamespace]:
    """A new network namespace, its loopback up, the DNAT rule, the apps; gone afterwards.
    The namespace is named by its path (``/proc/PID/ns/net``)."""
    rules = tmp / "rules"
    rules.write_text(RULES)
    script = f'ip link set lo up && iptables-restore < {rules} && exec {sys.executable} -c "$0"'
    child = await trio.lowlevel.open_process(
        ["unshare", "--net", "sh", "-c", script, APPS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        said = b""
        with trio.fail_after(10):
            while not said.endswith(b"\n") and (data := await child.stdout.receive_some()):
                said += data
        assert said == b"ready\n"
        with NetworkNamespace.open(f"/proc/{child.pid}/ns/net") as netns:
            yield netns
    finally:
        await child.stdin.aclose()
        with trio.move_on_after(5):
            await child.wait()
        if child.returncode is None:
            child.kill()
            await child.wait()
        await child.stdout.aclose()


@dataclass
class Flood:
    connected: int = 0
    not_connected: int = 0


async def flood(netns: NetworkNamespace, port: int, result: Flood) -> None:
    """``FLOOD`` connections from ``FLOOD_SRC``, each closed as soon as it is connected."""
    todo = iter(range(FLOOD))

    async def worker() -> None:
        for _ in todo:
            sock = netns.socket(mark=None)
            with sock:
                await sock.bind((FLOOD_SRC, 0))
                with trio.move_on_after(5):  # a full accept queue drops SYNs for a while
                    await sock.connect((POD.ip, port))
                    result.connected += 1
                    continue
                result.not_connected += 1

    async with trio.open_nursery() as nursery:
        for _ in range(FLOOD_WORKERS):
            nursery.start_soon(worker)


async def request(netns: NetworkNamespace) -> bytes:
    """One request from the healthy client to the echo app, through ztunnel."""
    sock = netns.socket(mark=None)
    await sock.bind((HEALTHY.ip, 0))
    stream = trio.SocketStream(sock)
    async with stream:
        await sock.connect((POD.ip, ECHO_PORT))
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_all(PAYLOAD)
                await stream.send_eof()

            nursery.start_soon(send)
            while data := await stream.receive_some():
                got += data
    return bytes(got)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def opened(registry: CollectorRegistry, **labels: str) -> float:
    """``istio_tcp_connections_opened_total`` summed over the series with these labels."""
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "istio_tcp_connections_opened_total"
        and all(sample.labels[k] == v for k, v in labels.items())
    )


Logs = list[MutableMapping[str, Any]]


def events(logs: Logs, name: str) -> Logs:
    return [entry for entry in logs if entry["event"] == name]


def summarised(logs: Logs) -> tuple[int, int]:
    """(refused, cut) as the summary lines add them up."""
    refused = sum(e["refused"] for e in events(logs, "pending_limit_reached"))
    return refused, sum(e["cut"] for e in events(logs, "half_closed_limit_reached"))


@contextlib.asynccontextmanager
async def running_ztunnel(
    netns: NetworkNamespace, registry: CollectorRegistry
) -> AsyncIterator[Ztunnel]:
    """A ztunnel serving ``POD`` in ``netns`` with the test's limits, ready."""
    authority = CertificateAuthority.create()
    async with open_certificate_manager(LocalSigner(authority, caller="node-1")) as certs:
        zt = Ztunnel(
            node="node-1",
            certificates=certs,
            netns_for=lambda _w: netns.name,
            telemetry=ZtunnelTelemetry(TcpMetrics(registry)),
            dial_timeout=60,  # longer than the test: a pending dial stays pending
            limits=LIMITS,
            listen_on_pod_ip=True,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(zt.run)
            await zt.on_update(snapshot(POD, HEALTHY))
            await wait_until(lambda: zt.ready()[0], seconds=20)
            yield zt
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("port", "shed"),
    [
        (NEVER_ACCEPTS_PORT, "refused"),  # dials wait: pending fills, new ones are refused
        (NEVER_READS_PORT, "cut"),  # relays wait half-closed: the oldest are cut
    ],
)
async def test_a_flood_from_one_source_is_shed_and_other_clients_are_served(
    tmp_path: Path, port: int, shed: str
) -> None:
    registry = CollectorRegistry()
    answers: list[bytes] = []
    fds: list[int] = []
    result = Flood()
    flooded, settled = trio.Event(), trio.Event()

    async def run_flood(netns: NetworkNamespace) -> None:
        await flood(netns, port, result)
        flooded.set()

    async def healthy_client(netns: NetworkNamespace) -> None:
        while not settled.is_set() or len(answers) < 20:
            with trio.fail_after(10):
                answers.append(await request(netns))

    async def sample_fds() -> None:
        while not settled.is_set():
            fds.append(open_fds())
            await trio.sleep(0.002)

    def handled(zt: Ztunnel) -> float:
        """Flood connections ztunnel has taken: counted in the metrics, or pending."""
        return (
            opened(registry, source_workload="unknown") + zt.admission.statistics(FLOOD_SRC).pending
        )

    with trio.fail_after(120), capture_logs() as logs:
        async with namespace_with_apps(tmp_path) as netns, running_ztunnel(netns, registry) as zt:
            assert await request(netns) == PAYLOAD
            before = open_fds()
            started = trio.current_time()
            async with trio.open_nursery() as clients:
                clients.start_soon(run_flood, netns)
                clients.start_soon(healthy_client, netns)
                clients.start_soon(sample_fds)
                await flooded.wait()
                # ztunnel may still be taking the last ones from its accept queue.
                await wait_until(lambda: handled(zt) == result.connected, seconds=30)
                settled.set()
            statistics = zt.admission.statistics()
            # Each shed connection is summarised in the log: wait for the last line.
            await wait_until(lambda: summarised(logs) == (statistics.refused, statistics.cut))
            seconds = trio.current_time() - started

    # The healthy client never noticed.
    assert len(answers) >= 20
    assert all(answer == PAYLOAD for answer in answers)
    # Bounded: the flood's pending and half-closed connections (two descriptors each), the
    # flood's own client sockets, and room for what is accepted or cut and not closed yet.
    bound = before + 2 * (LIMITS.per_source_pending + LIMITS.per_source_half_closed)
    bound += FLOOD_WORKERS + 64
    assert max(fds) <= bound, (max(fds), before)
    # Shed: every flood connection beyond what the limits hold.
    assert result.connected >= FLOOD // 2
    held = LIMITS.per_source_pending + LIMITS.per_source_half_closed
    assert statistics.refused + statistics.cut >= result.connected - held
    assert getattr(statistics, shed) > 0
    # Counted: each refusal as a denied connection (flag CONNECT), and only the flood's.
    flood_refusals = opened(registry, source_workload="unknown", response_flags="CONNECT")
    assert flood_refusals == statistics.refused  # no dial of the flood has timed out yet
    assert opened(registry, source_workload="healthy", response_flags="CONNECT") == 0
    # Logged without flooding the log: no access-log line per shed connection, one summary
    # line per source and limit at most each second.
    access = events(logs, "connection_denied") + events(logs, "connection_complete")
    assert [e for e in access if e["reason"] == "overloaded"] == []
    summaries = events(logs, "pending_limit_reached") + events(logs, "half_closed_limit_reached")
    assert {(e["src"], e["limit"]) for e in summaries} == {(FLOOD_SRC, "per_source")}
    assert len(summaries) <= 2 * (seconds + 1)
