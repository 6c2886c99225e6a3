"""Ztunnel and a captured pod's listeners on loopback: two pods at 127.0.0.2 and
127.0.0.3 in this process's own network namespace, no capture rules, real HBONE with
real certificates from the CA. Making ztunnel's sockets (SO_MARK, IP_TRANSPARENT,
setns) needs root; the tests skip with that reason otherwise."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial

import pytest
import trio
from structlog.testing import capture_logs

from ca import CertificateAuthority, LocalSigner
from mesh.certs import CertificateManager, open_certificate_manager
from mesh.hbone import HboneStreamRefused
from mesh.hbone.client import open_hbone_pool
from mesh.identity import WorkloadCertificate
from mesh.model import Locality, MeshSnapshot, Resource, Workload
from mesh.pending import PendingLimits
from mesh.reason import Reason
from tests.builders import deny, rule, snapshot, source, workload
from tests.recording import Recorder
from tests.waiting import wait_until
from ztunnel.ztunnel import Ztunnel

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: ztunnel's sockets use SO_MARK and IP_TRANSPARENT"
)

OWN_NETNS = "/proc/self/ns/net"
A = workload("a", ip="127.0.0.2", sa="client")
B = replace(
    workload("b", ip="127.0.0.3", sa="server", labels={"app": "b"}),
    locality=Locality(region="eu", zone="eu-1a"),  # its node's
)
APP_PORT = 18080


def mesh(*extra: Resource, b: Workload = B, version: int = 1) -> MeshSnapshot:
    return snapshot(A, b, *extra, version=version)


@dataclass
class Running:
    ztunnel: Ztunnel
    certs: CertificateManager[WorkloadCertificate]
    recorder: Recorder


@contextlib.asynccontextmanager
async def running(limits: PendingLimits | None = None) -> AsyncIterator[Running]:
    authority = CertificateAuthority.create()
    async with open_certificate_manager(LocalSigner(authority, caller="node-1")) as certs:
        recorder = Recorder()
        zt = Ztunnel(
            node="node-1",
            certificates=certs,
            netns_for=lambda _w: OWN_NETNS,
            telemetry=recorder.telemetry,
            limits=limits,
            listen_on_pod_ip=True,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(zt.run)
            await nursery.start(echo_app)
            yield Running(zt, certs, recorder)
            nursery.cancel_scope.cancel()


async def echo_app(*, task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
    listeners = await trio.open_tcp_listeners(APP_PORT, host=B.ip)

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                while data := await stream.receive_some():
                    await stream.send_all(data)
                await stream.send_eof()

    await trio.serve_listeners(echo, listeners, task_status=task_status)


@contextlib.asynccontextmanager
async def hbone_from_a(run: Running) -> AsyncIterator[trio.abc.HalfCloseableStream]:
    """A CONNECT to b's app over HBONE, as a's ztunnel would open it."""
    cert = await run.certs.fetch_now(A.identity)
    async with open_hbone_pool(lambda _s: cert) as pool:
        stream = await pool.connect(
            source=A.identity,
            address=(B.ip, 15008),
            authority=f"{B.ip}:{APP_PORT}",
            expected=[B.identity],
            source_address=A.ip,
        )
        async with stream:
            yield stream


async def echoed(stream: trio.abc.HalfCloseableStream, payload: bytes) -> bytes:
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.receive_some()
    return got


def listening(ip: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((ip, port)) == 0


async def test_a_snapshot_captures_the_nodes_pods_and_makes_ztunnel_ready() -> None:
    with trio.fail_after(20):
        async with running() as run:
            assert run.ztunnel.ready() == (False, "no config from the control plane yet")
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            assert run.ztunnel.ready() == (True, "2 pods captured")
            for pod in (A, B):
                assert all(listening(pod.ip, port) for port in (15001, 15006, 15008))
            status = run.ztunnel.status()
            assert status["config_version"] == 1
            assert {p["uid"]: p["captured"] for p in status["pods"]} == {
                A.uid: True,
                B.uid: True,
            }
            assert all(p["certificate_expires"] for p in status["pods"])
            assert {p["uid"]: p["locality"] for p in status["pods"]} == {
                A.uid: None,
                B.uid: {"region": "eu", "zone": "eu-1a", "subzone": ""},
            }
            assert status["pending"] == {
                "pending": 0,
                "half_closed": 0,
                "refused": 0,
                "cut": 0,
                "limits": {
                    "per_source_pending": 256,
                    "pending": 2048,
                    "per_source_half_closed": 256,
                    "half_closed": 4096,
                },
            }


async def test_hbone_to_a_pod_reaches_its_app_from_the_callers_address() -> None:
    payload = os.urandom(256 * 1024)
    with trio.fail_after(20):
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            async with hbone_from_a(run) as stream:
                assert await echoed(stream, payload) == payload
                await stream.send_eof()  # half-close travels through; the app closes back
                assert await stream.receive_some() == b""
            await wait_until(lambda: run.recorder.closed)
    [(record, failure)] = run.recorder.closed
    assert failure is None
    assert (record.direction, record.src_identity, record.dst_workload) == (
        "inbound",
        A.identity,
        B,
    )
    assert record.stats.sent == len(payload)


async def test_a_policy_denial_is_refused_with_its_reason_on_both_sides() -> None:
    policy = deny("no-client", rule([source(principals=["cluster.local/ns/default/sa/client"])]))
    with trio.fail_after(20):
        async with running() as run:
            await run.ztunnel.on_update(mesh(policy))
            await wait_until(lambda: run.ztunnel.ready()[0])
            with pytest.raises(HboneStreamRefused) as refused:
                async with hbone_from_a(run):
                    pass
    assert (refused.value.status, refused.value.reason) == (403, Reason.POLICY_DENIED)
    assert "no-client" not in str(refused.value)  # the policy's name stays at the destination
    [(_, failure)] = run.recorder.denied
    assert failure.reason is Reason.POLICY_DENIED
    assert "default/no-client" in failure.detail


async def test_a_policy_change_closes_the_open_connections_it_no_longer_allows() -> None:
    policy = deny("no-client", rule([source(principals=["cluster.local/ns/default/sa/client"])]))
    with trio.fail_after(20):
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            async with hbone_from_a(run) as stream:
                assert await echoed(stream, b"allowed") == b"allowed"
                await run.ztunnel.on_update(mesh(policy, version=2))
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await stream.receive_some() == b""
            await wait_until(lambda: run.recorder.closed)
    [(_, failure)] = run.recorder.closed
    assert failure is not None
    assert failure.reason is Reason.POLICY_DENIED
    assert failure.detail.startswith("closed by policy: ")
    assert "default/no-client" in failure.detail


async def test_relabelling_a_pod_keeps_its_open_connections_and_its_capture() -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            async with hbone_from_a(run) as stream:
                assert await echoed(stream, b"before") == b"before"
                relabelled = workload("b", ip=B.ip, sa="server", labels={"app": "b", "v": "2"})
                await run.ztunnel.on_update(mesh(b=relabelled, version=2))
                assert await echoed(stream, b"after") == b"after"
    captured = [e for e in logs if e["event"] == "pod_captured" and e["pod"] == B.uid]
    assert len(captured) == 1


async def test_a_pod_leaving_the_mesh_closes_only_its_listeners() -> None:
    with trio.fail_after(20):
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            out = workload("b", ip=B.ip, sa="server", labels={"app": "b"}, meshed=False)
            await run.ztunnel.on_update(mesh(b=out, version=2))
            await wait_until(lambda: not listening(B.ip, 15008))
            assert not listening(B.ip, 15001)
            assert listening(A.ip, 15008)
            assert run.ztunnel.ready() == (True, "1 pods captured")


@pytest.mark.parametrize(
    "authority",
    [
        f"{B.ip}:15008",  # ztunnel's own HBONE port: it would dial itself
        f"{B.ip}:15001",
        f"{B.ip}:15006",
        f"{B.ip}:\uff11\uff18\uff10\uff18\uff10",  # full-width 18080, the app's port
        f"{B.ip}:018080",
        f"{A.ip}:{APP_PORT}",  # another pod's address
    ],
)
async def test_connects_that_name_no_app_of_this_pod_are_refused_at_once(authority: str) -> None:
    with trio.fail_after(10):
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            cert = await run.certs.fetch_now(A.identity)
            async with open_hbone_pool(lambda _s: cert) as pool:
                with trio.fail_after(2), pytest.raises(HboneStreamRefused) as refused:
                    await pool.connect(
                        source=A.identity,
                        address=(B.ip, 15008),
                        authority=authority,
                        expected=[B.identity],
                    )
    assert (refused.value.status, refused.value.reason) == (400, Reason.BAD_REQUEST)


async def test_a_drain_lets_open_connections_finish_and_takes_no_new_one() -> None:
    payload = os.urandom(512 * 1024)
    with trio.fail_after(20), capture_logs() as logs:
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            async with hbone_from_a(run) as stream, trio.open_nursery() as nursery:
                assert await echoed(stream, b"before") == b"before"
                drained = trio.Event()

                async def drain() -> None:
                    await run.ztunnel.drain(10.0)
                    drained.set()

                nursery.start_soon(drain)
                await wait_until(lambda: not listening(B.ip, 15008))
                assert run.ztunnel.ready() == (False, "draining: ztunnel is shutting down")
                assert not drained.is_set()
                # The open connection goes on, byte-exact, to its own end.
                assert await echoed(stream, payload) == payload
                await stream.send_eof()
                assert await stream.receive_some() == b""
                with trio.fail_after(5):
                    await drained.wait()
    [done] = [e for e in logs if e["event"] == "ztunnel_drained"]
    assert done["cut_at_deadline"] == 0
    assert [f for _, f in run.recorder.closed] == [None]


async def test_a_drain_cuts_what_is_still_open_at_its_deadline() -> None:
    with trio.fail_after(20), capture_logs() as logs:
        async with running() as run:
            await run.ztunnel.on_update(mesh())
            await wait_until(lambda: run.ztunnel.ready()[0])
            async with hbone_from_a(run) as stream:
                assert await echoed(stream, b"open") == b"open"
                await run.ztunnel.drain(0.5)  # the stream never ends by itself
    [done] = [e for e in logs if e["event"] == "ztunnel_drained"]
    assert done["cut_at_deadline"] == 1
    [(_, failure)] = run.recorder.closed
    assert failure is not None
    assert failure.reason is Reason.DRAIN_DEADLINE
    assert "drain deadline" in failure.detail


async def test_connects_past_the_pending_limit_are_refused_overloaded() -> None:
    """CONNECTs whose dial to the app waits are pending work of their source; the one past
    the limit is answered 503 ``overloaded`` at once, counted, and summarised in the log."""
    slow_port = APP_PORT + 1
    with socket.socket() as never_accepts, socket.socket() as filler:
        never_accepts.bind((B.ip, slow_port))
        never_accepts.listen(0)  # one connection fits in its queue, then SYNs are dropped
        filler.connect((B.ip, slow_port))
        with trio.fail_after(20), capture_logs() as logs:
            async with running(PendingLimits(per_source_pending=2, pending=4)) as run:
                await run.ztunnel.on_update(mesh())
                await wait_until(lambda: run.ztunnel.ready()[0])
                cert = await run.certs.fetch_now(A.identity)
                async with open_hbone_pool(lambda _s: cert) as pool:
                    connect = partial(
                        pool.connect,
                        source=A.identity,
                        address=(B.ip, 15008),
                        authority=f"{B.ip}:{slow_port}",
                        expected=[B.identity],
                    )
                    async with trio.open_nursery() as waiting:
                        for _ in range(2):  # one HBONE connection, two dials that wait
                            waiting.start_soon(connect)
                        await wait_until(lambda: run.ztunnel.admission.statistics().pending == 2)
                        with pytest.raises(HboneStreamRefused) as refused:
                            await connect()
                        waiting.cancel_scope.cancel()
                await wait_until(lambda: any(e["event"] == "pending_limit_reached" for e in logs))
    assert (refused.value.status, refused.value.reason) == (503, Reason.OVERLOADED)
    assert [f.reason for _, f in run.recorder.denied] == [Reason.OVERLOADED]
    [summary] = [e for e in logs if e["event"] == "pending_limit_reached"]
    assert (summary["limit"], summary["max"], summary["refused"]) == ("per_source", 2, 1)
