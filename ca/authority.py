"""The certificate authority: its root (and optional intermediate) key, signing
checked CSRs into SPIFFE workload certificates, and root rotation.

A leaf carries exactly one URI SAN (the SPIFFE id), ``CA:FALSE``,
digitalSignature + keyEncipherment and serverAuth + clientAuth. It lives
``default_ttl_seconds`` (24 h) unless the caller asks otherwise, and never
longer than ``max_ttl_seconds`` or its issuer. ``not_before`` is backdated a
little so a peer whose clock runs slightly behind accepts a fresh certificate.

Rotation: :meth:`CertificateAuthority.rotate_root` makes a new root that signs
from then on; the trust bundle carries the old and the new root until
:meth:`CertificateAuthority.retire_root` drops the old one, so leaves of both
verify during the overlap. A CA whose keys someone else keeps (a Secret ambit never
overwrites, or an operator's plug-in ``cacerts``, whose root key ambit never sees) is
built with ``fixed``, the reason it cannot rotate, which rotation raises.

A plug-in CA signs with its intermediate; ``chain`` holds the certificates between that
intermediate and the root, sent after it in every answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from cryptography import x509

from ca import keystore
from ca.certificates import CaKeyPair, check_issued_by, fingerprint, new_ca, workload_leaf
from ca.csr import CsrRequest, inspect_csr
from ca.errors import CaFileError, CaStateError, InvalidTtl
from mesh.constants import (
    CONTROL_PLANE_SERVICE_ACCOUNT,
    DEFAULT_CERT_TTL_SECONDS,
    DEFAULT_TRUST_DOMAIN,
    SYSTEM_NAMESPACE,
)
from mesh.identity import SpiffeId, TrustBundle, WorkloadCertificate, build_csr, generate_key

log = structlog.get_logger("ca.authority")

EVENT_CERTIFICATE_ISSUED: Final = "certificate_issued"
EVENT_ROOT_CREATED: Final = "ca_root_created"
EVENT_ROOT_LOADED: Final = "ca_root_loaded"
EVENT_ROOT_ROTATED: Final = "ca_root_rotated"
EVENT_ROOT_RETIRED: Final = "ca_root_retired"

DEFAULT_MAX_TTL_SECONDS: Final = 90 * 24 * 3600  # Istio's MAX_WORKLOAD_CERT_TTL
DEFAULT_BACKDATE_SECONDS: Final = 60


@dataclass(frozen=True)
class CaConfig:
    """How the CA signs. Tests build it directly; the control plane from its flags."""

    trust_domain: str = DEFAULT_TRUST_DOMAIN
    default_ttl_seconds: int = DEFAULT_CERT_TTL_SECONDS
    max_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS
    backdate_seconds: int = DEFAULT_BACKDATE_SECONDS
    root_lifetime_days: int = 10 * 365
    intermediate_lifetime_days: int = 5 * 365

    def __post_init__(self) -> None:
        _ = self.control_plane_identity  # raises IdentityError for a malformed trust domain
        if not 0 < self.default_ttl_seconds <= self.max_ttl_seconds:
            raise ValueError(
                f"default_ttl_seconds ({self.default_ttl_seconds}) must be positive and at most"
                f" max_ttl_seconds ({self.max_ttl_seconds})"
            )
        if self.backdate_seconds < 0:
            raise ValueError("backdate_seconds must not be negative")

    @property
    def control_plane_identity(self) -> SpiffeId:
        """The identity the CA service presents to its clients."""
        return SpiffeId(self.trust_domain, SYSTEM_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT)


@dataclass(frozen=True)
class IssuedCertificate:
    """What a signing returns: the chain (leaf first) and the bundle to verify it with."""

    identity: SpiffeId
    chain: tuple[x509.Certificate, ...]
    bundle: TrustBundle

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


class CertificateAuthority:
    """Signs workload certificates for one trust domain.

    Build it with :meth:`create`, :meth:`load` or :meth:`load_or_create`. With
    a directory, every change of keys (creation, rotation, retirement) is
    written there before it takes effect in memory.
    """

    def __init__(
        self,
        root: CaKeyPair | x509.Certificate,
        *,
        config: CaConfig | None = None,
        intermediate: CaKeyPair | None = None,
        chain: tuple[x509.Certificate, ...] = (),
        previous_roots: tuple[x509.Certificate, ...] = (),
        files: keystore.CaFiles | None = None,
        fixed: str | None = None,
    ) -> None:
        """``root`` without its key (a certificate) needs an ``intermediate`` to sign."""
        self.config = config or CaConfig()
        root_cert = root if isinstance(root, x509.Certificate) else root.cert
        if intermediate is None and (isinstance(root, x509.Certificate) or chain):
            raise CaFileError(
                "a CA without its root key, or with a chain, signs with an intermediate:"
                " give its certificate and key (ca-cert.pem, ca-key.pem)"
            )
        if intermediate is not None:
            issuers = (*chain, root_cert)
            check_issued_by(intermediate.cert, issuers[0], "the intermediate")
            for cert, issuer in zip(chain, issuers[1:], strict=False):
                check_issued_by(cert, issuer, "a certificate of the chain")
        self._root = root if isinstance(root, CaKeyPair) else None  # None: not ours
        self._root_cert = root_cert
        self._intermediate = intermediate
        self._chain = chain
        self._previous_roots = previous_roots
        self._files = files
        self._fixed = fixed

    # -- construction -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config: CaConfig | None = None,
        *,
        intermediate: bool = False,
        directory: Path | None = None,
    ) -> CertificateAuthority:
        """A new root (and intermediate); written to ``directory`` if one is given."""
        config = config or CaConfig()
        files = keystore.CaFiles(directory) if directory is not None else None
        if files is not None and files.has_root():
            raise CaFileError(
                f"{directory} already holds a CA root; load it, or move it away to start over"
            )
        root = _new_root(config)
        inter = _new_intermediate(config, root) if intermediate else None
        ca = cls(root, config=config, intermediate=inter, files=files)
        ca._save_all()
        log.info(
            EVENT_ROOT_CREATED,
            root=fingerprint(root.cert),
            intermediate=inter is not None,
            directory=str(directory) if directory else None,
        )
        return ca

    @classmethod
    def load(cls, directory: Path, config: CaConfig | None = None) -> CertificateAuthority:
        """Load the CA written in ``directory``; refuses keys others can read."""
        files = keystore.CaFiles(directory)
        root = CaKeyPair(
            keystore.read_certificate(files.root_cert), keystore.read_private_key(files.root_key)
        )
        inter = None
        if files.has_intermediate():
            inter = CaKeyPair(
                keystore.read_certificate(files.intermediate_cert),
                keystore.read_private_key(files.intermediate_key),
            )
        previous: tuple[x509.Certificate, ...] = ()
        if files.previous_roots.exists():
            previous = tuple(keystore.read_certificates(files.previous_roots))
        ca = cls(root, config=config, intermediate=inter, previous_roots=previous, files=files)
        log.info(
            EVENT_ROOT_LOADED,
            root=fingerprint(root.cert),
            intermediate=inter is not None,
            directory=str(directory),
        )
        return ca

    @classmethod
    def load_or_create(
        cls, directory: Path, config: CaConfig | None = None, *, intermediate: bool = False
    ) -> CertificateAuthority:
        """Load the CA in ``directory``, or create one there if it holds none.

        ``intermediate`` applies to creation only; a loaded CA keeps the layout
        it was created with.
        """
        if keystore.CaFiles(directory).has_root():
            return cls.load(directory, config)
        return cls.create(config, intermediate=intermediate, directory=directory)

    # -- state ------------------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self.config.trust_domain

    @property
    def root(self) -> x509.Certificate:
        """The root that signs now (directly, or through the intermediate)."""
        return self._root_cert

    @property
    def intermediate(self) -> x509.Certificate | None:
        return self._intermediate.cert if self._intermediate else None

    @property
    def trust_bundle(self) -> TrustBundle:
        """The current root first, then roots kept for the rotation overlap."""
        return TrustBundle((self._root_cert, *self._previous_roots))

    # -- signing ----------------------------------------------------------------------

    def inspect(self, csr_pem: bytes | str) -> CsrRequest:
        """Check a CSR against this CA's rules (see :mod:`ca.csr`)."""
        return inspect_csr(csr_pem, trust_domain=self.trust_domain)

    def sign(
        self, request: CsrRequest, *, caller: str, ttl_seconds: int | None = None
    ) -> IssuedCertificate:
        """Sign a checked CSR; the caller must already be authorized for its identity."""
        if ttl_seconds is None:
            ttl_seconds = self.config.default_ttl_seconds
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise InvalidTtl(f"ttl_seconds must be a positive integer, not {ttl_seconds!r}")
        ttl = dt.timedelta(seconds=min(ttl_seconds, self.config.max_ttl_seconds))
        issuer = self._intermediate or self._root
        assert issuer is not None  # __init__ refuses a CA with neither key
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        not_after = min(now + ttl, issuer.cert.not_valid_after_utc, self.root.not_valid_after_utc)
        leaf = workload_leaf(
            request.identity,
            request.public_key,
            issuer,
            not_before=now - dt.timedelta(seconds=self.config.backdate_seconds),
            not_after=not_after,
        )
        log.info(
            EVENT_CERTIFICATE_ISSUED,
            caller=caller,
            identity=str(request.identity),
            serial=f"{leaf.serial_number:x}",
            not_after=not_after.isoformat(),
        )
        chain = (leaf, self._intermediate.cert, *self._chain) if self._intermediate else (leaf,)
        return IssuedCertificate(request.identity, chain, self.trust_bundle)

    def sign_csr(
        self, csr_pem: bytes | str, *, caller: str, ttl_seconds: int | None = None
    ) -> IssuedCertificate:
        """:meth:`inspect` then :meth:`sign`, for callers with no authorization step."""
        return self.sign(self.inspect(csr_pem), caller=caller, ttl_seconds=ttl_seconds)

    def issue_workload_certificate(
        self, identity: SpiffeId, *, caller: str, ttl_seconds: int | None = None
    ) -> WorkloadCertificate:
        """A certificate for a process that hosts the CA itself (e.g. the CA service).

        The key is generated here, in the CA's process, and never leaves it.
        """
        key = generate_key()
        issued = self.sign_csr(build_csr(identity, key), caller=caller, ttl_seconds=ttl_seconds)
        return WorkloadCertificate(identity, key, issued.chain, issued.bundle)

    # -- rotation ---------------------------------------------------------------------

    def rotate_root(self) -> x509.Certificate:
        """Make a new root (and intermediate) that signs from now on; keep trusting the old.

        Returns the new root. Retire the old one with :meth:`retire_root` once
        every workload holds a certificate from the new root (after one
        certificate lifetime at the latest).
        """
        if self._fixed is not None:
            raise CaStateError(self._fixed)
        old = self._root_cert
        root = _new_root(self.config)
        inter = _new_intermediate(self.config, root) if self._intermediate else None
        self._previous_roots = (old, *self._previous_roots)
        self._root, self._root_cert, self._intermediate = root, root.cert, inter
        self._save_all()
        log.info(EVENT_ROOT_ROTATED, root=fingerprint(root.cert), previous=fingerprint(old))
        return root.cert

    def retire_root(self, root: x509.Certificate) -> None:
        """Stop trusting a previous root; leaves it signed no longer verify."""
        if self._fixed is not None:
            raise CaStateError(self._fixed)
        if root == self._root_cert:
            raise CaStateError(
                f"root {fingerprint(root)} still signs; rotate_root() first, then retire it"
            )
        if root not in self._previous_roots:
            raise CaStateError(f"root {fingerprint(root)} is not in this CA's trust bundle")
        self._previous_roots = tuple(r for r in self._previous_roots if r != root)
        self._save_previous_roots()
        log.info(EVENT_ROOT_RETIRED, root=fingerprint(root))

    # -- persistence ------------------------------------------------------------------

    def _save_all(self) -> None:
        if self._files is None:
            return
        assert self._root is not None  # a CA with files made its root itself
        # Previous roots first: a crash later leaves a mismatch load() reports, never a
        # bundle that silently forgot a root still in use.
        self._save_previous_roots()
        keystore.write_private_key(self._files.root_key, self._root.key)
        keystore.write_certificates(self._files.root_cert, [self._root.cert])
        if self._intermediate is not None:
            keystore.write_private_key(self._files.intermediate_key, self._intermediate.key)
            keystore.write_certificates(self._files.intermediate_cert, [self._intermediate.cert])

    def _save_previous_roots(self) -> None:
        if self._files is None:
            return
        if self._previous_roots:
            keystore.write_certificates(self._files.previous_roots, self._previous_roots)
        else:
            self._files.previous_roots.unlink(missing_ok=True)


def _new_root(config: CaConfig) -> CaKeyPair:
    lifetime = dt.timedelta(days=config.root_lifetime_days)
    return new_ca("ambit root CA", config.trust_domain, lifetime)


def _new_intermediate(config: CaConfig, root: CaKeyPair) -> CaKeyPair:
    lifetime = dt.timedelta(days=config.intermediate_lifetime_days)
    return new_ca(
        "ambit intermediate CA", config.trust_domain, lifetime, issuer=root, path_length=0
    )
