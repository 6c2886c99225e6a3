"""``ambit ca``: run the certificate authority's signing service on its own."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from mesh.constants import CONTROL_PLANE_PORT, DEFAULT_TRUST_DOMAIN


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ca",
        help="run the CA signing service (POST /v1/certificates on TLS + HTTP/2)",
        description=(
            "Run the certificate authority. Keys live in DIR (created on first run, key files"
            " 0600). Callers authenticate with bearer tokens listed in TOKENS, one"
            " 'TOKEN CALLER IDENTITY-PATTERN...' per line; a pattern is a SPIFFE id or"
            " 'spiffe://TD/ns/NS/sa/*'."
        ),
    )
    parser.add_argument("--dir", required=True, type=Path, help="directory of the CA's keys")
    parser.add_argument("--tokens", required=True, type=Path, help="token file (see above)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=CONTROL_PLANE_PORT)
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument("--intermediate", action="store_true", help="sign with an intermediate")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ca import CaConfig, CertificateAuthority, StaticAuthorizer, TokenAuthenticator, serve_ca
    from ca.errors import CaError

    try:
        tokens, grants = _read_tokens(args.tokens)
        authority = CertificateAuthority.load_or_create(
            args.dir, CaConfig(trust_domain=args.trust_domain), intermediate=args.intermediate
        )
    except (OSError, ValueError, CaError) as exc:
        print(f"ambit ca: {exc}", file=sys.stderr)
        return 1

    async def serve() -> None:
        await serve_ca(
            authority,
            TokenAuthenticator(tokens),
            StaticAuthorizer(grants),
            host=args.host,
            port=args.port,
        )

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        return 130
    return 0


def _read_tokens(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    tokens: dict[str, str] = {}
    grants: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) < 3:
            raise ValueError(f"{path}:{number}: expected 'TOKEN CALLER IDENTITY-PATTERN...'")
        token, caller, *patterns = words
        tokens[token] = caller
        grants.setdefault(caller, []).extend(patterns)
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens, grants
