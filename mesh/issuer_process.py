"""A certificate issued by a short-lived helper process, so the proxy never loads
``cryptography`` (about 8 MB of resident memory: :mod:`mesh.credential`).

:class:`ProcessIssuer` is a :class:`mesh.certs.Issuer`: for each certificate (at start,
then at half-life) it runs ``python -m mesh.issuer_process``, which does what a proxy
does in process (:class:`mesh.certs.SignerIssuer` over :class:`mesh.ca_client.CaClient`:
a new P-256 key, its CSR, the CA's answer checked: our key, our identity, a chain to the
bundle) and writes the result as one JSON object on its standard output. The private key
crosses a pipe from the helper to the proxy, never a file. The request (the CA's
address, the bearer token, the bundle) goes on the helper's standard input, never on its
command line. The CA's failures come back as the same :class:`CertificateRequestError`
kinds and reasons, so the manager logs and retries them as it does in process. Each
answer carries the CA's current trust bundle, trusted from then on (root rotation).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from mesh.ca_client import (
    BadCaResponse,
    CaNotTrusted,
    CaRefused,
    CaUnreachable,
    CertificateRequestError,
)
from mesh.credential import Credential, HasPem, PemBundle
from mesh.identity import IdentityError, SpiffeId
from mesh.tokens import Token, current

# How long the helper may take beyond the CA's own timeout: a cold interpreter start.
START_SECONDS: Final = 20.0
MAX_ANSWER_BYTES: Final = 1024 * 1024
_KINDS: Final[dict[str, type[CertificateRequestError]]] = {
    cls.__name__: cls for cls in (CaUnreachable, CaNotTrusted, BadCaResponse)
}


@dataclass
class ProcessIssuer:
    """Issue through the helper process; what :class:`mesh.ca_client.CaClient` takes."""

    address: tuple[str, int]
    token: Token
    bundle: HasPem
    trust_domain: str
    ca_identity: SpiffeId
    timeout: float = 10.0
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", __name__])

    async def issue(self, identity: SpiffeId, ttl_seconds: int | None) -> Credential:
        request = {
            "address": list(self.address),
            "token": current(self.token),
            "bundle": self.bundle.pem().decode("ascii"),
            "trust_domain": self.trust_domain,
            "ca_identity": str(self.ca_identity),
            "identity": str(identity),
            "ttl_seconds": ttl_seconds,
            "timeout": self.timeout,
        }
        with trio.move_on_after(self.timeout + START_SECONDS) as waited:
            done = await trio.run_process(
                self.command, stdin=json.dumps(request).encode(), capture_stdout=True,
                check=False,
            )  # fmt: skip
        if waited.cancelled_caught:
            raise CaUnreachable("timeout", f"the certificate helper took over "
                                f"{self.timeout + START_SECONDS:g}s")  # fmt: skip
        answer = _answer(done.stdout, done.returncode)
        if "error" in answer:
            raise _error(answer["error"])
        try:
            bundle = PemBundle(answer["bundle"].encode("ascii"))
            credential = Credential(
                identity=SpiffeId.parse(answer["identity"]),
                pem_chain=answer["chain"].encode("ascii"),
                pem_key=answer["key"].encode("ascii"),
                bundle=bundle,
                not_before=dt.datetime.fromisoformat(answer["not_before"]),
                not_after=dt.datetime.fromisoformat(answer["not_after"]),
                serial=int(answer["serial"], 16),
            )
        except (KeyError, TypeError, ValueError, AttributeError, IdentityError) as exc:
            raise BadCaResponse("bad-response", f"the certificate helper's answer is "
                                f"unusable: {exc!r}") from exc  # fmt: skip
        if credential.identity != identity:
            raise BadCaResponse("wrong-identity", f"the helper issued {credential.identity}, "
                                f"not {identity}")  # fmt: skip
        self.bundle = bundle
        return credential


def _answer(stdout: bytes, returncode: int) -> dict[str, Any]:
    try:
        answer = json.loads(stdout[:MAX_ANSWER_BYTES])
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CaUnreachable("helper-failed", f"the certificate helper exited {returncode} "
                            "without an answer (its error is on our stderr)")  # fmt: skip
    return answer


def _error(error: dict[str, Any]) -> CertificateRequestError:
    reason, message = str(error.get("reason", "helper")), str(error.get("message", ""))
    if error.get("kind") == "CaRefused":
        return CaRefused(int(error.get("status", 0)), reason, message)
    return _KINDS.get(str(error.get("kind")), CertificateRequestError)(reason, message)


# ---- the helper ----------------------------------------------------------------------


async def _issue(request: dict[str, Any]) -> dict[str, Any]:
    from mesh.ca_client import CaClient
    from mesh.certs import SignerIssuer
    from mesh.identity import TrustBundle

    host, port = request["address"]
    client = CaClient(
        (str(host), int(port)),
        token=str(request["token"]),
        bundle=TrustBundle.from_pem(request["bundle"]),
        trust_domain=str(request["trust_domain"]),
        ca_identity=SpiffeId.parse(request["ca_identity"]),
        timeout=float(request["timeout"]),
    )
    identity = SpiffeId.parse(request["identity"])
    try:
        cert = await SignerIssuer(client).issue(identity, request["ttl_seconds"])
    except CertificateRequestError as exc:
        error: dict[str, Any] = {"kind": type(exc).__name__, "reason": exc.reason,
                                 "message": str(exc)}  # fmt: skip
        if isinstance(exc, CaRefused):
            error["status"] = exc.status
        return {"error": error}
    return {
        "identity": str(cert.identity),
        "chain": cert.chain_pem().decode("ascii"),
        "key": cert.key_pem().decode("ascii"),
        "bundle": client.bundle.pem().decode("ascii"),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "serial": f"{cert.serial:x}",
    }


def main() -> int:
    """The helper: one request on stdin, one JSON answer on stdout (its log lines, as
    JSON, go to stderr: the proxy's log)."""
    from mesh.telemetry import configure_logging

    configure_logging("info", json=True, stream=sys.stderr)
    request = json.loads(sys.stdin.buffer.read(MAX_ANSWER_BYTES))
    answer = trio.run(_issue, request)
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
