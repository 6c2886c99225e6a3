"""TLS for the mesh: SSL contexts for workload identities, and a TLS stream
over a Trio socket that owns its own ``ssl.MemoryBIO`` loop.

Contexts are TLS 1.3 only with ALPN ``h2``. Mesh contexts require a client
certificate. Python's ssl module verifies the chain and validity but not URI
SANs, so :func:`mesh.identity.verify_peer` runs after every handshake.

Why our own loop instead of ``trio.SSLStream``: that returns one 16 KiB TLS
record per ``receive_some``. Reading a large chunk of ciphertext and
decrypting every complete record into one buffer more than doubles
throughput (see DESIGN.md, "The hot path").
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import cast

import structlog
import trio

from mesh import sockio
from mesh.credential import HasPem, Presentable
from mesh.identity import PeerVerificationError, SpiffeId, check_peer_uris

log = structlog.get_logger("mesh.tls")

ALPN_H2 = "h2"
READ_SIZE = 256 * 1024  # ciphertext read per recv; 64 KiB cost 24-36% (DESIGN.md)


class _Scratch(threading.local):
    """Where ciphertext lands before it is copied into a connection's MemoryBIO.

    Nothing awaits between the read and the copy (``sockio.recv_into`` returns
    straight after the read), so all the connections of a thread share one:
    no 256 KiB receive buffer per connection."""

    def __init__(self) -> None:
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)


_scratch = _Scratch()

_client_contexts: weakref.WeakKeyDictionary[Presentable, ssl.SSLContext] = (
    weakref.WeakKeyDictionary()
)
_server_contexts: weakref.WeakKeyDictionary[Presentable, ssl.SSLContext] = (
    weakref.WeakKeyDictionary()
)


class TlsError(Exception):
    """A TLS connection failed: handshake, peer identity, or a broken record stream.

    ``rule`` names what failed, in verify_peer's vocabulary (``alpn``,
    ``tls-version``, ``chain``, ``expired``, ``no-certificate``, ``handshake``).
    """

    def __init__(self, message: str, *, rule: str = "handshake") -> None:
        super().__init__(message)
        self.rule = rule


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path whose contents are ``data`` without touching disk where possible.

    ``ssl.SSLContext.load_cert_chain`` only reads files. On Linux a memfd keeps
    the private key in memory; elsewhere a 0600 temporary file is removed at once.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ambit-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="ambit-cert-")  # pragma: no cover - non-Linux
    try:  # pragma: no cover
        os.write(fd, data)
        os.close(fd)
        yield path
    finally:  # pragma: no cover
        os.unlink(path)


def _base_context(purpose: int, bundle: HasPem) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.load_verify_locations(cadata=bundle.pem().decode())
    return ctx


def _load_identity(ctx: ssl.SSLContext, cert: Presentable) -> None:
    with _memory_file(cert.chain_pem() + cert.key_pem()) as path:
        ctx.load_cert_chain(path)


def server_context(cert: Presentable, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context presenting ``cert``; built once per certificate and cached."""
    if require_client_cert and (ctx := _server_contexts.get(cert)) is not None:
        return ctx
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, cert.bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    _load_identity(ctx, cert)
    if require_client_cert:
        _server_contexts[cert] = ctx
    return ctx


def client_context(cert: Presentable) -> ssl.SSLContext:
    """A client context presenting ``cert``; built once per certificate and cached."""
    if (ctx := _client_contexts.get(cert)) is not None:
        return ctx
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert.bundle)
    ctx.check_hostname = False  # SPIFFE ids are URI SANs; verify_peer checks them
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, cert)
    _client_contexts[cert] = ctx
    return ctx


def bootstrap_client_context(bundle: HasPem) -> ssl.SSLContext:
    """A client context with no certificate of its own, e.g. to ask the CA for the first one."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, bundle)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# OpenSSL's reason codes (``ssl.SSLError.reason``), by the rule they break.
_RULE_OF_SSL_REASON = {
    "NO_APPLICATION_PROTOCOL": "alpn",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "alpn",
    "UNSUPPORTED_PROTOCOL": "tls-version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "tls-version",
    "WRONG_VERSION_NUMBER": "tls-version",
    "NO_PROTOCOLS_AVAILABLE": "tls-version",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no-certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "chain",
    "SSLV3_ALERT_BAD_CERTIFICATE": "chain",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "chain",
    "CERTIFICATE_VERIFY_FAILED": "chain",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
}
# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
_EXPIRY_VERIFY_CODES = frozenset({9, 10})


def describe_handshake_error(exc: BaseException) -> tuple[str, str]:
    """Map an OpenSSL failure to one of verify_peer's rule names and a message, by the
    error's codes (``verify_code``, ``reason``), never by its text."""
    if isinstance(exc, TlsError) and exc.__cause__ is None:
        return exc.rule, str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        return ("expired" if exc.verify_code in _EXPIRY_VERIFY_CODES else "chain"), message
    code = exc.reason if isinstance(exc, ssl.SSLError) else None
    rule = _RULE_OF_SSL_REASON.get(code or "", "handshake")
    text = str(exc)
    if rule == "tls-version":
        text += " (the mesh speaks TLS 1.3 only)"
    return rule, text


