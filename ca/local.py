"""An in-process :class:`mesh.certs.Signer`: the CA asked directly, no network.

For a process that hosts the CA (the control plane's own certificates, the
one-machine mesh) and for tests. It applies the same checks as the service,
CSR rules then the authorizer, and fails with the same codes and statuses.
"""

from __future__ import annotations

import trio

from ca.auth import Authorizer, refusal
from ca.authority import CertificateAuthority
from ca.csr import CsrRejected
from ca.errors import InvalidTtl
from mesh.ca_client import CaRefused, SignedChain


class LocalSigner:
    """Signs for ``caller`` with ``authority``; ``authorizer`` None allows every identity."""

    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        caller: str,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.authority = authority
        self.caller = caller
        self.authorizer = authorizer

    async def sign(self, csr_pem: bytes, ttl_seconds: int | None) -> SignedChain:
        await trio.lowlevel.checkpoint()
        try:
            request = self.authority.inspect(csr_pem)
        except CsrRejected as exc:
            raise CaRefused(400, exc.reason, exc.message) from exc
        if self.authorizer is not None:
            why_not = refusal(self.authorizer, self.caller, request.identity)
            if why_not is not None:
                raise CaRefused(403, "not-authorized", why_not)
        try:
            issued = self.authority.sign(request, caller=self.caller, ttl_seconds=ttl_seconds)
        except InvalidTtl as exc:
            raise CaRefused(400, exc.reason, str(exc)) from exc
        return issued.chain, issued.bundle
