"""An HTTPRoute rule's ``retry`` (GEP-1731) at the waypoint, end to end on loopback: the
route written as an operator writes it and translated by the control plane's translator,
real HBONE to the waypoint and on to the pods' apps, and clients that send real HTTP/1.1
(h11 over the CONNECT stream, and h2load through a source port). What is checked is what
the client gets, what the apps saw, and the flag in ``istio_requests_total``."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import structlog
import trio

from tests.integration.test_waypoint_l7 import get, pods, world
from tests.integration.waypoint_support import FLAKY, Client, Mesh, open_mesh
from tests.pki import Pki

ROUTES = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /flaky}}]
    retry: {codes: [503], attempts: 3, backoff: 1ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /status}}]
    retry: {codes: [502, 503], attempts: 2, backoff: 1ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /chance}}]
    retry: {codes: [503], attempts: 3, backoff: 1ms}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"""


def seen(mesh: Mesh, path: str) -> int:
    """How many requests for ``path`` the apps answered."""
    return sum(1 for pod in mesh.pods for _, p, _ in pod.seen if p == path)


async def test_a_503_is_retried_on_the_other_endpoint_and_the_client_gets_the_200(
    root: Pki,
) -> None:
    FLAKY.clear()
    async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh:
        status, _, _ = await get(mesh, "/flaky/2/503/a")
        assert status == 200
        assert seen(mesh, "/flaky/2/503/a") == 3  # two 503s, then the 200
        assert {p.name for p in mesh.pods if p.seen} == {"web-0", "web-1"}  # another endpoint
        await mesh.requests_counted(response_code="200", response_flags="-")


async def test_retries_exhausted_give_the_last_answer_flagged_urx(root: Pki) -> None:
    async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh:
        status, _, body = await get(mesh, "/status/503")
        assert status == 503
        assert b'"app"' in body  # the app's own answer, not a local reply
        assert seen(mesh, "/status/503") == 3  # the first try and two retries
        await mesh.requests_counted(response_code="503", response_flags="URX")
        status, _, _ = await get(mesh, "/status/500")  # not a retry code: answered as is
        assert status == 500
        assert seen(mesh, "/status/500") == 1
        await mesh.requests_counted(response_code="500", response_flags="-")


async def test_a_body_kept_whole_is_sent_again_a_bigger_one_is_not(root: Pki) -> None:
    """A body within the 64 KiB copy goes again with the retry, byte for byte (by length
    and chunked); one past it is not sent again: its 503 stands, flagged URX, logged."""
    FLAKY.clear()
    async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh:
        client = Client(await mesh.connect())
        try:
            status, _, body = await client.request("POST", "/flaky/1/503/b", body=b"twice")
            assert status == 200
            assert json.loads(body)["body"] == "twice"  # the retry carried the body
            status, _, body = await client.request(
                "POST", "/flaky/1/503/c", chunks=[b"in ", b"three ", b"chunks"]
            )
            assert status == 200
            assert json.loads(body)["body"] == "in three chunks"
            big = b"x" * (70 * 1024)
            with structlog.testing.capture_logs() as logs:
                status, _, _ = await client.request("POST", "/flaky/1/503/d", body=big)
        finally:
            await client.stream.aclose()
        assert status == 503
        assert seen(mesh, "/flaky/1/503/b") == 2
        assert seen(mesh, "/flaky/1/503/c") == 2
        assert seen(mesh, "/flaky/1/503/d") == 1
        assert [e["event"] for e in logs if "retry" in e["event"]] == ["retry_body_not_replayable"]
        await mesh.requests_counted(response_code="503", response_flags="URX")


async def test_a_backend_that_fails_everything_gets_retries_within_the_budget(
    root: Pki,
) -> None:
    """Every answer is 503: without a budget each request would be tried three times; the
    Service's budget (20% of requests, at least 10 retries a second) keeps the extra load
    bounded and every caller still gets its answer."""
    requests = 100
    async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh:
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            statuses = [(await get(mesh, "/status/502"))[0] for _ in range(requests)]
        elapsed = time.monotonic() - started
        assert statuses == [502] * requests
        retries = seen(mesh, "/status/502") - requests
        bound = requests * 20 // 100 + 10 * (int(elapsed) + 2)
        print(f"{retries} retries for {requests} requests in {elapsed:.1f} s (bound {bound})")
        assert 0 < retries <= bound
        assert retries < 2 * requests  # what the rule alone would allow
        assert any(e["event"] == "retry_budget_exhausted" for e in logs)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load (nghttp2-client)")
async def test_a_backend_failing_30_percent_under_h2load_within_the_default_budget(
    root: Pki,
) -> None:
    """h2load (HTTP/1.1) sends 2,000 requests; 30% of the app's answers are 503 and the
    route retries 503 three times. Full recovery would take about 41 retries per 100
    requests; the default budget (20%, at least 10 a second) allows fewer, so the success
    rate rises from 70% to what the budget pays for, and no further: the retries stay
    within it. (A BackendTrafficPolicy raising the budget is what reaches 99%.)"""
    async with open_mesh(root, pods(), snapshot=world(ROUTES)) as mesh, trio.open_nursery() as n:
        port = await n.start(mesh.source_ztunnel)
        started = time.monotonic()
        done = await trio.run_process(
            ["h2load", "--h1", "-n", "2000", "-c", "4", f"http://127.0.0.1:{port}/chance/30/503"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        n.cancel_scope.cancel()
    out = done.stdout.decode()
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes is not None, out
    ok, failed = int(codes[1]), int(codes[4])
    retries = seen(mesh, "/chance/30/503") - 2000
    bound = 2000 * 20 // 100 + 10 * (int(elapsed) + 2)
    print(f"h2load: {ok} 2xx, {failed} 5xx of 2000; {retries} retries (bound {bound})"
          f" in {elapsed:.1f} s")  # fmt: skip
    assert ok + failed == 2000, out
    assert ok > 2000 * 70 // 100 + 150, out  # well above the 70% the app gives alone
    assert 0 < retries <= bound
