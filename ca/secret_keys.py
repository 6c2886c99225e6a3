"""The CA's keys in Kubernetes Secrets: made once and never overwritten, or the
operator's.

:func:`load_ca_from_secrets` looks in one namespace (``ambit-system``) for:

1. the operator's plug-in CA, Secret ``cacerts`` in Istio's layout: ``ca-cert.pem`` and
   ``ca-key.pem`` (the intermediate that signs), ``root-cert.pem`` (the root, or roots,
   workloads trust) and ``cert-chain.pem`` (the intermediate and the certificates up to
   the root). It is used as is: ambit never sees the root's key, never writes the
   Secret, and refuses to rotate (the operator replaces the Secret);
2. else ambit's own, Secret ``ambit-ca`` (type ``ambit.io/ca-root``): ``root-cert.pem``,
   ``root-key.pem``, ``ca-cert.pem``, ``ca-key.pem`` (a root and an intermediate ambit
   made). It is read back on every start, so a restarted control plane keeps its root;
3. else a new root and intermediate, written with a ``create``, which fails if the
   Secret exists: two control planes starting at once both end up with whichever was
   created first, and nothing ever overwrites it.

Parsing and building the Secrets are pure functions (:func:`ca_from_secret`,
:func:`ca_from_cacerts`, :func:`new_ca_secret`); the requests go through
:class:`ca.kube.KubeRequests`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.authority import CaConfig, CertificateAuthority, _new_intermediate, _new_root
from ca.certificates import CaKeyPair, CaPrivateKey, fingerprint
from ca.errors import CaFileError
from ca.kube import ApiUnavailable, Json, KubeRequests
from mesh.constants import SYSTEM_NAMESPACE
from mesh.identity import certs_to_pem

log = structlog.get_logger("ca.secret_keys")

SECRET_NAME: Final = "ambit-ca"
PLUGGED_SECRET_NAME: Final = "cacerts"
SECRET_TYPE: Final = "ambit.io/ca-root"
ROOT_CERT, ROOT_KEY = "root-cert.pem", "root-key.pem"
CA_CERT, CA_KEY, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "cert-chain.pem"
EVENT_SECRET_CREATED: Final = "ca_secret_created"
EVENT_SECRET_LOADED: Final = "ca_secret_loaded"


@dataclass(frozen=True)
class CaSecrets:
    """Where the CA's keys live: ``namespace``/``name`` (ambit's, made once) and
    ``namespace``/``plugged`` (an operator's, used first when present)."""

    namespace: str = SYSTEM_NAMESPACE
    name: str = SECRET_NAME
    plugged: str = PLUGGED_SECRET_NAME

    def path(self, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{self.namespace}/secrets"
        return base if name is None else f"{base}/{name}"


def _field(data: Mapping[str, Any], key: str, where: str) -> bytes:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise CaFileError(f"Secret {where} has no {key}; it holds {sorted(data)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CaFileError(f"Secret {where}: {key} is not base64 ({exc})") from exc


def _certs(data: Mapping[str, Any], key: str, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_field(data, key, where))
    except ValueError as exc:
        raise CaFileError(f"Secret {where}: {key} is not PEM certificates ({exc})") from exc
    return certs


def _key(data: Mapping[str, Any], key: str, where: str) -> CaPrivateKey:
    try:
        loaded = serialization.load_pem_private_key(_field(data, key, where), password=None)
    except (ValueError, TypeError) as exc:
        raise CaFileError(f"Secret {where}: {key} is not an unencrypted PEM key ({exc})") from exc
    if not isinstance(loaded, CaPrivateKey):
        raise CaFileError(f"Secret {where}: {key} is {type(loaded).__name__}; use ECDSA or RSA")
    return loaded


def _pem_key(key: CaPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fixed(where: str, plugged: bool) -> str:
    if plugged:
        return f"the CA's keys are the operator's (Secret {where}): rotate by replacing it"
    return (
        f"the CA's keys live in Secret {where}, which ambit never overwrites;"
        " rotating them there is not built yet"
    )


def new_ca_secret(secrets: CaSecrets, config: CaConfig) -> tuple[CertificateAuthority, Json]:
    """A new root and intermediate: the CA, and the Secret that keeps them."""
    root = _new_root(config)
    inter = _new_intermediate(config, root)
    where = f"{secrets.namespace}/{secrets.name}"
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": secrets.name,
            "namespace": secrets.namespace,
            "labels": {"app.kubernetes.io/managed-by": "ambit"},
        },
        "data": {
            ROOT_CERT: _b64(certs_to_pem([root.cert])),
            ROOT_KEY: _b64(_pem_key(root.key)),
            CA_CERT: _b64(certs_to_pem([inter.cert])),
            CA_KEY: _b64(_pem_key(inter.key)),
        },
    }
    authority = CertificateAuthority(
        root, config=config, intermediate=inter, fixed=_fixed(where, plugged=False)
    )
    return authority, body


def ca_from_secret(secret: Mapping[str, Any], config: CaConfig) -> CertificateAuthority:
    """The CA ambit made, read back from its Secret."""
    where = _where(secret)
    data = _data(secret, where)
    root = CaKeyPair(
        _one(_certs(data, ROOT_CERT, where), ROOT_CERT, where), _key(data, ROOT_KEY, where)
    )
    inter = None
    if CA_CERT in data or CA_KEY in data:
        inter = CaKeyPair(
            _one(_certs(data, CA_CERT, where), CA_CERT, where), _key(data, CA_KEY, where)
        )
    return CertificateAuthority(
        root, config=config, intermediate=inter, fixed=_fixed(where, plugged=False)
    )


def ca_from_cacerts(secret: Mapping[str, Any], config: CaConfig) -> CertificateAuthority:
    """An operator's plug-in CA in Istio's ``cacerts`` layout, used as is."""
    where = _where(secret)
    data = _data(secret, where)
    signer = CaKeyPair(
        _one(_certs(data, CA_CERT, where), CA_CERT, where), _key(data, CA_KEY, where)
    )
    roots = _certs(data, ROOT_CERT, where)
    listed = _certs(data, CERT_CHAIN, where) if CERT_CHAIN in data else [signer.cert]
    if listed[0] != signer.cert:
        raise CaFileError(f"Secret {where}: {CERT_CHAIN} must start with {CA_CERT}")
    # What is sent after the intermediate: the chain up to (not including) a root.
    chain = tuple(c for c in listed[1:] if c not in roots)
    top = chain[-1] if chain else signer.cert
    issuer = next((r for r in roots if r.subject == top.issuer), None)
    if issuer is None:
        raise CaFileError(
            f"Secret {where}: no certificate of {ROOT_CERT} issued"
            f" {top.subject.rfc4514_string()} (the top of {CERT_CHAIN})"
        )
    others = tuple(r for r in roots if r != issuer)
    return CertificateAuthority(
        issuer, config=config, intermediate=signer, chain=chain, previous_roots=others,
        fixed=_fixed(where, plugged=True),
    )  # fmt: skip


def _where(secret: Mapping[str, Any]) -> str:
    meta = secret.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _data(secret: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    data = secret.get("data")
    if not isinstance(data, Mapping):
        raise CaFileError(f"Secret {where} has no data")
    return data


def _one(certs: list[x509.Certificate], key: str, where: str) -> x509.Certificate:
    if len(certs) != 1:
        raise CaFileError(f"Secret {where}: {key} holds {len(certs)} certificates, not one")
    return certs[0]


async def _get(api: KubeRequests, secrets: CaSecrets, name: str) -> Json | None:
    status, body = await api.request("GET", secrets.path(name))
    if status == 404:
        return None
    if status != 200:
        raise ApiUnavailable(
            f"reading Secret {secrets.namespace}/{name} answered HTTP {status}:"
            f" {body.get('message', '')}",
            "may the control plane's service account get and create Secrets in"
            f" {secrets.namespace}?",
        )
    return body


async def load_ca_from_secrets(
    api: KubeRequests, secrets: CaSecrets, config: CaConfig
) -> CertificateAuthority:
    """The operator's ``cacerts``, else ambit's Secret, else a new one created once.
    Raises :class:`ca.errors.CaFileError` for a Secret that cannot be used (the fix is
    the operator's) and :class:`ca.kube.ApiUnavailable` when the API server cannot be
    asked (worth retrying)."""
    plugged = await _get(api, secrets, secrets.plugged)
    if plugged is not None:
        authority = ca_from_cacerts(plugged, config)
        return _loaded(authority, f"{secrets.namespace}/{secrets.plugged}", plugged=True)
    ours = await _get(api, secrets, secrets.name)
    if ours is None:
        authority, body = new_ca_secret(secrets, config)
        status, answer = await api.request("POST", secrets.path(), body)
        if status in (200, 201):
            log.info(
                EVENT_SECRET_CREATED, secret=f"{secrets.namespace}/{secrets.name}",
                root=fingerprint(authority.root),
            )  # fmt: skip
            return authority
        if status != 409:
            raise ApiUnavailable(
                f"creating Secret {secrets.namespace}/{secrets.name} answered HTTP {status}:"
                f" {answer.get('message', '')}",
                f"may the control plane's service account create Secrets in {secrets.namespace}?",
            )
        # Another control plane created it first: its keys are the CA's.
        ours = await _get(api, secrets, secrets.name)
        if ours is None:
            raise ApiUnavailable(f"Secret {secrets.namespace}/{secrets.name} vanished", "retrying")
    authority = ca_from_secret(ours, config)
    return _loaded(authority, f"{secrets.namespace}/{secrets.name}", plugged=False)


def _loaded(authority: CertificateAuthority, where: str, *, plugged: bool) -> CertificateAuthority:
    log.info(EVENT_SECRET_LOADED, secret=where, plugged=plugged, root=fingerprint(authority.root))
    return authority
