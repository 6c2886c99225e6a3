"""The ztunnel data path in real network namespaces with real iptables capture.

Each test builds its own bridge and three pod namespaces (a and b meshed, c
not), runs a ztunnel in this process fed with snapshots directly, and talks
through apps whose sockets live inside the pods. The control plane and the
local cluster are not involved here (tests/e2e/test_mesh.py covers them).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
import trio

from ca import CertificateAuthority, LocalSigner
from mesh.capture import install_capture, remove_capture
from mesh.certs import open_certificate_manager
from mesh.commands import run_command
from mesh.model import MeshSnapshot, Resource, Workload
from mesh.netns import NetworkNamespace
from mesh.reason import Reason
from tests.builders import allow, deny, peer_auth, rule, service, snapshot, source, workload
from tests.e2e.conftest import free_octet
from tests.recording import Recorder
from tests.waiting import wait_until
from ztunnel.ztunnel import Ztunnel

pytestmark = pytest.mark.root
APP_PORT = 8080


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Net:
    suffix: str
    octet: int
    bridge: str
    netns: dict[str, str] = field(default_factory=dict)

    def ip(self, pod: str) -> str:
        return f"10.{self.octet}.0.{ {'a': 10, 'b': 20, 'c': 30}[pod] }"

    @property
    def vip(self) -> str:
        return f"10.{self.octet}.200.10"


@pytest.fixture
def net() -> Iterator[Net]:
    with pod_network() as n:
        yield n


@contextlib.contextmanager
def pod_network() -> Iterator[Net]:
    """A bridge and pods a, b, c, each in its own namespace; all removed afterwards."""
    suffix = secrets.token_hex(2)
    n = Net(suffix, free_octet(), f"azt{suffix}")
    try:
        sh("ip", "link", "add", n.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"10.{n.octet}.0.1/16", "dev", n.bridge)
        sh("ip", "link", "set", n.bridge, "up")
        for pod in "abc":
            ns = f"azt-{suffix}-{pod}"
            sh("ip", "netns", "add", ns)
            n.netns[pod] = ns
            sh("ip", "link", "add", f"v{suffix}{pod}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)  # fmt: skip
            sh("ip", "link", "set", f"v{suffix}{pod}", "master", n.bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{n.ip(pod)}/16", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield n
    finally:
        for ns in n.netns.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", n.bridge], check=False, capture_output=True)
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"azt-{suffix}" not in leftovers


def pods(net: Net) -> dict[str, Workload]:
    return {
        "a": workload("a", ip=net.ip("a"), sa="client"),
        "b": workload("b", ip=net.ip("b"), sa="server", named_ports={"http": APP_PORT}),
        "c": workload("c", ip=net.ip("c"), sa="legacy", meshed=False),
    }


def mesh(net: Net, *extra: Resource, version: int = 1) -> MeshSnapshot:
    w = pods(net)
    svc = service("b-svc", vip=net.vip, ports={80: APP_PORT}, backends=[w["b"]])
    return snapshot(*w.values(), svc, *extra, version=version)


@dataclass
class Running:
    ztunnel: Ztunnel
    recorder: Recorder
    net: Net
    nursery: trio.Nursery
    app_peers: dict[str, list[str]]  # pod -> client addresses its app saw


@contextlib.asynccontextmanager
async def running(
    net: Net, first: MeshSnapshot, *, dial_timeout: float = 10.0
) -> AsyncIterator[Running]:
    authority = CertificateAuthority.create()
    async with open_certificate_manager(LocalSigner(authority, caller="node-1")) as certs:
        recorder = Recorder()
        zt = Ztunnel(
            node="node-1",
            certificates=certs,
            netns_for=lambda w: net.netns.get(w.name),
            telemetry=recorder.telemetry,
            dial_timeout=dial_timeout,
        )
        peers: dict[str, list[str]] = {"b": [], "c": []}
        for workload_ in first.workloads:  # the node's part: capture before ztunnel serves
            if workload_.meshed and workload_.name in net.netns:
                await install_capture(net.netns[workload_.name])
        async with trio.open_nursery() as nursery:
            await nursery.start(zt.run)
            for pod in "bc":  # the apps: echo servers listening inside their pods
                await nursery.start(echo_app, net.netns[pod], peers[pod])
            await zt.on_update(first)
            await wait_until(lambda: zt.ready()[0], seconds=15)
            yield Running(zt, recorder, net, nursery, peers)
            nursery.cancel_scope.cancel()


async def echo_app(netns: str, peers: list[str], *, task_status: trio.TaskStatus[None]) -> None:
    with NetworkNamespace.open(netns) as handle:
        sock = handle.socket(mark=None)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(("0.0.0.0", APP_PORT))
        sock.listen(64)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn, addr = await sock.accept()
                peers.append(addr[0])
                nursery.start_soon(_echo, trio.SocketStream(conn))


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.send_eof()


async def app_stream(net: Net, pod: str, address: tuple[str, int]) -> trio.SocketStream:
    """A connection made by an app inside ``pod`` (an unmarked socket: it is captured)."""
    with NetworkNamespace.open(net.netns[pod]) as handle:
        sock = handle.socket(mark=None)
    try:
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def exchange(net: Net, pod: str, address: tuple[str, int], payload: bytes) -> bytes:
    async with await app_stream(net, pod, address) as stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = bytearray()
        while data := await stream.receive_some():
            got += data
        return bytes(got)


async def refused(
    net: Net, pod: str, address: tuple[str, int], payload: bytes = b"let me in"
) -> bool:
    """True if the connection is refused, or closed or reset without a byte of answer."""
    try:
        return await exchange(net, pod, address, payload) == b""
    except (trio.BrokenResourceError, ConnectionRefusedError):
        return True


@contextlib.asynccontextmanager
async def wire(net: Net, pod: str) -> AsyncIterator[bytearray]:
    """Every frame to or from ``pod`` while the block runs (AF_PACKET on its veth)."""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock = trio.socket.from_stdlib_socket(raw)
    captured = bytearray()
    with sock:
        await sock.bind((f"v{net.suffix}{pod}", 0))

        async def read() -> None:
            while True:
                captured.extend(await sock.recv(65536))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            yield captured
            nursery.cancel_scope.cancel()
        # A frame is queued on the packet socket as it crosses the veth, so all of the
        # block's traffic is queued by now: take the rest without waiting.
        while True:
            try:
                captured.extend(raw.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break


async def test_meshed_pods_talk_over_mtls_and_the_wire_shows_only_tls(net: Net) -> None:
    marker = b"PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            async with wire(net, "a") as meshed_frames:
                answer = await exchange(net, "a", (net.ip("b"), APP_PORT), marker * 100)
            assert answer == marker * 100
            assert marker not in meshed_frames, "plaintext crossed the wire between meshed pods"
            assert b"\x17\x03\x03" in meshed_frames  # TLS application-data records
            # Control: the same payload from the unmeshed pod is visible on the wire.
            async with wire(net, "c") as plain_frames:
                assert await exchange(net, "c", (net.ip("b"), APP_PORT), marker) == marker
            assert marker in plain_frames
            await wait_until(lambda: len(run.recorder.closed) >= 3)
    # The app saw the client's own address (IP_TRANSPARENT), not ztunnel's.
    assert run.app_peers["b"][:2] == [net.ip("a"), net.ip("c")]
    inbound = [r for r, _ in run.recorder.closed if r.direction == "inbound" and r.mtls]
    assert inbound[0].src_identity == pods(net)["a"].identity
    assert inbound[0].src_workload == pods(net)["a"]
    assert inbound[0].stats.sent == len(marker) * 100


async def test_without_ztunnel_captured_pods_fail_closed_until_it_is_back(net: Net) -> None:
    """ztunnel stopped (as by SIGKILL: nothing cleans up) leaves the node's capture rules in
    place: meshed pods' new connections are refused, and not one plaintext byte leaves."""
    marker = b"PLAINTEXT-MARKER-" + secrets.token_hex(8).encode()
    with trio.fail_after(60):
        async with running(net, mesh(net)):
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"up") == b"up"
        assert "AMBIT_OUTPUT" in capture_chains(net.netns["a"])
        async with wire(net, "a") as from_a, wire(net, "b") as to_b:
            for _ in range(3):
                # Outbound from a meshed pod, and plaintext into a meshed pod.
                assert await refused(net, "a", (net.ip("b"), APP_PORT), marker)
                assert await refused(net, "a", (net.vip, 80), marker)
                assert await refused(net, "c", (net.ip("b"), APP_PORT), marker)
        assert marker not in from_a, "a meshed pod sent plaintext while ztunnel was down"
        assert marker not in to_b, "plaintext reached a meshed pod while ztunnel was down"
        async with running(net, mesh(net)):  # a new ztunnel takes the pods again
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"back") == b"back"