def configure_socket(sock: trio.socket.SocketType) -> None:
    """TCP_NODELAY on every proxy socket: without it p99 rose to 31-47 ms (DESIGN.md)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TlsStream:
    """TLS over a connected Trio socket, driven through ``ssl.MemoryBIO``.

    Contract: one task may receive while one other task sends; after the
    handshake, only the sending task flushes ciphertext, so anything the read
    path makes OpenSSL write (post-handshake messages) is sent by the next
    :meth:`flush`, never awaited by the reader. :meth:`receive_into` decrypts
    into a caller's buffer (no extra copy) and returns 0 only at end of stream.
    """

    def __init__(self, sock: trio.socket.SocketType, ctx: ssl.SSLContext, *, server_side: bool):
        self.socket = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._unsent = memoryview(b"")
        self._eof = False
        self._closed = False

    @property
    def server_side(self) -> bool:
        return bool(self._ssl.server_side)

    async def handshake(self) -> None:
        """Complete the TLS handshake; raise :class:`TlsError` with the OpenSSL reason."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.flush()
                scratch = _scratch
                n = await sockio.recv_into(self.socket, scratch.buf)
                if n == 0:
                    raise TlsError("peer closed the connection during the TLS handshake") from None
                self._incoming.write(scratch.view[:n])
            except ssl.SSLError as exc:
                # Let the peer see our alert before we give up.
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await self.flush()
                raise TlsError(
                    f"TLS handshake failed: {exc}", rule=describe_handshake_error(exc)[0]
                ) from exc
            except OSError as exc:
                raise TlsError(f"TLS handshake failed: {exc}") from exc
        await self.flush()
        if self._ssl.selected_alpn_protocol() != ALPN_H2:
            raise TlsError(
                f"peer did not negotiate ALPN {ALPN_H2!r} "
                f"(got {self._ssl.selected_alpn_protocol()!r}); is it an HBONE endpoint?",
                rule="alpn",
            )

    def verify_peer(
        self, *, trust_domain: str, expected: frozenset[SpiffeId] | None = None
    ) -> SpiffeId:
        """Check the peer's SPIFFE identity (see :func:`mesh.identity.verify_peer`) from
        the certificate OpenSSL verified in the handshake, as ``ssl`` decodes it."""
        peer = self._ssl.getpeercert()
        if not peer:  # none, or not verified (a context that does not ask for one)
            raise PeerVerificationError("no-certificate", "peer presented no certificate")
        alt_names = cast(tuple[tuple[str, str], ...], peer.get("subjectAltName", ()))
        uris = [value for kind, value in alt_names if kind == "URI"]
        return check_peer_uris(uris, trust_domain=trust_domain, expected=expected)

    def _decrypt_into(self, dst: memoryview) -> int:
        """Decrypt complete records already received straight into ``dst``; return the count."""
        total = 0
        size = len(dst)
        # With a buffer, SSLObject.read returns a count (typeshed says bytes).
        read_into = cast(Callable[[int, memoryview], int], self._ssl.read)
        while total < size:
            try:
                n = read_into(size - total, dst[total:])
            except ssl.SSLWantReadError:
                return total
            except ssl.SSLZeroReturnError:
                self._eof = True
                return total
            if n == 0:
                self._eof = True
                return total
            total += n
        return total

    async def receive_some(self) -> bytes:
        """Some plaintext, or ``b""`` at end of stream (allocates; tests and tools)."""
        buf = bytearray(READ_SIZE)
        n = await self.receive_into(memoryview(buf))
        return bytes(buf[:n])

    async def receive_into(self, dst: memoryview) -> int:
        """Decrypt at least one byte into ``dst`` (like ``recv_into``); 0 at end of stream."""
        if not len(dst):
            raise ValueError("receive_into needs room for at least one byte")
        while True:
            if self._eof:
                return 0
            try:
                got = self._decrypt_into(dst)
            except ssl.SSLError as exc:
                raise TlsError(f"TLS record error: {exc}") from exc
            if got:
                return got
            if self.at_eof():  # _decrypt_into may have seen close_notify
                return 0
            try:
                scratch = _scratch
                n = await sockio.recv_into(self.socket, scratch.buf)
            except OSError as exc:
                raise TlsError(f"connection lost: {exc}") from exc
            if n == 0:
                # Ragged EOF (no close_notify): HTTP/2 framing detects truncation above us.
                self._eof = True
                return 0
            self._incoming.write(scratch.view[:n])

    def at_eof(self) -> bool:
        return self._eof

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` into the outgoing buffer; :meth:`flush` sends it."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS write failed: {exc}") from exc

    def has_output(self) -> bool:
        return bool(self._unsent) or self._outgoing.pending > 0

    def pending_output(self) -> int:
        """Ciphertext encrypted but not yet taken by a flush."""
        return self._outgoing.pending

    async def flush(self) -> None:
        """Send every byte of ciphertext produced so far, including any made meanwhile."""
        while self.has_output():
            await self.flush_batch()

    async def flush_batch(self) -> None:
        """Send the ciphertext pending now (taken from OpenSSL before the first await).

        Cancel-safe: bytes taken from OpenSSL but not yet sent are kept and go
        first on the next flush, so a cancelled flush never tears a record.
        """
        try:
            if not self._unsent:
                if not self._outgoing.pending:
                    return
                self._unsent = memoryview(self._outgoing.read())
            while self._unsent:
                # Advance before waiting: a flush cancelled in the wait must not send
                # these bytes again (that would tear the record stream).
                self._unsent = self._unsent[sockio.send_nowait(self.socket, self._unsent) :]
                if self._unsent:
                    await trio.lowlevel.wait_writable(self.socket)
        except OSError as exc:
            raise TlsError(f"connection lost: {exc}") from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.write(data)
        await self.flush()

    async def aclose(self) -> None:
        """Send close_notify if we can in a moment, then always close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            with trio.move_on_after(0.5) as scope:
                scope.shield = True
                with contextlib.suppress(ssl.SSLError, TlsError, OSError):
                    self._ssl.unwrap()
                with contextlib.suppress(TlsError, OSError, ssl.SSLError):
                    await self.flush()
        finally:
            self.socket.close()
