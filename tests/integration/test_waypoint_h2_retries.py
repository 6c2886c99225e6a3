"""A route's ``retry`` for HTTP/2 callers to an h2c app (a port declared ``http2``): curl
with ``--http2-prior-knowledge`` through the waypoint to an app on our HTTP/2 engine that
answers 503 to the first requests of a path. The retry carries the request's body again
(from its bounded copy); a body past the copy is not sent twice and its 503 stands, URX."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator

import trio

from mesh.hbone import H2Stream
from mesh.model import MeshSnapshot, ServicePort
from mesh.model_l7 import BackendRef, HttpRoute, HttpRule, ParentRef, Retry
from tests.integration.h2_support import read_all, serve_h2c
from tests.integration.test_h2_interop_nghttp2 import _tool
from tests.integration.test_waypoint_clients import client_port, tool
from tests.integration.waypoint_support import FLAKY, Pod, open_mesh, web_snapshot
from tests.pki import Pki


class FlakyApp:
    """``/flaky/N/...`` answers 503 to its first N requests, then 200 with JSON naming
    the body it read."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    async def handle(self, stream: H2Stream) -> None:
        path = dict(stream.request_headers).get(":path", "")
        body = await read_all(stream)
        self.seen[path] += 1
        failures = int(path.split("/")[2]) if path.startswith("/flaky/") else 0
        status = 503 if self.seen[path] <= failures else 200
        payload = json.dumps({"path": path, "body_bytes": len(body)}).encode()
        stream.send_headers([(":status", str(status)), ("content-length", str(len(payload)))])
        await stream.send_all(payload)
        await stream.send_eof()


def routed(pods: list[Pod], port_name: str = "http2") -> MeshSnapshot:
    base = web_snapshot(pods, ports=[ServicePort(80, 8080, name=port_name)])
    route = HttpRoute(
        "web", "default", (ParentRef("", "Service", "web", port=80),),
        rules=(HttpRule(backends=(BackendRef("web", 80),),
                        retry=Retry((503,), attempts=2, backoff_ms=1)),),
    )  # fmt: skip
    return MeshSnapshot.from_resources(base.version, [*base.resources(), route])


@contextlib.asynccontextmanager
async def flaky_mesh(root: Pki) -> AsyncIterator[tuple[FlakyApp, int]]:
    app = FlakyApp()
    async with trio.open_nursery() as nursery:
        app_port = await nursery.start(serve_h2c, app.handle)
        pods = [Pod("web-0", "10.0.0.11", app=False, app_port=app_port),
                Pod("web-1", "10.0.0.12", app=False, app_port=app_port)]  # fmt: skip
        async with open_mesh(root, pods, snapshot=routed(pods)) as mesh, client_port(mesh) as port:
            yield app, port
            assert mesh.metric("istio_requests_total", response_flags="URX") == 1
        nursery.cancel_scope.cancel()


async def test_h2_callers_get_the_retried_answer_with_their_body_sent_again(root: Pki) -> None:
    curl = str(_tool("curl", "curl"))
    with trio.fail_after(60):
        async with flaky_mesh(root) as (app, port):
            url = f"http://127.0.0.1:{port}"
            h2 = [curl, "-s", "--http2-prior-knowledge", "-w", "\\n%{http_code}"]
            out = await tool(*h2, f"{url}/flaky/2/get")
            assert out.rsplit("\n", 1)[1] == "200"
            assert app.seen["/flaky/2/get"] == 3  # two 503s, then the 200
            out = await tool(*h2, "--data-binary", "x" * 1000, f"{url}/flaky/1/post")
            answer, code = out.rsplit("\n", 1)
            assert code == "200"
            assert json.loads(answer)["body_bytes"] == 1000  # the body went again, whole
            out = await _post_big(curl, f"{url}/flaky/1/big")
            assert out.rsplit("\n", 1)[1] == "503"  # over the copy's bound: not sent twice
            assert app.seen["/flaky/1/big"] == 1


async def _post_big(curl: str, url: str, version: str = "--http2-prior-knowledge") -> str:
    """POST 100 KiB (past the 64 KiB copy) with curl (h2c, or ``version``)."""
    with trio.fail_after(30):
        done = await trio.run_process(
            [curl, "-s", version, "-w", "\\n%{http_code}", "--data-binary", "@-", url],
            stdin=b"y" * (100 * 1024), capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_http1_callers_to_an_h2c_app_get_the_retried_answer(root: Pki) -> None:
    """Across versions: curl speaks HTTP/1.1, the app h2c; the bridge sees the 503 before
    anything goes down and sends the request (and its body) again."""
    curl = str(_tool("curl", "curl"))
    with trio.fail_after(60):
        async with flaky_mesh(root) as (app, port):
            url = f"http://127.0.0.1:{port}"
            h1 = [curl, "-s", "--http1.1", "-w", "\\n%{http_code}"]
            assert (await tool(*h1, f"{url}/flaky/2/get")).rsplit("\n", 1)[1] == "200"
            assert app.seen["/flaky/2/get"] == 3
            out = await tool(*h1, "--data-binary", "z" * 500, f"{url}/flaky/1/post")
            answer, code = out.rsplit("\n", 1)
            assert code == "200"
            assert json.loads(answer)["body_bytes"] == 500
            out = await _post_big(curl, f"{url}/flaky/1/big", "--http1.1")
            assert out.rsplit("\n", 1)[1] == "503"
            assert app.seen["/flaky/1/big"] == 1


async def test_h2_callers_to_an_http1_app_get_the_retried_answer(root: Pki) -> None:
    """Across versions the other way: curl speaks h2c, the app (h11) HTTP/1.1."""
    curl = str(_tool("curl", "curl"))
    FLAKY.clear()
    pods = [Pod("web-0", "10.0.0.11"), Pod("web-1", "10.0.0.12")]
    with trio.fail_after(60):
        async with open_mesh(root, pods, snapshot=routed(pods, "http")) as mesh, \
                client_port(mesh) as port:  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            h2 = [curl, "-s", "--http2-prior-knowledge", "-w", "\\n%{http_code}"]
            assert (await tool(*h2, f"{url}/flaky/2/503/a")).rsplit("\n", 1)[1] == "200"
            out = await tool(*h2, "--data-binary", "posted", f"{url}/flaky/1/503/b")
            answer, code = out.rsplit("\n", 1)
            assert code == "200"
            assert json.loads(answer)["body"] == "posted"
            seen = [p for pod in mesh.pods for _m, p, _h in pod.seen]
            assert seen.count("/flaky/2/503/a") == 3
            assert seen.count("/flaky/1/503/b") == 2