async def test_an_app_that_never_answers_times_out_with_its_reason_on_both_sides(
    net: Net,
) -> None:
    """ztunnel's dial to the app has a deadline: a dropped SYN is a ``timeout`` at the
    destination, answered 504, and the source learns the same reason."""
    b = net.netns["b"]
    drop = ["-p", "tcp", "--dport", str(APP_PORT), "-m", "mark", "--mark", "0x539", "-j", "DROP"]
    with trio.fail_after(40):
        async with running(net, mesh(net), dial_timeout=0.5) as run:
            await run_command(["ip", "netns", "exec", b, "iptables", "-I", "OUTPUT", *drop])
            try:
                assert await refused(net, "a", (net.ip("b"), APP_PORT))
                await wait_until(lambda: len(run.recorder.denied) >= 2)
            finally:
                await run_command(["ip", "netns", "exec", b, "iptables", "-D", "OUTPUT", *drop])
    failures = {record.direction: failure for record, failure in run.recorder.denied}
    assert failures["inbound"].reason is Reason.TIMEOUT
    assert "no answer in 0.5s" in failures["inbound"].detail
    assert failures["outbound"].reason is Reason.TIMEOUT  # from the 504's ambit-reason


async def test_a_service_vip_is_resolved_by_ztunnel(net: Net) -> None:
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            assert await exchange(net, "a", (net.vip, 80), b"via the service") == b"via the service"
            await wait_until(lambda: run.recorder.closed)
    outbound = [r for r, _ in run.recorder.closed if r.direction == "outbound"]
    assert outbound[0].dst_service is not None
    assert outbound[0].dst_service.name == "b-svc"
    assert outbound[0].dst_workload == pods(net)["b"]


