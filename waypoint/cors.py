"""The CORS filter (Gateway API's HTTPCORSFilter, GEP-1767) as pure functions.

- :func:`origin_allowed`: an ``Origin`` against ``allow_origins``: ``*`` alone allows
  every origin; otherwise scheme and port must be equal (a missing port is the scheme's
  default: http 80, https 443) and the host equal, case-insensitively, or, for a host
  starting with ``*``, end with what follows it (``https://*.bar.com`` allows
  ``https://www.bar.com`` and ``https://a.www.bar.com``, not ``https://bar.com``).
- :func:`preflight` answers a preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) itself, never forwarding it: the headers of the
  answer, none of the CORS ones when the origin is not allowed (the browser then refuses
  the real request). Its status is :data:`PREFLIGHT_STATUS`.
- :func:`response_headers`: the headers added to the response of an actual request from
  an allowed origin.

The allowed origin is always echoed (never ``*``), so the answer is right with and
without credentials; ``allow_methods`` or ``allow_headers`` of ``*`` echo what the
preflight asked for; ``expose_headers`` of ``*`` is sent as ``*`` only without
credentials, as the CORS protocol reads ``*`` literally with them. Answers that depend on
``Origin`` say so with ``vary: origin``. Pure; no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from mesh.model_l7 import Cors
from waypoint.http_request import Headers, HttpRequest

PREFLIGHT_STATUS: Final = 204
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_ORIGIN_RE: Final = re.compile(r"(https?)://([^:/?#]+)(?::([0-9]{1,5}))?", re.IGNORECASE)


def _parts(origin: str) -> tuple[str, str, int] | None:
    m = _ORIGIN_RE.fullmatch(origin)
    if m is None:
        return None
    scheme = m.group(1).lower()
    port = int(m.group(3)) if m.group(3) else _DEFAULT_PORTS[scheme]
    return scheme, m.group(2).lower(), port


def origin_allowed(cors: Cors, origin: str) -> bool:
    """Whether ``origin`` (an ``Origin`` header's value) is one ``cors`` allows."""
    wanted = _parts(origin)
    for allowed in cors.allow_origins:
        if allowed == "*":
            return True
        parts = _parts(allowed)
        if wanted is None or parts is None or parts[0::2] != wanted[0::2]:
            continue
        host = parts[1]
        if host == "*" or host == wanted[1]:
            return True
        if host.startswith("*.") and wanted[1].endswith(host[1:]):
            return True
    return False


def is_preflight(request: HttpRequest) -> bool:
    return (
        request.method == "OPTIONS"
        and request.header("origin") is not None
        and request.header("access-control-request-method") is not None
    )


def _common(cors: Cors, origin: str) -> list[tuple[str, str]]:
    headers = [("access-control-allow-origin", origin)]
    if cors.allow_credentials:
        headers.append(("access-control-allow-credentials", "true"))
    expose = cors.expose_headers
    if expose == ("*",) and cors.allow_credentials:
        expose = ()
    if expose:
        headers.append(("access-control-expose-headers", ", ".join(expose)))
    return headers


def preflight(cors: Cors, request: HttpRequest) -> Headers:
    """The headers answering the preflight ``request`` (see :func:`is_preflight`)."""
    origin = request.header("origin") or ""
    if not origin_allowed(cors, origin):
        return (("vary", "origin"),)
    headers = _common(cors, origin)
    asked = request.header("access-control-request-method")
    methods = (asked,) if cors.allow_methods == ("*",) and asked else cors.allow_methods
    if methods and methods != ("*",):
        headers.append(("access-control-allow-methods", ", ".join(methods)))
    asked = request.header("access-control-request-headers")
    allow = cors.allow_headers
    if allow == ("*",):
        allow = (asked,) if asked else ()
    if allow:
        headers.append(("access-control-allow-headers", ", ".join(allow)))
    headers.append(("access-control-max-age", str(cors.max_age)))
    headers.append(("vary", "origin"))
    return tuple(headers)


def response_headers(cors: Cors, request: HttpRequest) -> Headers:
    """The CORS headers to add to the response of ``request`` (not a preflight)."""
    origin = request.header("origin")
    if origin is None:
        return ()
    if not origin_allowed(cors, origin):
        return (("vary", "origin"),)
    return (*_common(cors, origin), ("vary", "origin"))
