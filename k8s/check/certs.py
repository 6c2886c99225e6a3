"""The CA's certificates: the Secret the control plane signs with (an operator's
``cacerts``, else ambit's ``ambit-ca``, :mod:`ca.secret_keys`) read as the control plane
reads it (so a root and intermediate that do not belong together fail here as they
would there), and every certificate in it checked against the clock: expired or not yet
valid fails, within :data:`k8s.check.base.EXPIRY_WARNING` (30 days) of expiry warns.

:func:`certificate_dates` is pure (certificates and an instant in, an outcome out).
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509

from ca.authority import CaConfig
from ca.errors import CaFileError
from ca.secret_keys import (
    PLUGGED_SECRET_NAME,
    SECRET_NAME,
    ca_from_cacerts,
    ca_from_secret,
)
from k8s.check.base import Context, Outcome, answered, fail, warn

PLUGGED_HINT = (
    "the CA's keys are the operator's (Secret {where}): replace it with renewed certificates"
    " in Istio's plug-in CA layout (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem),"
    " then restart the control plane"
)
OWN_HINT = (
    "rotating ambit-ca in place is not built yet: delete Secret {where} and restart the"
    " control plane, which makes a new root (workloads get certificates of it as they renew"
    " theirs, within a day), or plug in your own CA as Secret cacerts"
)


def _certificates(secret: Mapping[str, Any]) -> list[tuple[str, x509.Certificate]]:
    """Every certificate of the Secret's ``*-cert.pem`` and ``cert-chain.pem`` keys, each
    with where it is (``root-cert.pem #1``); unreadable ones are left to the parse."""
    data = secret.get("data") or {}
    out: list[tuple[str, x509.Certificate]] = []
    for key in sorted(data):
        if not (key.endswith("-cert.pem") or key == "cert-chain.pem"):
            continue
        try:
            certs = x509.load_pem_x509_certificates(base64.b64decode(data[key], validate=True))
        except (binascii.Error, ValueError, TypeError):
            continue
        out += [(f"{key} #{i + 1}" if len(certs) > 1 else key, c) for i, c in enumerate(certs)]
    return out


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def certificate_dates(
    certificates: Iterable[tuple[str, x509.Certificate]],
    now: datetime.datetime,
    warning: datetime.timedelta,
    hint: str,
) -> Outcome:
    """Fail for a certificate expired or not yet valid at ``now``; warn for one that
    expires within ``warning``; else ok, saying when the first expires."""
    failed: list[str] = []
    soon: list[str] = []
    first: datetime.datetime | None = None
    for where, cert in certificates:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        name = f"{where} ({cert.subject.rfc4514_string() or 'no subject'})"
        if end <= now:
            failed.append(f"{name} expired on {_day(end)}")
        elif start > now:
            failed.append(f"{name} is not valid before {_day(start)}")
        elif end - now <= warning:
            soon.append(f"{name} expires on {_day(end)}, in {(end - now).days} days")
        first = end if first is None or end < first else first
    if failed:
        return fail("; ".join([*failed, *soon]), hint)
    if soon:
        return warn("; ".join(soon), hint)
    if first is None:
        return fail("no certificate in the Secret", hint)
    return Outcome("ok", f"the first to expire does on {_day(first)}")


async def ca_secret(context: Context) -> Outcome:
    """The Secret the control plane signs with is there, usable, and in date."""
    ns = context.namespace
    for name, plugged in ((PLUGGED_SECRET_NAME, True), (SECRET_NAME, False)):
        status, body = await context.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        if status == 404:
            continue
        if status != 200:
            return answered(status, body, f"GET Secret {ns}/{name}")
        where = f"{ns}/{name}"
        hint = (PLUGGED_HINT if plugged else OWN_HINT).format(where=where)
        try:
            (ca_from_cacerts if plugged else ca_from_secret)(body, CaConfig())
        except CaFileError as error:
            return fail(f"Secret {where} cannot be used: {error}", hint)
        return certificate_dates(
            _certificates(body), context.now, context.config.expiry_warning, hint
        )
    return warn(
        f"no CA Secret in {ns} ({PLUGGED_SECRET_NAME} or {SECRET_NAME})",
        f"the control plane creates {SECRET_NAME} when it first starts; to use your own CA,"
        f" create Secret {PLUGGED_SECRET_NAME} (Istio's plug-in CA layout) before it starts",
    )
