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
import weakref
from collections.abc import Iterator

import structlog
import trio

from mesh.identity import PeerVerificationError, SpiffeId, TrustBundle, WorkloadCertificate, verify_peer

log = structlog.get_logger("mesh.tls")

ALPN_H2 = "h2"
READ_SIZE = 256 * 1024  # ciphertext read per recv; 64 KiB cost 24-36% (DESIGN.md)

_client_contexts: weakref.WeakKeyDictionary[WorkloadCertificate, ssl.SSLContext] = (
    weakref.WeakKeyDictionary()
)
_server_contexts: weakref.WeakKeyDictionary[WorkloadCertificate, ssl.SSLContext] = (
    weakref.WeakKeyDictionary()
)


class TlsError(Exception):
    """A TLS connection failed: handshake, peer identity, or a broken record stream."""


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


def _base_context(purpose: int, bundle: TrustBundle) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.load_verify_locations(cadata=bundle.pem().decode())
    return ctx


def _load_identity(ctx: ssl.SSLContext, cert: WorkloadCertificate) -> None:
    with _memory_file(cert.chain_pem() + cert.key_pem()) as path:
        ctx.load_cert_chain(path)


def server_context(cert: WorkloadCertificate, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context presenting ``cert``; built once per certificate and cached."""
    if require_client_cert and (ctx := _server_contexts.get(cert)) is not None:
        return ctx
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, cert.bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    _load_identity(ctx, cert)
    if require_client_cert:
        _server_contexts[cert] = ctx
    return ctx


def client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """A client context presenting ``cert``; built once per certificate and cached."""
    if (ctx := _client_contexts.get(cert)) is not None:
        return ctx
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert.bundle)
    ctx.check_hostname = False  # SPIFFE ids are URI SANs; verify_peer checks them
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, cert)
    _client_contexts[cert] = ctx
    return ctx


def bootstrap_client_context(bundle: TrustBundle) -> ssl.SSLContext:
    """A client context with no certificate of its own, e.g. to ask the CA for the first one."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, bundle)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def describe_handshake_error(exc: BaseException) -> tuple[str, str]:
    """Map an OpenSSL failure to one of verify_peer's rule names and a message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        rule = "expired" if "expired" in message or "not yet valid" in message else "chain"
        return rule, message
    text = str(exc)
    if "CERTIFICATE_REQUIRED" in text or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text:
        return "no-certificate", text
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "CERTIFICATE_UNKNOWN" in text:
        return "chain", text
    if "EXPIRED" in text:
        return "expired", text
    return "handshake", text
