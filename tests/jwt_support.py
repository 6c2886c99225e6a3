"""Test signing keys (RSA and EC, made with cryptography), their JWKS, and tokens signed with
PyJWT, so JWT tests state only the claims they are about."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.example"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        data["kid"] = self.kid
        if with_alg:
            data["alg"] = self.alg
        return data

    def sign(self, claims: dict[str, Any], *, kid: str | None = "", alg: str = "") -> str:
        """``claims`` signed; ``kid`` "" names this key, None names none."""
        headers = {} if kid is None else {"kid": kid or self.kid}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


@cache
def rsa_key(kid: str = "rsa-1") -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@cache
def ec_key(kid: str = "ec-1") -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: SigningKey) -> str:
    """The JWKS document publishing ``keys``."""
    return json.dumps({"keys": [k.jwk() for k in keys]})


def claims(**extra: Any) -> dict[str, Any]:
    """Claims of a token valid now for an hour: issuer :data:`ISSUER`, subject alice."""
    now = int(time.time())
    return {"iss": ISSUER, "sub": "alice", "iat": now, "exp": now + 3600} | extra
