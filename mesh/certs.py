"""Workload certificates on the client side: get them signed, keep them fresh.

:class:`CertificateManager` gets each certificate from an :class:`Issuer`, caches
one per identity and renews it at half-life. When a renewal fails the old
certificate stays in use and the manager retries with capped exponential
backoff. :class:`SignerIssuer` issues in this process: it generates each key here
(it never travels), asks a :class:`Signer` to sign a CSR for it and checks the
chain, making a :class:`WorkloadCertificate` (the ztunnel, the control plane).
:class:`CaClient` (from :mod:`mesh.ca_client`, re-exported here) is the real
:class:`Signer`: the HTTP/2 client of the CA service. The waypoint's issuer is
:class:`mesh.issuer_process.ProcessIssuer`: the same steps in a helper process.

Renewal runs on Trio's clock: when a certificate arrives, the delay until its
half-life is computed against the wall clock, then waited for as a Trio
deadline, so ``autojump_clock`` tests take no real time.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import structlog
import trio

from mesh.backoff import Backoff
from mesh.ca_client import (
    BadCaResponse,
    CaClient,
    CaNotTrusted,
    CaRefused,
    CaUnreachable,
    CertificateRequestError,
    SignedChain,
)
from mesh.identity import (
    IdentityError,
    PeerVerificationError,
    SpiffeId,
    TrustBundle,
    WorkloadCertificate,
    build_csr,
    generate_key,
)

if TYPE_CHECKING:
    from cryptography import x509

    from mesh.identity import PrivateKey

__all__ = [
    "BadCaResponse",
    "CaClient",
    "CaNotTrusted",
    "CaRefused",
    "CaUnreachable",
    "CertificateManager",
    "CertificateManagerStatistics",
    "CertificateRequestError",
    "Issued",
    "Issuer",
    "RenewalPolicy",
    "SignedChain",
    "Signer",
    "SignerIssuer",
    "open_certificate_manager",
    "open_issuing_manager",
]

log = structlog.get_logger("mesh.certs")

EVENT_CERTIFICATE_FETCHED: Final = "workload_certificate_fetched"
EVENT_RENEWAL_FAILED: Final = "workload_certificate_renewal_failed"


class Signer(Protocol):
    async def sign(self, csr_pem: bytes, ttl_seconds: int | None) -> SignedChain:
        """Sign a PEM CSR: the chain (leaf first) and the trust bundle, or raise.

        Raise :class:`CertificateRequestError` (with a ``reason``) for expected
        failures; the manager logs that reason and retries.
        """
        ...


class Issued(Protocol):
    """What the manager reads of a certificate it keeps."""

    @property
    def identity(self) -> SpiffeId: ...
    @property
    def not_after(self) -> dt.datetime: ...
    @property
    def serial(self) -> int: ...
    def renew_at(self) -> dt.datetime: ...


C = TypeVar("C", bound=Issued)
C_co = TypeVar("C_co", bound=Issued, covariant=True)


class Issuer(Protocol[C_co]):
    async def issue(self, identity: SpiffeId, ttl_seconds: int | None) -> C_co:
        """A new certificate for ``identity``, its chain checked; raise
        :class:`CertificateRequestError` (with a ``reason``) for expected failures."""
        ...


class SignerIssuer:
    """Issue in this process: a key made here, its CSR signed by ``signer``, the chain
    checked (:func:`_assemble`) before anyone presents it."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    async def issue(self, identity: SpiffeId, ttl_seconds: int | None) -> WorkloadCertificate:
        key = generate_key()
        chain, bundle = await self.signer.sign(build_csr(identity, key), ttl_seconds)
        return _assemble(identity, key, chain, bundle)


RENEWAL_BACKOFF = Backoff(initial=1.0, maximum=300.0, jitter=False)


@dataclass(frozen=True)
class RenewalPolicy:
    """How the manager asks for certificates and retries when it cannot get one."""

    ttl_seconds: int | None = None  # None: the CA's default (24 h)
    # 1, 2, 4... s, capped. No jitter: renewals are already spread by issue time.
    backoff: Backoff = RENEWAL_BACKOFF


@dataclass(frozen=True)
class CertificateManagerStatistics:
    identities: int
    renewals: int
    renewal_failures: int


@dataclass(eq=False)
class _Entry(Generic[C]):
    cert: C
    renew_deadline: float  # on Trio's clock
    replaced: trio.Event


