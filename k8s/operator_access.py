"""Who may read the control plane's operator routes (``/debug/snapshot``, used by ``ambit
why``): a caller presenting the operator's bearer token.

Local mode writes one random token to ``<state>/mesh/operator-token`` (0600: the machine's
root, who runs the cluster) and starts the control plane with ``--operator-token-file``;
the CLI reads it from there. Without a token file the operator routes answer 403 to
everyone: nothing is served unauthenticated. The file is re-read when it changes.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from mesh.http import Request, Response

log = structlog.get_logger("k8s.operator_access")

Route = Callable[[Request], Response]
TOKEN_FILE = "operator-token"


class OperatorTokens:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._token = ""
        self._mtime = -1

    def _current(self) -> str:
        if self.path is None:
            return ""
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self._mtime:
                self._token = self.path.read_text().strip()
                self._mtime = mtime
        except OSError as exc:
            if self._mtime != -2:
                log.warning("operator_token_unreadable", path=str(self.path), reason=str(exc))
            self._token, self._mtime = "", -2
        return self._token

    def refusal(self, request: Request) -> Response | None:
        """None when ``request`` carries the operator's token; else the answer refusing it."""
        token = self._current()
        if not token:
            return Response(403, b"operator routes are off: no --operator-token-file\n")
        given = request.header("authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
            challenge = (("www-authenticate", 'Bearer realm="ambit-controlplane"'),)
            return Response(401, b"unauthenticated: the operator's bearer token\n",
                            headers=challenge)  # fmt: skip
        return None

    def guard(self, route: Route) -> Route:
        """``route``, answered only to callers with the operator's token."""

        def guarded(request: Request) -> Response:
            refused = self.refusal(request)
            if refused is not None:
                log.info("operator_request_refused", src=request.src, path=request.path,
                         status=refused.status)  # fmt: skip
                return refused
            return route(request)

        return guarded
