"""The CA's files on disk: where they live, and reading and writing them safely.

Private keys are written atomically with mode 0600 whatever the umask, and a
key file that group or others can read is refused on load: a CA key that
leaked is a CA that must be replaced everywhere.

Layout of a CA directory (Istio's names where they exist)::

    root-cert.pem        the root that signs now (or signs the intermediate)
    root-key.pem         its key (0600)
    previous-roots.pem   roots still trusted during a rotation overlap (optional)
    ca-cert.pem          the intermediate, when there is one
    ca-key.pem           its key (0600)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.errors import CaFileError, KeyFilePermissionError
from mesh.files import write_atomically
from mesh.identity import certs_to_pem

KEY_FILE_MODE = 0o600
CERT_FILE_MODE = 0o644


@dataclass(frozen=True)
class CaFiles:
    """The paths of one CA directory."""

    directory: Path

    @property
    def root_cert(self) -> Path:
        return self.directory / "root-cert.pem"

    @property
    def root_key(self) -> Path:
        return self.directory / "root-key.pem"

    @property
    def previous_roots(self) -> Path:
        return self.directory / "previous-roots.pem"

    @property
    def intermediate_cert(self) -> Path:
        return self.directory / "ca-cert.pem"

    @property
    def intermediate_key(self) -> Path:
        return self.directory / "ca-key.pem"

    def has_root(self) -> bool:
        return self.root_cert.exists() or self.root_key.exists()

    def has_intermediate(self) -> bool:
        return self.intermediate_cert.exists() or self.intermediate_key.exists()


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem, KEY_FILE_MODE)


def write_certificates(path: Path, certs: Iterable[x509.Certificate]) -> None:
    write_atomically(path, certs_to_pem(certs), CERT_FILE_MODE)


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load a CA key, refusing one that group or others can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CaFileError(f"cannot open CA key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CaFileError(f"CA key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFilePermissionError(
                f"CA key {path} has mode {mode:04o}: group or others can read it."
                f" If it may have leaked, replace the CA; otherwise run: chmod 600 {path}"
            )
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaFileError(f"CA key {path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaFileError(f"CA key {path} is a {type(key).__name__}; ambit CA keys are ECDSA")
    return key


def read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaFileError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CaFileError(f"{path} is not a list of PEM certificates: {exc}") from exc
    return certs


def read_certificate(path: Path) -> x509.Certificate:
    certs = read_certificates(path)
    if len(certs) != 1:
        raise CaFileError(f"{path} holds {len(certs)} certificates; expected exactly one")
    return certs[0]
