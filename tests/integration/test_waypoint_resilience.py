"""A DestinationRule's connection pool and outlier detection at the waypoint, end to end on
loopback: real HBONE to the waypoint and on to each pod's app, clients sending HTTP/1.1
over their CONNECT streams. What is checked is what the clients get (status, the
order answers came in), which app saw which request, and ``istio_requests_total``'s
``response_flags``."""

from __future__ import annotations

import time

import trio

from mesh.model import MeshSnapshot
from mesh.model_traffic import ConnectionPool, DestinationRule, OutlierDetection
from tests.integration.test_waypoint_l7 import get
from tests.integration.waypoint_support import Mesh, Pod, open_mesh, web_snapshot
from tests.pki import Pki


def three_pods() -> list[Pod]:
    return [Pod(f"web-{i}", f"10.0.0.{11 + i}") for i in range(3)]


def with_rule(pods: list[Pod], rule: DestinationRule) -> MeshSnapshot:
    base = web_snapshot(pods)
    return MeshSnapshot.from_resources(base.version, [*base.resources(), rule])


def seen_by(mesh: Mesh, path: str) -> dict[str, int]:
    return {pod.name: sum(1 for _, p, _ in pod.seen if p == path) for pod in mesh.pods}


async def test_beyond_http2_max_requests_the_excess_gets_503_uo_at_once(root: Pki) -> None:
    """A backend taking 1 s a request, at most 20 in flight: of 100 callers at once, 80 are
    refused with ``503 UO`` before any admitted one is answered; the 20 complete."""
    pool = ConnectionPool(max_requests=20, max_pending=10)
    rule = DestinationRule("web", "default", "web", "default/web", pool=pool)
    pods = [Pod("web-0", "10.0.0.11")]
    answers: list[tuple[int, str, float]] = []
    async with open_mesh(root, pods, snapshot=with_rule(pods, rule)) as mesh:
        started = time.monotonic()

        async def caller() -> None:
            status, headers, _ = await get(mesh, "/delay/1000")
            answers.append((status, headers.get("content-type", ""), time.monotonic() - started))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(caller)
        assert sorted(s for s, _, _ in answers) == [200] * 20 + [503] * 80
        first_200 = min(t for s, _, t in answers if s == 200)
        last_503 = max(t for s, _, t in answers if s == 503)
        assert last_503 < first_200  # refused at once, not queued behind the slow ones
        assert seen_by(mesh, "/delay/1000") == {"web-0": 20}
        assert mesh.metric("istio_requests_total", response_code="503", response_flags="UO") == 80
        assert mesh.metric("istio_requests_total", response_code="200", response_flags="-") == 20


async def test_max_connections_queues_pending_requests_and_refuses_beyond(root: Pki) -> None:
    """Two connections at most, two requests may wait: of 10 callers at once, 4 are served
    (2 at once, then the 2 that waited) and 6 refused with ``503 UO``."""
    pool = ConnectionPool(max_connections=2, max_pending=2)
    rule = DestinationRule("web", "default", "web", "default/web", pool=pool)
    pods = [Pod("web-0", "10.0.0.11")]
    statuses: list[int] = []
    async with open_mesh(root, pods, snapshot=with_rule(pods, rule)) as mesh:

        async def caller() -> None:
            statuses.append((await get(mesh, "/delay/300"))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(caller)
        assert sorted(statuses) == [200] * 4 + [503] * 6
        assert mesh.metric("istio_requests_total", response_flags="UO") == 6


async def test_an_endpoint_answering_500_is_ejected_then_back_then_out_longer(
    root: Pki,
) -> None:
    """Three endpoints, web-2 answering 500 to everything: after 3 in a row it gets no
    request for the base ejection time (1 s), then it is tried again, and on relapse it is
    out for twice as long."""
    outlier = OutlierDetection(consecutive_5xx=3, interval_ms=10_000, base_ejection_ms=1_000,
                               max_ejection_percent=50)  # fmt: skip
    rule = DestinationRule("web", "default", "web", "default/web", "ROUND_ROBIN",
                           outlier=outlier)  # fmt: skip
    pods = three_pods()
    path = "/broken/web-2"
    async with open_mesh(root, pods, snapshot=with_rule(pods, rule)) as mesh:
        for _ in range(30):
            await get(mesh, path)
        assert seen_by(mesh, path)["web-2"] == 3  # ejected at its third 500
        await trio.sleep(1.2)  # the ejection is over
        for _ in range(30):
            await get(mesh, path)
        assert seen_by(mesh, path)["web-2"] == 6  # back, three more 500s, out again
        await trio.sleep(1.2)  # twice the base: still out
        for _ in range(10):
            await get(mesh, path)
        assert seen_by(mesh, path)["web-2"] == 6
        await trio.sleep(1.0)
        for _ in range(10):
            await get(mesh, path)
        assert seen_by(mesh, path)["web-2"] > 6  # back again


async def test_every_endpoint_ejected_gives_503_uh(root: Pki) -> None:
    outlier = OutlierDetection(consecutive_5xx=2, base_ejection_ms=30_000, max_ejection_percent=100)
    rule = DestinationRule("web", "default", "web", "default/web", outlier=outlier)
    pods = three_pods()
    async with open_mesh(root, pods, snapshot=with_rule(pods, rule)) as mesh:
        for _ in range(6):
            assert (await get(mesh, "/status/500"))[0] == 500
        status, _, body = await get(mesh, "/status/500")
        assert (status, body) == (503, b"no healthy upstream")
        assert mesh.metric("istio_requests_total", response_code="503", response_flags="UH") == 1
        assert sum(seen_by(mesh, "/status/500").values()) == 6


async def test_max_ejection_percent_keeps_the_rest_in_service(root: Pki) -> None:
    """Every endpoint fails, but at most 10% may be out: one is ejected and the other two
    keep answering (their 500s), never ``UH``."""
    outlier = OutlierDetection(consecutive_5xx=1, base_ejection_ms=30_000)
    rule = DestinationRule("web", "default", "web", "default/web", outlier=outlier)
    pods = three_pods()
    async with open_mesh(root, pods, snapshot=with_rule(pods, rule)) as mesh:
        statuses = [(await get(mesh, "/status/500"))[0] for _ in range(30)]
        assert set(statuses) == {500}
        counts = seen_by(mesh, "/status/500")
        assert sorted(counts.values())[0] == 1  # the one ejected at its first 500
        assert sum(counts.values()) == 30
