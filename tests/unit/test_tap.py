"""Tap's pure parts: filters, a proxy's bounded buffers, the control plane's fan-out."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from k8s.tap_hub import TapHub, TooManyTaps
from mesh.tap import ProxyTap, Selector, TapEvent, TapFilter, TapFilterError


def http(
    src: str | None = "demo/client",
    dst: str | None = "demo/server-1",
    service: str | None = "demo/server",
    **fields: Any,
) -> TapEvent:
    return TapEvent(
        "http", "waypoint", 0.0, 1.5,
        src_workload=src, src_namespace=src.split("/")[0] if src else None,
        dst_workload=dst, dst_namespace=dst.split("/")[0] if dst else None,
        dst_service=service,
        method=fields.pop("method", "GET"), path=fields.pop("path", "/hello"),
        status=fields.pop("status", 200), **fields,
    )  # fmt: skip


def tcp(src: str = "demo/client", dst: str = "demo/server-1") -> TapEvent:
    return TapEvent(
        "tcp", "ztunnel", 0.0, 1.0, src_workload=src, src_namespace=src.split("/")[0],
        dst_workload=dst, dst_namespace=dst.split("/")[0], direction="inbound",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("pod/demo/web", Selector("pod", "demo", "web")),
        ("po/demo/web", Selector("pod", "demo", "web")),
        ("svc/demo/web", Selector("svc", "demo", "web")),
        ("service/demo/web", Selector("svc", "demo", "web")),
        ("ns/demo", Selector("ns", "demo")),
    ],
)
def test_selectors_read_as_kubectl_writes_them(text: str, parsed: Selector) -> None:
    assert Selector.parse(text) == parsed


@pytest.mark.parametrize("text", ["demo/web", "pod/demo", "ns/", "svc//web", "deploy/a/b", ""])
def test_a_selector_that_is_not_one_says_what_is_expected(text: str) -> None:
    with pytest.raises(TapFilterError, match="pod/NAMESPACE/NAME"):
        Selector.parse(text)


def test_a_pod_target_matches_it_as_source_or_destination_only() -> None:
    server = TapFilter.build("pod/demo/server-1")
    assert server.matches(http())
    assert server.matches(tcp(src="demo/server-1", dst="other/db"))
    assert not server.matches(http(dst="demo/server-2"))
    assert not server.matches(http(src=None, dst=None))


def test_a_service_target_matches_requests_to_it() -> None:
    web = TapFilter.build("svc/demo/server")
    assert web.matches(http())
    assert not web.matches(http(service="demo/other"))
    assert not web.matches(tcp())  # a connection straight to a pod names no Service


def test_a_namespace_target_matches_either_side() -> None:
    assert TapFilter.build("ns/demo").matches(http(src="other/x"))
    assert TapFilter.build("ns/other").matches(http(src="other/x"))
    assert not TapFilter.build("ns/third").matches(http(src="other/x"))


def test_to_takes_the_target_as_source_and_to_as_destination() -> None:
    client_to_server = TapFilter.build("pod/demo/client", to="svc/demo/server")
    assert client_to_server.matches(http())
    backwards = TapFilter.build("pod/demo/server-1", to="pod/demo/client")
    assert not backwards.matches(http())  # the client is not its destination
    assert TapFilter.build("ns/demo", to="ns/demo").matches(http())


def test_a_service_is_never_a_source() -> None:
    with pytest.raises(TapFilterError, match="only ever a destination"):
        TapFilter.build("svc/demo/server", to="pod/demo/client")


def test_method_path_prefix_and_status_match_requests_only() -> None:
    f = TapFilter.build("ns/demo", method="get", path="/hel", status="200")
    assert f.method == "GET"
    assert f.matches(http())
    assert not f.matches(http(method="POST"))
    assert not f.matches(http(path="/other"))
    assert not f.matches(http(status=503))
    assert not f.matches(tcp())  # a connection has no method, path or status
    assert TapFilter.build("ns/demo").matches(tcp())


@pytest.mark.parametrize("status", ["x", "42", "600"])
def test_a_status_is_an_http_status(status: str) -> None:
    with pytest.raises(TapFilterError, match="status"):
        TapFilter.build("ns/demo", status=status)


def test_a_filter_survives_its_json_form() -> None:
    f = TapFilter.build("pod/demo/a", to="ns/b", method="PUT", path="/x", status=404)
    assert TapFilter.from_json(f.to_json()) == f
    with pytest.raises(TapFilterError):
        TapFilter.from_json({"target": "ns/demo", "status": "200"})
    with pytest.raises(TapFilterError):
        TapFilter.from_json(["ns/demo"])


def test_an_event_as_json_leaves_out_what_is_unknown() -> None:
    data = http(src=None).to_json()
    assert data["time"] == "1970-01-01T00:00:00.000+00:00"
    assert "src_workload" not in data
    assert (data["dst_service"], data["method"], data["status"], data["flags"]) == (
        "demo/server",
        "GET",
        200,
        "-",
    )


def test_nobody_tapping_is_inactive_and_keeps_nothing() -> None:
    tap = ProxyTap()
    states = [tap.active]
    tap.offer(http())
    assert tap.take() == []
    tap.start("t1", TapFilter.build("ns/demo"))
    states.append(tap.active)
    tap.stop("t1")
    states.append(tap.active)
    assert states == [False, True, False]


def test_a_proxy_sends_only_matching_events_to_each_tap() -> None:
    tap = ProxyTap()
    tap.start("t1", TapFilter.build("ns/demo", method="GET"))
    tap.start("t2", TapFilter.build("ns/other"))
    tap.offer(http())
    tap.offer(http(method="POST"))
    messages = tap.take()
    assert [(m["id"], len(m["events"]), m["dropped"]) for m in messages] == [("t1", 1, 0)]
    assert messages[0]["events"][0]["method"] == "GET"
    assert tap.take() == []  # taken once


def test_a_full_tap_drops_and_counts_instead_of_holding_more() -> None:
    tap = ProxyTap(limit=5, batch=2)
    tap.start("t1", TapFilter.build("ns/demo"))
    for i in range(12):
        tap.offer(http(path=f"/{i}"))
    first = tap.take()[0]
    assert [e["path"] for e in first["events"]] == ["/0", "/1"]  # at most a batch
    assert first["dropped"] == 7
    rest = [m for _ in range(3) for m in tap.take()]
    assert [e["path"] for m in rest for e in m["events"]] == ["/2", "/3", "/4"]
    assert sum(m["dropped"] for m in rest) == 0  # a drop is reported once


async def test_a_whole_batch_goes_before_the_interval_ends() -> None:
    tap = ProxyTap(batch=3)
    tap.start("t1", TapFilter.build("ns/demo"))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: tap.serve(send, interval=3600))
            await trio.sleep(0.01)
            for _ in range(3):
                tap.offer(http())
            while not sent:  # noqa: ASYNC110 - the loop under test has no event for it
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert len(sent[0]["events"]) == 3


class Proxy:
    def __init__(self, *, accept: bool = True) -> None:
        self.sent: list[dict[str, Any]] = []
        self.accept = accept

    def send(self, message: dict[str, Any]) -> bool:
        if self.accept:
            self.sent.append(message)
        return self.accept


def test_a_tap_goes_to_proxies_there_and_to_come_and_ends_there() -> None:
    hub = TapHub()
    early, late = Proxy(), Proxy()
    hub.attach("a", "ztunnel/node-1", early.send)
    with hub.open(TapFilter.build("ns/demo")) as session:
        assert session.proxies == 1
        hub.attach("b", "waypoint/demo/waypoint", late.send)
        assert [m["type"] for m in early.sent] == [m["type"] for m in late.sent] == ["tap"]
        assert early.sent[0]["filter"] == {"target": "ns/demo"}
    assert early.sent[-1] == late.sent[-1] == {"type": "untap", "id": session.id}
    assert hub.proxies() == ["waypoint/demo/waypoint", "ztunnel/node-1"]


def test_events_reach_their_tap_with_the_proxys_name() -> None:
    hub = TapHub()
    proxy = Proxy()
    hub.attach("a", "ztunnel/node-1", proxy.send)
    with hub.open(TapFilter.build("ns/demo")) as session:
        hub.deliver("a", {"type": "events", "id": session.id, "events": [{"k": 1}], "dropped": 2})
        hub.deliver("a", {"type": "events", "id": "t999", "events": [{"k": 2}]})  # no such tap
        hub.deliver("z", {"type": "events", "id": session.id, "events": [{"k": 3}]})  # unknown
        batch = session.batches.receive_nowait()
        assert (batch.proxy, batch.events, batch.dropped) == ("ztunnel/node-1", [{"k": 1}], 2)
        with pytest.raises(trio.WouldBlock):
            session.batches.receive_nowait()


def test_a_slow_reader_loses_batches_counted_never_waited_for() -> None:
    hub = TapHub(queue_limit=2)
    hub.attach("a", "ztunnel/node-1", Proxy().send)
    with hub.open(TapFilter.build("ns/demo")) as session:
        for _ in range(5):
            hub.deliver("a", {"type": "events", "id": session.id, "events": [{}, {}, {}],
                              "dropped": 1})  # fmt: skip
        assert session.take_dropped() == 3 * 4  # three batches of three events and one drop
        assert session.take_dropped() == 0
        assert session.batches.receive_nowait().dropped == 1


def test_taps_are_bounded_and_a_proxy_that_cannot_queue_is_not_counted() -> None:
    hub = TapHub(max_taps=1)
    hub.attach("a", "ztunnel/node-1", Proxy(accept=False).send)
    with hub.open(TapFilter.build("ns/demo")) as session:
        assert session.proxies == 0
        with pytest.raises(TooManyTaps), hub.open(TapFilter.build("ns/demo")):
            pass  # pragma: no cover
