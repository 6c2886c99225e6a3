"""HBONE transport benchmark on loopback: ``python -m bench.hbone [--quick]``.

Four paths are measured in the same run, each ``client -> relay A -> relay B
-> sink`` with every role in its own process (as in DESIGN.md's table):

- ``direct``: the client talks to the sink (no relays): the ceiling;
- ``tcp``: two plain Trio TCP relays;
- ``tls``: relay A wraps in mutual TLS 1.3 (our MemoryBIO loop), relay B unwraps;
- ``hbone``: relay A opens an HBONE CONNECT stream on a pooled mTLS HTTP/2
  connection, relay B is the HBONE server: the ztunnel-to-ztunnel hop.

Reported: MB/s of one stream (median of the repetitions, with min and max),
the time to set up a new client connection and get one byte back through
each path (median over many), and the time of a 1 KiB request and its 1 KiB
answer on an open connection (p50 and p99 of many, one every half
millisecond or so). For ``hbone`` that is a new CONNECT stream on a
warm pool; for ``tls`` a new TLS handshake. Ratios are to the same run's
``direct`` and ``tls``. Results go to stdout and, with ``--json FILE``, JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from mesh.hbone import HboneError, HboneRequest
from mesh.hbone.client import open_hbone_pool
from mesh.hbone.server import serve_hbone
from mesh.identity import SpiffeId, WorkloadCertificate
from mesh.relay import relay
from mesh.tls import TlsError, TlsStream, client_context, configure_socket, server_context

MODES = ("direct", "tcp", "tls", "hbone")
CLIENT_ID = SpiffeId("cluster.local", "bench", "client")
SERVER_ID = SpiffeId("cluster.local", "bench", "server")
CHUNK = 256 * 1024
RTT_MESSAGE = 1024  # bytes each way per round trip (Istio's 1 KiB profile)
RTT_PAUSE = 0.0005  # between round trips
ECHO_MAGIC = b"ambit-bench-echo\n"  # the round-trip probe's first bytes


# ---- roles (each runs in its own process) ---------------------------------------


def _guarded(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A broken or vanished peer ends that connection, never the role's process."""

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HboneError, TlsError):
            pass
        finally:
            await stream.aclose()

    return run


async def _listen(port: int) -> trio.SocketListener:
    (listener,) = await trio.open_tcp_listeners(port, host="127.0.0.1")
    return listener


