"""``ambit dashboard`` in one process: the control plane's tap API over real TLS serving the
dashboard's pages (:mod:`k8s.dashboard`, an observer fed our own proxies' metric text), and
the command's loopback server (:mod:`ambit.cmd_dashboard`) in front of it, asked as a
browser asks: the one-time login, the cookie, the Host, the forwarded answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from ambit.cmd_dashboard import COOKIE, Gate, serve_dashboard
from ambit.control_api import ControlApi
from k8s.config_server import ConfigServer, node_token_authenticator
from k8s.dashboard import dashboard_pages
from k8s.observer import Observer
from k8s.tap_server import TokenTapAuthenticator, serve_tap
from mesh.model import MeshSnapshot
from mesh.tokens import TokenTable
from mesh.traffic_graph import parse_scrape
from tests.builders import service, snapshot, workload
from tests.integration.test_tap_stream import CP_ID, TAP_TOKEN, ZTUNNEL_ID
from tests.pki import Pki
from tests.unit.test_traffic_graph import Proxy, request_labels


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def ask(port: int, target: str, *, host: str | None = None, cookie: str = "") -> Answer:
    """One request as a browser sends it, the whole answer read."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            head = f"GET {target} HTTP/1.1\r\nhost: {host or f'127.0.0.1:{port}'}\r\n"
            head += f"cookie: {cookie}\r\n" if cookie else ""
            await stream.send_all((head + "connection: close\r\n\r\n").encode())
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body)


def mesh() -> MeshSnapshot:
    client = workload("client", "demo", ip="10.244.0.10")
    server = workload("server", "demo", ip="10.244.0.11", labels={"app": "server"})
    return snapshot(client, server, service("server", "demo", backends=[server]), version=3)


def observed() -> Observer:
    """An observer whose history holds two scrapes of a waypoint, 10 s apart: 2 requests/s
    from demo/client to demo/server."""
    observer = Observer(lambda: ())
    waypoint = Proxy()
    observer.history.add("waypoint:demo/waypoint", 0.0, parse_scrape(waypoint.text()))
    labels = {
        "source_workload": "client", "source_workload_namespace": "demo",
        "destination_workload": "server", "destination_workload_namespace": "demo",
        "destination_service": "server.demo.svc.cluster.local",
        "destination_service_name": "server", "destination_service_namespace": "demo",
    }  # fmt: skip
    waypoint.request(request_labels(**labels), 3.0, times=20)
    observer.history.add("waypoint:demo/waypoint", 10.0, parse_scrape(waypoint.text()))
    return observer


@asynccontextmanager
async def dashboard(root: Pki, token: str | None = TAP_TOKEN) -> AsyncIterator[Gate]:
    auth = node_token_authenticator(TokenTable(), frozenset({ZTUNNEL_ID}))
    server = ConfigServer(auth)
    cp_cert = root.issue(CP_ID)
    authenticator = TokenTapAuthenticator(TokenTable({TAP_TOKEN: "admin"}))
    pages = dashboard_pages(observed(), mesh, lambda: ())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: serve_tap(server.taps, authenticator, certificate=lambda: cp_cert,
                                          host="127.0.0.1", port=0, pages=pages,
                                          task_status=task_status)
        )  # fmt: skip
        api = ControlApi(address, CP_ID, root.bundle, token)
        gate = await nursery.start(serve_dashboard, api, 0)
        yield gate
        nursery.cancel_scope.cancel()


async def logged_in(gate: Gate) -> str:
    """The browser's cookie after it followed the printed link."""
    answer = await ask(gate.port, gate.url().partition(f":{gate.port}")[2])
    assert answer.status == 303
    assert answer.headers["location"] == "/dashboard/"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    return cookie.partition(";")[0]


async def test_only_the_browser_that_logged_in_gets_the_page(root: Pki) -> None:
    async with dashboard(root) as gate:
        assert (await ask(gate.port, "/v1/dashboard")).status == 401
        assert (await ask(gate.port, "/login?token=guess")).status == 403
        cookie = await logged_in(gate)
        again = await ask(gate.port, gate.url().partition(f":{gate.port}")[2])
        assert again.status == 403  # the link works once
        assert b"used already" in again.body
        assert (await ask(gate.port, "/v1/dashboard", cookie=f"{COOKIE}=forged")).status == 401
        rebound = await ask(gate.port, "/v1/dashboard", host="evil.example", cookie=cookie)
        assert rebound.status == 401  # DNS rebinding: another name for loopback
        page = await ask(gate.port, "/dashboard/", host=f"localhost:{gate.port}", cookie=cookie)
        assert page.status == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert b'<script src="app.js">' in page.body
        for asset in ("app.js", "app.css"):
            assert (await ask(gate.port, f"/dashboard/{asset}", cookie=cookie)).status == 200


async def test_the_page_data_and_why_come_from_the_control_plane(root: Pki) -> None:
    async with dashboard(root) as gate:
        cookie = await logged_in(gate)
        answer = await ask(gate.port, "/v1/dashboard?window=60", cookie=cookie)
        assert answer.status == 200
        model = json.loads(answer.body)
        assert model["version"] == 3
        [edge] = model["edges"]
        assert (edge["from"], edge["to"]) == ("workload:demo/client", "service:demo/server")
        assert edge["per_second"] == 2.0
        assert edge["why"] == {"from": "demo/client", "to": "demo/server"}
        series = model["series"]["nodes"]["service:demo/server"]["in"]["http"]
        assert series["per_second"][-1] == 2.0

        why = await ask(gate.port, "/v1/why?from=demo/client&to=demo/server", cookie=cookie)
        assert why.status == 200
        said = json.loads(why.body)
        assert said["verdict"]["allowed"] is True
        assert said["text"].startswith("demo/client -> demo/server")
        wrong = await ask(gate.port, "/v1/why?from=demo/nobody&to=demo/server", cookie=cookie)
        assert wrong.status == 400
        assert "nobody" in json.loads(wrong.body)["error"]
        bad = await ask(gate.port, "/v1/dashboard?window=9999", cookie=cookie)
        assert bad.status == 400


@pytest.mark.parametrize("token", [None, "not-the-token"])
async def test_the_control_plane_refuses_without_the_operators_token(
    root: Pki, token: str | None
) -> None:
    async with dashboard(root, token) as gate:
        cookie = await logged_in(gate)
        answer = await ask(gate.port, "/v1/dashboard", cookie=cookie)
        assert answer.status == 401
        assert b"bearer token" in answer.body
