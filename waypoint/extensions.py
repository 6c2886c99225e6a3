"""ambit's route filters, reached through a rule's ``ExtensionRef``: ``LocalRateLimit``
and ``FaultInjection`` (:mod:`mesh.model_traffic`), applied in the order the rule lists
them, after its match and before the request leaves.

- ``LocalRateLimit``: a token bucket per route rule (and per caller identity with
  ``perClient``), :mod:`waypoint.ratelimit`; an empty bucket answers ``429`` with flag
  ``RL`` and the ``x-ratelimit-limit``/``-remaining``/``-reset`` headers.
- ``FaultInjection``: of the requests, ``delay.percentage`` wait ``fixedDelay`` before
  going on (flag ``DI``); ``abort.percentage`` are answered by the waypoint with the
  abort status (flag ``FI``; a gRPC caller gets the ``grpcStatus`` given, else gRPC's
  mapping of the HTTP status), after the delay when both strike, as Envoy's fault
  filter does.
- An ``ExtensionRef`` naming an object that is not there answers ``500``: Gateway API
  asks that a filter which cannot be resolved is never skipped.

State is the buckets, kept per limit object; a changed limit starts afresh.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import trio

from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot
from mesh.model_traffic import ExtensionRef, FaultInjection, LocalRateLimit
from mesh.response_flags import ResponseFlag
from waypoint.decisions import Rule
from waypoint.ratelimit import Buckets
from waypoint.replies import GrpcStatus, LocalReply, local_reply

MAX_LIMITS: Final = 1_000  # limit objects with buckets at once


@dataclass(frozen=True)
class Effects:
    """What the filters let through: wait ``delay`` seconds first; ``flag`` for the log."""

    delay: float = 0.0
    flag: str = ""


NONE: Final = Effects()


class Extensions:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._buckets: dict[str, tuple[LocalRateLimit, Buckets]] = {}

    def apply(
        self,
        snapshot: MeshSnapshot,
        rule: Rule,
        refs: Iterable[ExtensionRef],
        caller: SpiffeId,
        *,
        grpc: bool,
    ) -> Effects | LocalReply:
        """Run the rule's extension filters ``refs`` for one request from ``caller``."""
        namespace = rule.route.partition("/")[0]
        delay = 0.0
        flag = ""
        for ref in refs:
            found = snapshot.extension(ref.kind, f"{namespace}/{ref.name}")
            if found is None:
                return local_reply(500, f"filter {ref.kind} {namespace}/{ref.name} not found",
                                   grpc=grpc, details="extension_not_found")  # fmt: skip
            if isinstance(found, LocalRateLimit):
                refused = self._limit(found, rule, caller, grpc=grpc)
                if refused is not None:
                    return refused
                continue
            if found.delay_ms and self._strikes(found.delay_percent):
                delay += found.delay_ms / 1000
                flag = ResponseFlag.DELAY_INJECTED.value
            aborts = found.abort_status or found.abort_grpc_status is not None
            if aborts and self._strikes(found.abort_percent):
                return _abort(found, grpc=grpc, delay=delay)
        return Effects(delay, flag) if delay else NONE

    def _strikes(self, percent: float) -> bool:
        return percent >= 100 or self._rng.random() * 100 < percent

    def _limit(
        self, limit: LocalRateLimit, rule: Rule, caller: SpiffeId, *, grpc: bool
    ) -> LocalReply | None:
        kept = self._buckets.get(limit.key)
        if kept is None or kept[0] != limit:
            if len(self._buckets) >= MAX_LIMITS:
                self._buckets.clear()
            kept = self._buckets[limit.key] = (limit, Buckets(limit.rate, limit.bucket_size))
        key = (rule.route, rule.index, str(caller) if limit.per_client else "")
        decision = kept[1].take(key, trio.current_time())
        if decision.allowed:
            return None
        return local_reply(
            429, "local_rate_limited", grpc=grpc, flag=ResponseFlag.RATE_LIMITED,
            details="local_rate_limited", headers=decision.headers(),
        )  # fmt: skip


def _abort(fault: FaultInjection, *, grpc: bool, delay: float) -> LocalReply:
    status = fault.abort_status or 503
    code = fault.abort_grpc_status
    grpc_status = GrpcStatus(code) if code is not None else None
    reply = local_reply(
        status, "fault filter abort", grpc=grpc, flag=ResponseFlag.FAULT_INJECTED,
        details="fault_filter_abort", grpc_status=grpc_status,
    )  # fmt: skip
    return DelayedReply.of(reply, delay) if delay else reply


@dataclass(frozen=True)
class DelayedReply(LocalReply):
    """A local reply sent only after ``delay`` seconds (a fault's delay, then its abort)."""

    delay: float = 0.0

    @classmethod
    def of(cls, reply: LocalReply, delay: float) -> DelayedReply:
        return cls(reply.status, reply.headers, reply.body, reply.code, reply.flag,
                   reply.details, reply.grpc_status, delay)  # fmt: skip