async def _connect(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    configure_socket(stream.socket)
    return stream


async def role_sink(port: int) -> None:
    """Count bytes until EOF, answer with the count; a 1-byte message is echoed.

    A connection that starts with :data:`ECHO_MAGIC` is an echo of everything
    after it (the round-trip probe); random data never starts so."""

    async def handle(stream: trio.SocketStream) -> None:
        configure_socket(stream.socket)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total = 0
        n = await stream.socket.recv_into(buf)
        while 0 < n < len(ECHO_MAGIC) and ECHO_MAGIC.startswith(buf[:n]):
            got = await stream.socket.recv_into(view[n:])
            if not got:
                break
            n += got
        if buf[:n].startswith(ECHO_MAGIC):
            rest = n - len(ECHO_MAGIC)
            while True:
                if rest:
                    await stream.send_all(view[n - rest : n])
                n = rest = await stream.socket.recv_into(buf)
                if not n:
                    return
        while n:
            total += n
            if total == 1 and n == 1:
                await stream.send_all(buf[:1])  # setup probe: echo the byte
            n = await stream.socket.recv_into(buf)
        await stream.send_all(str(total).encode())
        await stream.aclose()

    await trio.serve_listeners(_guarded(handle), [await _listen(port)])


def _load_cert(path: Path) -> WorkloadCertificate:
    data = json.loads(path.read_text())
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from mesh.identity import TrustBundle, chain_from_pem

    key = load_pem_private_key(data["key"].encode(), None)
    return WorkloadCertificate(
        SpiffeId.parse(data["identity"]),
        key,  # type: ignore[arg-type]
        chain_from_pem(data["chain"]),
        TrustBundle.from_pem(data["bundle"]),
    )


async def role_relay_a(mode: str, port: int, upstream: int, cert_path: Path) -> None:
    listener = await _listen(port)
    if mode == "tcp":

        async def handle(down: trio.SocketStream) -> None:
            configure_socket(down.socket)
            async with await _connect(upstream) as up:
                await relay(down, up)

        await trio.serve_listeners(_guarded(handle), [listener])
    elif mode == "tls":
        ctx = client_context(_load_cert(cert_path))

        async def handle_tls(down: trio.SocketStream) -> None:
            configure_socket(down.socket)
            up = await _connect(upstream)
            tls = TlsStream(up.socket, ctx, server_side=False)
            await tls.handshake()
            await _relay_tls(down, tls)

        await trio.serve_listeners(_guarded(handle_tls), [listener])
    elif mode == "hbone":
        cert = _load_cert(cert_path)
        async with open_hbone_pool(lambda _s: cert) as pool:

            async def handle_hbone(down: trio.SocketStream) -> None:
                configure_socket(down.socket)
                stream = await pool.connect(
                    source=CLIENT_ID,
                    address=("127.0.0.1", upstream),
                    authority="127.0.0.1:1",
                    expected=[SERVER_ID],
                )
                async with stream:
                    await relay(down, stream)

            await trio.serve_listeners(_guarded(handle_hbone), [listener])


async def role_relay_b(mode: str, port: int, sink: int, cert_path: Path) -> None:
    if mode == "tcp":

        async def handle(down: trio.SocketStream) -> None:
            configure_socket(down.socket)
            async with await _connect(sink) as up:
                await relay(down, up)

        await trio.serve_listeners(_guarded(handle), [await _listen(port)])
    elif mode == "tls":
        ctx = server_context(_load_cert(cert_path))

        async def handle_tls(down: trio.SocketStream) -> None:
            configure_socket(down.socket)
            tls = TlsStream(down.socket, ctx, server_side=True)
            await tls.handshake()
            up = await _connect(sink)
            await _relay_tls(up, tls)

        await trio.serve_listeners(_guarded(handle_tls), [await _listen(port)])
    elif mode == "hbone":
        cert = _load_cert(cert_path)

        async def handler(request: HboneRequest) -> None:
            up = await _connect(sink)
            stream = await request.accept()
            async with up:
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await relay(stream, up)

        await serve_hbone(handler, certificate=lambda: cert, port=port)


async def _relay_tls(plain: trio.SocketStream, tls: TlsStream) -> None:
    """The TLS baseline's copy loop: plain socket <-> our TLS stream, half-close kept."""

    async def plain_to_tls() -> None:
        buf = bytearray(CHUNK)
        while n := await plain.socket.recv_into(buf):
            tls.write(memoryview(buf)[:n])
            await tls.flush()
        # TLS has no half-close of its own: end our direction at the TCP level.
        tls.socket.shutdown(socket.SHUT_WR)

    async def tls_to_plain() -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := await tls.receive_into(view):
            await plain.send_all(view[:n])
        await plain.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(plain_to_tls)
        nursery.start_soon(tls_to_plain)
    await tls.aclose()
    await plain.aclose()


# ---- the driver --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"benchmark role on port {port} did not start")


def _write_certs(directory: Path) -> tuple[Path, Path]:
    from ca import CertificateAuthority

    authority = CertificateAuthority.create()
    paths = []
    for identity in (CLIENT_ID, SERVER_ID):
        cert = authority.issue_workload_certificate(identity, caller="bench")
        path = directory / f"{identity.service_account}.json"
        path.write_text(
            json.dumps(
                {
                    "identity": str(identity),
                    "key": cert.key_pem().decode(),
                    "chain": cert.chain_pem().decode(),
                    "bundle": cert.bundle.pem().decode(),
                }
            )
        )
        path.chmod(0o600)
        paths.append(path)
    return paths[0], paths[1]


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.hbone", "--role", *args], start_new_session=True
    )


def _transfer(port: int, size: int) -> float:
    """Send ``size`` bytes, half-close, wait for the sink's count; return MB/s."""
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sent = 0
        while sent < size:
            sent += s.send(block[: min(CHUNK, size - sent)])
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(64):
            answer += chunk
        elapsed = time.perf_counter() - start
    if int(answer) != size:
        raise RuntimeError(f"sink counted {answer!r} bytes, sent {size}")
    return size / elapsed / 1e6