async def test_deny_by_principal_refuses_and_says_why(net: Net) -> None:
    policy = deny("no-client", rule([source(principals=["cluster.local/ns/default/sa/client"])]))
    with trio.fail_after(40):
        async with running(net, mesh(net, policy)) as run:
            assert await refused(net, "a", (net.ip("b"), APP_PORT))
            await wait_until(lambda: len(run.recorder.denied) >= 2)
    failures = {record.direction: failure for record, failure in run.recorder.denied}
    assert failures["inbound"].reason is Reason.POLICY_DENIED
    assert "default/no-client" in failures["inbound"].detail  # the policy, named locally only
    # The source ztunnel learns the destination's reason as a value, not its policy's name.
    assert failures["outbound"].reason is Reason.POLICY_DENIED
    assert "no-client" not in failures["outbound"].detail


async def test_unmeshed_client_works_until_strict(net: Net) -> None:
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            assert await exchange(net, "c", (net.ip("b"), APP_PORT), b"plain") == b"plain"
            await run.ztunnel.on_update(mesh(net, peer_auth("strict", "STRICT"), version=2))
            assert await refused(net, "c", (net.ip("b"), APP_PORT))
            # Meshed clients still get in under STRICT.
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"mtls") == b"mtls"
    assert any(f.reason is Reason.STRICT_PLAINTEXT for _, f in run.recorder.denied)


async def test_meshed_client_reaches_an_unmeshed_server_by_passthrough(net: Net) -> None:
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            assert await exchange(net, "a", (net.ip("c"), APP_PORT), b"legacy") == b"legacy"
            await wait_until(lambda: run.recorder.closed)
    record, _ = run.recorder.closed[0]
    assert record.direction == "outbound"
    assert not record.mtls


async def test_a_new_policy_cuts_an_open_connection(net: Net) -> None:
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            stream = await app_stream(net, "a", (net.ip("b"), APP_PORT))
            async with stream:
                await stream.send_all(b"one")
                assert await stream.receive_some() == b"one"
                only_others = allow(
                    "only-legacy", rule([source(principals=["cluster.local/ns/default/sa/legacy"])])
                )
                await run.ztunnel.on_update(mesh(net, only_others, version=2))
                with trio.fail_after(5):
                    with contextlib.suppress(trio.BrokenResourceError):
                        while await stream.receive_some():
                            pass  # the connection ends: EOF or reset
            await wait_until(
                lambda: any(
                    f is not None and f.reason is Reason.POLICY_DENIED
                    for _, f in run.recorder.closed
                )
            )


def capture_chains(netns: str) -> str:
    rules = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-t", "nat", "-S"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return rules.stdout


def listening_ports(netns: str) -> set[int]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/tcp"], capture_output=True, text=True
    ).stdout
    ports = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":  # LISTEN
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


async def test_leaving_the_mesh_releases_listeners_and_never_touches_rules(net: Net) -> None:
    with trio.fail_after(40):
        async with running(net, mesh(net)) as run:
            b = net.netns["b"]
            assert "AMBIT_OUTPUT" in capture_chains(b)
            assert {15001, 15006, 15008} <= listening_ports(b)
            # b is relabelled out of the mesh (dataplane-mode: none).
            out = {**pods(net), "b": workload("b", ip=net.ip("b"), sa="server", meshed=False)}
            await run.ztunnel.on_update(snapshot(*out.values(), version=2))
            await wait_until(lambda: not {15001, 15006, 15008} & listening_ports(b))
            assert APP_PORT in listening_ports(b)  # the app itself is untouched
            # ztunnel never runs iptables: the rules are the node's to remove, and until
            # then b's traffic meets closed ports (fails closed) instead of going around.
            assert "AMBIT_OUTPUT" in capture_chains(b)
            assert await refused(net, "c", (net.ip("b"), APP_PORT))
            await remove_capture(b)
            assert "AMBIT_OUTPUT" not in capture_chains(b)
            # Its traffic is plain again: a meshed client passes through to it.
            assert await exchange(net, "a", (net.ip("b"), APP_PORT), b"direct") == b"direct"
            assert "AMBIT_OUTPUT" in capture_chains(net.netns["a"])  # others stay captured
