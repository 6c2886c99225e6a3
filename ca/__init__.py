"""The certificate authority: root and intermediate keys, CSR checking and
signing, the signing service, and the trust bundle with root rotation.

It knows nothing of pods: whether a caller may have an identity is asked of
an authorizer passed in.

Modules: ``authority`` (the CA and its config), ``certificates`` (building
X.509), ``csr`` (checking CSRs; the refusal types), ``keystore`` (files on
disk), ``auth`` (tokens and authorizers), ``api`` (the HTTP/2 API, sans-IO),
``service`` (``serve_ca``, the Trio loop), ``local`` (an in-process signer).
"""

from ca.auth import (
    Authenticator,
    Authorizer,
    NamespaceWildcard,
    StaticAuthorizer,
    TokenAuthenticator,
)
from ca.authority import CaConfig, CertificateAuthority, IssuedCertificate
from ca.csr import CsrRejected, CsrRequest
from ca.errors import CaError, CaFileError, CaStateError, InvalidTtl, KeyFilePermissionError
from ca.local import LocalSigner
from ca.service import serve_ca

__all__ = [
    "Authenticator",
    "Authorizer",
    "CaConfig",
    "CaError",
    "CaFileError",
    "CaStateError",
    "CertificateAuthority",
    "CsrRejected",
    "CsrRequest",
    "InvalidTtl",
    "IssuedCertificate",
    "KeyFilePermissionError",
    "LocalSigner",
    "NamespaceWildcard",
    "StaticAuthorizer",
    "TokenAuthenticator",
    "serve_ca",
]
