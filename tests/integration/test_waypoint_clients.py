"""Real clients through the waypoint (curl, h2load) and across HTTP versions: the waypoint
speaks to the app what its Service port declares, whatever the client spoke. The apps
are ours (h11) and nghttp2's ``nghttpd`` (an h2c server that is not ours); the clients
connect to a loopback port standing for a source pod's captured traffic."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from mesh.model import ServicePort
from tests.integration.test_h2_interop_nghttp2 import _free_port, _tool, wait_listening
from tests.integration.waypoint_support import Mesh, Pod, open_mesh
from tests.pki import Pki


@contextlib.asynccontextmanager
async def nghttpd_h2c(tmp: Path) -> AsyncIterator[int]:
    """nghttpd serving ``tmp/htdocs`` over h2c (no TLS) on a free port; killed by PID."""
    binary = _tool("nghttpd", "nghttp2-server")
    htdocs = tmp / "htdocs"
    htdocs.mkdir()
    (htdocs / "file.txt").write_bytes(b"served by nghttpd\n" * 1000)
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [str(binary), "--no-tls", "-a", "127.0.0.1", "-d", str(htdocs), "--echo-upload",
         str(port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_listening(process, port)
        yield port
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def tool(*argv: str) -> str:
    with trio.fail_after(30):
        done = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True,
                                      check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


@contextlib.asynccontextmanager
async def client_port(mesh: Mesh) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(mesh.source_ztunnel)
        nursery.cancel_scope.cancel()


async def test_curl_keep_alive_and_h2_prior_knowledge_to_an_http1_app(root: Pki) -> None:
    curl = str(_tool("curl", "curl"))
    http = [ServicePort(80, 8080, name="http")]
    with trio.fail_after(60):
        mesh_cm = open_mesh(root, [Pod("web-0", "10.0.0.11")], ports=http)
        async with mesh_cm as mesh, client_port(mesh) as port:
            url = f"http://127.0.0.1:{port}/"
            # Three requests, one connection (curl reuses it): all through the waypoint.
            out = await tool(curl, "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                             "-w", "%{http_code} %{num_connects}\n", url + "a", url + "b",
                             url + "c")  # fmt: skip
            assert out.split() == ["200", "1", "200", "0", "200", "0"]
            # curl speaks h2c with prior knowledge; the app speaks HTTP/1.1 only.
            body = await tool(curl, "-s", "--http2-prior-knowledge", "-d", "posted", url + "h2")
            answer = json.loads(body)
            assert (answer["method"], answer["path"], answer["body"]) == ("POST", "/h2", "posted")
            assert answer["headers"]["x-forwarded-client-cert"].startswith("By=spiffe://")
            seen = [path for _m, path, _h in mesh.pods[0].seen]
            assert seen == ["/a", "/b", "/c", "/h2"]


async def test_http1_and_h2load_to_an_h2c_app_that_is_not_ours(root: Pki, tmp_path: Path) -> None:
    curl = str(_tool("curl", "curl"))
    h2load = str(_tool("h2load", "nghttp2-client"))
    with trio.fail_after(60):
        async with nghttpd_h2c(tmp_path) as app_port:
            pod = Pod("web-0", "10.0.0.11", app=False, app_port=app_port)
            h2 = [ServicePort(80, 8080, name="http2")]
            async with open_mesh(root, [pod], ports=h2) as mesh, client_port(mesh) as port:
                url = f"http://127.0.0.1:{port}/file.txt"
                # HTTP/1.1 from curl; the app answers over HTTP/2, the client gets HTTP/1.1.
                body = await tool(curl, "-s", "--http1.1", url)
                assert body == "served by nghttpd\n" * 1000
                out = await tool(h2load, "-n", "400", "-c", "4", "-m", "10", url)
                assert "400 succeeded, 0 failed, 0 errored" in out, out
                assert mesh.metric("istio_requests_total", response_code="200") >= 401
