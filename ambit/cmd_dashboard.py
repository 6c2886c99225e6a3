"""``ambit dashboard``: the mesh's live view in a browser.

The page and its data are the control plane's (:mod:`k8s.dashboard`), on its authenticated
API (HTTPS on 15016, the control plane's SPIFFE certificate, a bearer token): a browser
can do neither of those, so this command serves the page on **loopback only**
(``127.0.0.1``) and forwards each request to the control plane over that API, checking its
certificate against the mesh's trust bundle and adding the operator's token (local mode:
``<state-dir>/mesh/tap.json``, root's, as ``ambit tap`` reads it; with ``--kubeconfig``,
the kubeconfig's bearer token, as ``ambit tap --kubeconfig`` sends it). The token never
reaches the browser.

Loopback is not enough on a shared machine (any local user can connect to it), so the
browser proves itself too (:class:`Gate`): the printed URL carries a one-time login token;
its first use sets a random session cookie (``HttpOnly``, ``SameSite=Strict``) and every
other request needs that cookie, and a ``Host`` of ``127.0.0.1:PORT`` or
``localhost:PORT`` (no DNS rebinding). Pages go out with a Content-Security-Policy of
``'self'`` only.
"""

from __future__ import annotations

import argparse
import hmac
import secrets
import sys
from dataclasses import dataclass, field
from functools import partial
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

import trio

from ambit import control_api
from k8s.local.errors import LocalClusterError

if TYPE_CHECKING:
    from ambit.control_api import ControlApi
    from mesh.http import Request, Response

COOKIE: Final = "ambit_dashboard"
FORWARDED: Final = ("/dashboard/", "/dashboard/app.js", "/dashboard/app.css", "/v1/dashboard",
                    "/v1/why")  # fmt: skip
FORWARD_TIMEOUT: Final = 10.0
SECURITY_HEADERS: Final = (
    ("content-security-policy", "default-src 'self'; img-src 'self' data:;"
     " frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
)  # fmt: skip


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dashboard",
        help="open the mesh's live view (service graph, golden metrics, policies, why)",
        description="Serve the control plane's dashboard on 127.0.0.1 and print its URL, with"
        " a one-time login token; runs until Ctrl-C. It forwards the browser's requests to"
        " the control plane's authenticated API with your credentials (local mode: the"
        " cluster's, root's; --kubeconfig: that user's bearer token).",
    )
    parser.add_argument("--port", type=int, default=0,
                        help="the loopback port to serve on (default: any free one)")  # fmt: skip
    control_api.add_arguments(
        parser,
        "a Kubernetes cluster's control plane, as this kubeconfig's user (it must be allowed"
        " to get meshsnapshots of ambit.io)",
    )
    parser.set_defaults(run=run)


@dataclass
class Gate:
    """Who may use the page: the browser that used the one-time ``login`` token first
    (it holds ``session`` as a cookie), asking for this server by a loopback name."""

    port: int
    login: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    used: bool = False

    def hosts(self) -> tuple[str, ...]:
        return (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/login?token={self.login}"

    def log_in(self, token: str) -> str | None:
        """The cookie header to set for the first use of the login token, else None."""
        if self.used or not hmac.compare_digest(token.encode(), self.login.encode()):
            return None
        self.used = True
        return f"{COOKIE}={self.session}; HttpOnly; SameSite=Strict; Path=/"

    def refusal(self, host: str | None, cookie: str | None) -> str | None:
        """Why a request with these ``Host`` and ``Cookie`` headers is refused, or None."""
        if host not in self.hosts():
            return f"ask for {self.hosts()[0]}: this page is served to loopback only"
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie or "")
        except CookieError:
            return "a cookie that cannot be read"
        got = jar.get(COOKIE)
        if got is None or not hmac.compare_digest(got.value.encode(), self.session.encode()):
            return "not logged in: open the URL 'ambit dashboard' printed (it works once)"
        return None


def _page(status: int, words: str) -> Response:
    from mesh.http import Response

    body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>ambit dashboard</title>"
            f"<h1>{status}</h1><p>{words}</p></html>").encode()  # fmt: skip
    return Response(status, body, "text/html; charset=utf-8", SECURITY_HEADERS)


def routes(gate: Gate, api: ControlApi) -> dict[str, Any]:
    """The loopback server's routes: ``/login``, ``/`` and the forwarded paths."""
    from mesh.http import Response
    from mesh.tap_client import TapClientError, get

    def login(request: Request) -> Response:
        if request.header("host") not in gate.hosts():
            return _page(421, "this page is served to loopback only")
        cookie = gate.log_in(request.query.get("token", ""))
        if cookie is None:
            used = "it was used already: run 'ambit dashboard' again" if gate.used else ""
            return _page(403, f"this login link is not valid; {used}".rstrip("; "))
        headers = (("location", "/dashboard/"), ("set-cookie", cookie), *SECURITY_HEADERS)
        return Response(303, b"", "text/plain", headers)

    def root(request: Request) -> Response:
        refused = gate.refusal(request.header("host"), request.header("cookie"))
        if refused is not None:
            return _page(401, refused)
        return Response(303, b"", "text/plain", (("location", "/dashboard/"), *SECURITY_HEADERS))

    async def forward(request: Request) -> Response:
        refused = gate.refusal(request.header("host"), request.header("cookie"))
        if refused is not None:
            return _page(401, refused)
        target = request.path + (f"?{urlencode(request.query)}" if request.query else "")
        try:
            with trio.fail_after(FORWARD_TIMEOUT):
                status, content_type, body, _ = await get(
                    api.address, identity=api.identity, bundle=api.bundle, token=api.token,
                    target=target,
                )  # fmt: skip
        except TapClientError as exc:
            return _json_error(502, str(exc))
        except trio.TooSlowError:
            return _json_error(504, f"the control plane did not answer in {FORWARD_TIMEOUT:g} s")
        return Response(status, body, content_type, SECURITY_HEADERS)

    found: dict[str, Any] = {"/login": login, "/": root}
    found.update((path, forward) for path in FORWARDED)
    return found


def _json_error(status: int, message: str) -> Response:
    from mesh.http import json_response

    return json_response({"error": message, "status": status}, status, headers=SECURITY_HEADERS)


async def serve_dashboard(
    api: ControlApi,
    port: int,
    *,
    task_status: trio.TaskStatus[Gate] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page on ``127.0.0.1:port`` until cancelled; ``started(gate)`` once it
    listens (the gate knows the URL)."""
    from mesh.admin import serve_http

    gate = Gate(port)
    table: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve_http, table, host="127.0.0.1", port=port))
        gate.port = bound[1]
        table.update(routes(gate, api))
        task_status.started(gate)


def run(args: argparse.Namespace) -> int:
    try:
        api = control_api.from_arguments(args)
    except LocalClusterError as exc:
        print(f"ambit dashboard: {exc}", file=sys.stderr)
        return 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            gate = await nursery.start(serve_dashboard, api, args.port)
            print(f"ambit dashboard: open {gate.url()}", flush=True)
            print("(the link works once, in one browser; Ctrl-C to stop)", file=sys.stderr)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"ambit dashboard: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