def _setup_time(port: int) -> float:
    """New connection through the path and one byte back; seconds."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("setup probe got no echo")
        elapsed = time.perf_counter() - start
        s.shutdown(socket.SHUT_WR)
        while s.recv(64):
            pass
    return elapsed


def _round_trips(port: int, count: int, size: int = RTT_MESSAGE) -> list[float]:
    """``count`` request/response exchanges of ``size`` bytes on one connection; seconds each."""
    message = b"r" * size
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(ECHO_MAGIC)
        for _ in range(count):
            start = time.perf_counter()
            s.sendall(message)
            got = 0
            while got < size:
                chunk = s.recv(size - got)
                if not chunk:
                    raise RuntimeError("echo probe: the path closed the connection")
                got += len(chunk)
            times.append(time.perf_counter() - start)
            time.sleep(RTT_PAUSE)  # a request every millisecond or so, not back to back
    return times


def measure(
    mode: str, size: int, runs: int, probes: int, certs: tuple[Path, Path]
) -> dict[str, object]:
    sink_port = _free_port()
    procs = [_spawn("sink", str(sink_port))]
    entry = sink_port
    try:
        _wait_listening(sink_port)
        if mode != "direct":
            b_port, a_port = _free_port(), _free_port()
            procs.append(_spawn("relay-b", mode, str(b_port), str(sink_port), str(certs[1])))
            _wait_listening(b_port)
            procs.append(_spawn("relay-a", mode, str(a_port), str(b_port), str(certs[0])))
            _wait_listening(a_port)
            entry = a_port
        _setup_time(entry)  # warm up: for hbone this opens the pooled connection
        setups = [_setup_time(entry) for _ in range(probes)]
        trips = sorted(_round_trips(entry, probes * 10))
        rates = [_transfer(entry, size) for _ in range(runs)]
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "mode": mode,
        "mb_per_s": statistics.median(rates),
        "mb_per_s_min": min(rates),
        "mb_per_s_max": max(rates),
        "setup_ms": statistics.median(setups) * 1000,
        "rtt_p50_ms": statistics.median(trips) * 1000,
        "rtt_p99_ms": trips[int(len(trips) * 0.99)] * 1000,
        "runs": runs,
        "bytes": size,
    }


def _table(results: list[dict[str, object]]) -> str:
    by_mode = {str(r["mode"]): r for r in results}

    def ratio(mode: str, key: str, base: str) -> str:
        if base not in by_mode:
            return "-"
        return f"{float(by_mode[mode][key]) / float(by_mode[base][key]):.2f}x"  # type: ignore[arg-type]

    lines = [
        "| path | MB/s (median) | min-max | vs direct | vs tls | setup ms (median) "
        "| 1 KiB round trip p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        mode = str(r["mode"])
        lines.append(
            f"| {mode} | {float(r['mb_per_s']):.0f} |"  # type: ignore[arg-type]
            f" {float(r['mb_per_s_min']):.0f}-{float(r['mb_per_s_max']):.0f} |"  # type: ignore[arg-type]
            f" {ratio(mode, 'mb_per_s', 'direct')} | {ratio(mode, 'mb_per_s', 'tls')} |"
            f" {float(r['setup_ms']):.2f} |"  # type: ignore[arg-type]
            f" {float(r['rtt_p50_ms']):.3f} | {float(r['rtt_p99_ms']):.3f} |"  # type: ignore[arg-type]
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hbone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB, 2 runs: about 10 s")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--role", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        return _run_role(args.role)
    size = (128 if args.quick and args.size_mib == 1024 else args.size_mib) * 1024 * 1024
    runs = 2 if args.quick else args.runs
    probes = 30 if args.quick else 200
    with tempfile.TemporaryDirectory(prefix="ambit-bench-") as tmp:
        certs = _write_certs(Path(tmp))
        results = []
        for mode in args.modes.split(","):
            print(f"measuring {mode} ...", file=sys.stderr, flush=True)
            results.append(measure(mode, size, runs, probes, certs))
    print(
        f"one stream, {size // (1024 * 1024)} MiB x {runs} runs, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}\n"
    )
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _run_role(role: list[str]) -> int:
    name, *rest = role
    from mesh.telemetry import configure_logging

    configure_logging("warning")  # the roles' own logs would only disturb the measurement
    runners: dict[str, Callable[[], object]] = {
        "sink": lambda: trio.run(role_sink, int(rest[0])),
        "relay-a": lambda: trio.run(
            role_relay_a, rest[0], int(rest[1]), int(rest[2]), Path(rest[3])
        ),
        "relay-b": lambda: trio.run(
            role_relay_b, rest[0], int(rest[1]), int(rest[2]), Path(rest[3])
        ),
    }
    runners[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