class CertificateManager(Generic[C]):
    """One current certificate per identity, renewed at half-life in the background.

    Renewal tasks run in ``nursery`` (use :func:`open_certificate_manager` to
    get one with its own). :meth:`get` returns the current certificate, even
    one whose renewal keeps failing: peers reject it only once it expires, and
    every failure is logged with the time left.
    """

    def __init__(
        self, issuer: Issuer[C], nursery: trio.Nursery, *, policy: RenewalPolicy | None = None
    ) -> None:
        self._issuer = issuer
        self._nursery = nursery
        self.policy = policy or RenewalPolicy()
        self._entries: dict[SpiffeId, _Entry[C]] = {}
        self._renewers: dict[SpiffeId, trio.CancelScope] = {}
        self._renewals = 0
        self._failures = 0

    def get(self, identity: SpiffeId) -> C | None:
        entry = self._entries.get(identity)
        return entry.cert if entry else None

    async def fetch_until_issued(self, identity: SpiffeId, backoff: Backoff) -> C:
        """:meth:`fetch_now`, again after ``backoff``'s delays while the CA is not there yet
        or refuses (each failure logged once, with its delay): a proxy's own certificate,
        at start, without which it can do nothing."""
        next_delay = backoff.delays()
        while True:
            try:
                return await self.fetch_now(identity)
            except CertificateRequestError as exc:
                delay = next_delay()
                log.warning("own_certificate_failed", identity=str(identity), reason=str(exc),
                            retry_in=round(delay, 3))  # fmt: skip
            await trio.sleep(delay)

    async def fetch_now(self, identity: SpiffeId) -> C:
        """Get a fresh certificate for ``identity`` now, and keep it renewed from then on.

        Raises what the signer raises (a :class:`CertificateRequestError` for
        :class:`CaClient`); the current certificate, if any, stays in use.
        """
        cert = await self._fetch(identity)
        if identity not in self._renewers:
            scope = trio.CancelScope()
            self._renewers[identity] = scope
            self._nursery.start_soon(self._renew_forever, identity, scope)
        return cert

    def forget(self, identity: SpiffeId) -> None:
        """Drop an identity's certificate and stop renewing it (its pod left the node)."""
        self._entries.pop(identity, None)
        scope = self._renewers.pop(identity, None)
        if scope is not None:
            scope.cancel()

    def statistics(self) -> CertificateManagerStatistics:
        return CertificateManagerStatistics(len(self._entries), self._renewals, self._failures)

    async def _fetch(self, identity: SpiffeId, scope: trio.CancelScope | None = None) -> C:
        cert = await self._issuer.issue(identity, self.policy.ttl_seconds)
        if scope is not None and scope.cancel_called:  # forgotten while we waited
            return cert
        now = dt.datetime.now(dt.UTC)
        delay = max(0.0, (cert.renew_at() - now).total_seconds())
        previous = self._entries.get(identity)
        self._entries[identity] = _Entry(cert, trio.current_time() + delay, trio.Event())
        if previous is not None:
            previous.replaced.set()
        log.info(
            EVENT_CERTIFICATE_FETCHED,
            identity=str(identity),
            serial=f"{cert.serial:x}",
            not_after=cert.not_after.isoformat(),
            renew_in=round(delay, 3),
        )
        return cert

    async def _renew_forever(self, identity: SpiffeId, scope: trio.CancelScope) -> None:
        failures = 0
        retry_at = 0.0
        with scope:
            while True:
                entry = self._entries.get(identity)
                if entry is None:  # forgotten before this task first ran
                    return
                with trio.move_on_at(retry_at if failures else entry.renew_deadline):
                    await entry.replaced.wait()
                    failures = 0  # fetch_now brought a fresh certificate
                    continue
                try:
                    await self._fetch(identity, scope)
                except CertificateRequestError as exc:  # keep the old certificate meanwhile
                    failures += 1
                    self._failures += 1
                    delay = self.policy.backoff.delay(failures)
                    retry_at = trio.current_time() + delay
                    left = entry.cert.not_after - dt.datetime.now(dt.UTC)
                    log.warning(
                        EVENT_RENEWAL_FAILED,
                        identity=str(identity),
                        reason=getattr(exc, "reason", type(exc).__name__),
                        detail=str(exc),
                        attempt=failures,
                        retry_in=delay,
                        expires_in=max(0, int(left.total_seconds())),
                    )
                else:
                    failures = 0
                    self._renewals += 1


def _assemble(
    identity: SpiffeId, key: PrivateKey, chain: tuple[x509.Certificate, ...], bundle: TrustBundle
) -> WorkloadCertificate:
    """Check what the signer returned before anyone presents it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        cert = WorkloadCertificate(identity, key, chain, bundle)
    except (IdentityError, PeerVerificationError) as exc:
        raise BadCaResponse("wrong-identity", f"the signed certificate is unusable: {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise BadCaResponse("wrong-key", f"the CA certified another key than ours for {identity}")
    try:
        for child, parent in itertools.pairwise(chain):
            child.verify_directly_issued_by(parent)
        if not any(_issued_by(chain[-1], root) for root in bundle.roots):
            raise ValueError("the chain does not lead to a root of the trust bundle")
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise BadCaResponse(
            "bad-chain", f"the chain for {identity} does not verify: {exc}"
        ) from exc
    return cert


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    if cert == root:
        return True
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@asynccontextmanager
async def open_issuing_manager(
    issuer: Issuer[C], *, policy: RenewalPolicy | None = None
) -> AsyncIterator[CertificateManager[C]]:
    """A :class:`CertificateManager` whose renewal tasks stop when the block exits."""
    async with trio.open_nursery() as nursery:
        manager = CertificateManager(issuer, nursery, policy=policy)
        try:
            yield manager
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_certificate_manager(
    signer: Signer, *, policy: RenewalPolicy | None = None
) -> AsyncIterator[CertificateManager[WorkloadCertificate]]:
    """The same, each key made in this process and its CSR signed by ``signer``."""
    async with open_issuing_manager(SignerIssuer(signer), policy=policy) as manager:
        yield manager
