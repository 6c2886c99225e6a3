"""ambit's route filters at the waypoint (``waypoint.extensions``): LocalRateLimit's token
buckets and FaultInjection's delays and aborts, reached from a rule's ExtensionRef. No
sockets: Trio's clock (``autojump_clock``) and seeded randomness."""

from __future__ import annotations

import random

import pytest
import trio

from mesh.model_traffic import ExtensionRef, FaultInjection, LocalRateLimit
from mesh.response_flags import ResponseFlag
from tests.builders import identity, snapshot
from waypoint.decisions import Rule
from waypoint.extensions import DelayedReply, Effects, Extensions
from waypoint.replies import GrpcStatus, LocalReply

RULE = Rule("HTTPRoute", "shop/web", 0)
OTHER_RULE = Rule("HTTPRoute", "shop/web", 1)
ALICE, BOB = identity("shop", "alice"), identity("shop", "bob")


def ref(kind: str, name: str) -> ExtensionRef:
    return ExtensionRef("networking.ambit.io", kind, name)


LIMIT = ref("LocalRateLimit", "limit")
FAULT = ref("FaultInjection", "fault")


async def test_100_per_second_burst_20_under_400_per_second_for_10_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snap = snapshot(LocalRateLimit("limit", "shop", requests=100, burst=20))
    ext = Extensions(random.Random(1))
    passed = refused = 0
    for _ in range(4_000):  # 400/s for 10 s
        effect = ext.apply(snap, RULE, [LIMIT], ALICE, grpc=False)
        if isinstance(effect, Effects):
            passed += 1
        else:
            refused += 1
            assert effect.code == 429
            assert effect.flag is ResponseFlag.RATE_LIMITED
            assert dict(effect.headers)["x-ratelimit-limit"] == "20"
        await trio.sleep(0.0025)
    assert 950 <= passed <= 1_250
    assert passed + refused == 4_000


async def test_buckets_are_per_rule_and_with_per_client_per_caller_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = snapshot(LocalRateLimit("limit", "shop", requests=1, unit="Minute", burst=2))
    ext = Extensions()

    def passes(snap: object, rule: Rule, caller: object) -> bool:
        return isinstance(ext.apply(snap, rule, [LIMIT], caller, grpc=False), Effects)  # type: ignore[arg-type]

    assert [passes(shared, RULE, ALICE), passes(shared, RULE, BOB)] == [True, True]
    assert not passes(shared, RULE, ALICE)  # the rule's bucket is empty, whoever asks
    assert passes(shared, OTHER_RULE, ALICE)  # another rule has its own
    per_client = snapshot(LocalRateLimit("limit", "shop", requests=1, unit="Minute", burst=1,
                                         per_client=True))  # fmt: skip
    assert passes(per_client, RULE, ALICE)  # a changed limit starts afresh
    assert not passes(per_client, RULE, ALICE)
    assert passes(per_client, RULE, BOB)  # Bob's bucket is his own


async def test_a_refused_grpc_call_is_unavailable(autojump_clock: trio.testing.MockClock) -> None:
    snap = snapshot(LocalRateLimit("limit", "shop", requests=1, burst=1))
    ext = Extensions()
    ext.apply(snap, RULE, [LIMIT], ALICE, grpc=True)
    refused = ext.apply(snap, RULE, [LIMIT], ALICE, grpc=True)
    assert isinstance(refused, LocalReply)
    assert refused.status == 200  # trailers-only
    assert refused.grpc_status == GrpcStatus.UNAVAILABLE


async def test_abort_10_percent_over_5000_requests(autojump_clock: trio.testing.MockClock) -> None:
    snap = snapshot(FaultInjection("fault", "shop", abort_status=503, abort_percent=10))
    ext = Extensions(random.Random(5))
    replies = [ext.apply(snap, RULE, [FAULT], ALICE, grpc=False) for _ in range(5_000)]
    aborted = [r for r in replies if isinstance(r, LocalReply)]
    assert 0.08 <= len(aborted) / 5_000 <= 0.12
    assert {(r.code, r.flag) for r in aborted} == {(503, ResponseFlag.FAULT_INJECTED)}
    assert aborted[0].body == b"fault filter abort"


async def test_delay_half_the_requests_by_200ms(autojump_clock: trio.testing.MockClock) -> None:
    snap = snapshot(FaultInjection("fault", "shop", delay_ms=200, delay_percent=50))
    ext = Extensions(random.Random(3))
    effects = [ext.apply(snap, RULE, [FAULT], ALICE, grpc=False) for _ in range(2_000)]
    delays = [e.delay for e in effects if isinstance(e, Effects)]
    assert len(delays) == 2_000
    delayed = [d for d in delays if d]
    assert set(delayed) == {0.2}
    assert 0.45 <= len(delayed) / 2_000 <= 0.55
    flags = {e.flag for e in effects if isinstance(e, Effects) and e.delay}
    assert flags == {"DI"}


async def test_grpc_abort_carries_the_configured_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snap = snapshot(FaultInjection("fault", "shop", abort_grpc_status=8, abort_percent=100))
    reply = Extensions().apply(snap, RULE, [FAULT], ALICE, grpc=True)
    assert isinstance(reply, LocalReply)
    assert reply.grpc_status == GrpcStatus.RESOURCE_EXHAUSTED
    assert dict(reply.headers)["grpc-status"] == "8"
    assert reply.flag is ResponseFlag.FAULT_INJECTED


async def test_delay_and_abort_together_abort_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snap = snapshot(FaultInjection("fault", "shop", delay_ms=100, delay_percent=100,
                                   abort_status=500, abort_percent=100))  # fmt: skip
    reply = Extensions().apply(snap, RULE, [FAULT], ALICE, grpc=False)
    assert isinstance(reply, DelayedReply)
    assert reply.code == 500
    assert reply.delay == pytest.approx(0.1)


async def test_a_filter_that_names_nothing_answers_500_never_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reply = Extensions().apply(snapshot(), RULE, [FAULT], ALICE, grpc=False)
    assert isinstance(reply, LocalReply)
    assert reply.code == 500
    assert b"FaultInjection shop/fault not found" in reply.body
    other_namespace = snapshot(FaultInjection("fault", "elsewhere", abort_status=503,
                                              abort_percent=100))  # fmt: skip
    reply = Extensions().apply(other_namespace, RULE, [FAULT], ALICE, grpc=False)
    assert isinstance(reply, LocalReply)
    assert reply.code == 500  # an ExtensionRef names an object of the route's namespace


async def test_filters_apply_in_order_a_limited_request_is_not_also_faulted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    snap = snapshot(LocalRateLimit("limit", "shop", requests=1, unit="Hour", burst=1),
                    FaultInjection("fault", "shop", delay_ms=50, delay_percent=100))  # fmt: skip
    ext = Extensions()
    first = ext.apply(snap, RULE, [LIMIT, FAULT], ALICE, grpc=False)
    assert first == Effects(0.05, "DI")
    second = ext.apply(snap, RULE, [LIMIT, FAULT], ALICE, grpc=False)
    assert isinstance(second, LocalReply)
    assert second.code == 429
