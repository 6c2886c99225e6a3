"""A route rule's retry on status codes (HTTPRoute ``retry``, GEP-1731), for one request:
whether an answer sends the request again, how long to wait first, and the ``URX`` flag
when the last answer still has a retry code. The Service's retry budget
(:mod:`waypoint.budget`, GEP-3388's defaults) bounds the retries of all requests, so a
backend that fails everything sees at most a fifth more load, not a retry storm.

Only requests without a body are sent again on their answer's status: a body is
streamed up as it comes, not kept to be sent twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from mesh.model_l7 import GrpcRetry, Retry
from mesh.response_flags import ResponseFlag
from waypoint.backends import Backend
from waypoint.body_copy import MAX_BODY
from waypoint.bridge import Again
from waypoint.dispatch import Plan

log = structlog.get_logger("waypoint.retries")

URX = ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED.value


@dataclass
class Retries:
    """One request's retries on its answers' status."""

    retry: Retry | GrpcRetry
    backend: Backend
    done: int = 0  # sent again so far
    refused: bool = False  # the budget (or ``maxRetries``) said no

    @classmethod
    def of(cls, plan: Plan, backend: Backend) -> Retries | None:
        """The request's retries, counted in its Service's budget; None when its rule has
        no retry codes."""
        retry = plan.retry
        if retry is None or not retry.codes:
            return None
        backend.budget.sent(trio.current_time())
        return cls(retry, backend)

    def again(self, status: int, attempt_left: bool, *, replayable: bool = True) -> bool:
        """Whether an answer with ``status`` sends the request again (counted);
        ``replayable`` False: its body cannot be sent again."""
        if status not in self.retry.codes or not attempt_left or self.refused:
            return False
        if self.done >= self.retry.attempts:
            return False
        backend = self.backend
        if not replayable:
            self.refused = True
            reason = f"the body was not read whole, or is over {MAX_BODY} bytes"
            log.info("retry_body_not_replayable", service=backend.key, status=status,
                     reason=reason)  # fmt: skip
            return False
        if not self.done and not backend.may_retry():
            self.refused = True
            log.info("retry_overflow", service=backend.key, status=status,
                     max_retries=backend.pool.max_retries)  # fmt: skip
            return False
        if not backend.budget.try_retry(trio.current_time()):
            self.refused = True
            log.info("retry_budget_exhausted", service=backend.key, status=status,
                     refused=backend.budget.refused)  # fmt: skip
            return False
        if not self.done:
            backend.retrying += 1
        self.done += 1
        return True

    def close(self) -> None:
        """The request is over: it no longer counts among the Service's retries."""
        if self.done:
            self.backend.retrying -= 1

    def flag(self, status: int) -> str | None:
        """``URX`` for a last answer that still has a retry code after a retry or a
        refusal; None otherwise."""
        if status in self.retry.codes and (self.done or self.refused):
            return URX
        return None

    def backoff(self) -> float:
        """Seconds to wait before the next try: the rule's backoff doubled per retry, up
        to ten times it, jittered up to half again (never under the backoff)."""
        base = self.retry.backoff_ms / 1000
        delay = min(base * 2.0 ** (self.done - 1), base * 10)
        return delay * (1 + random.random() / 2)


class Retried(Protocol):
    """A request as a session carries it (``Exchange``, ``H2Request``): its retries, the
    status of its last answer, whether its body can be sent again."""

    retries: Retries | None
    status: int

    @property
    def replayable(self) -> bool: ...


def again_for(request: Retried, *, retry_ok: bool) -> Again | None:
    """For a bridge (the answer is read before anything goes down): whether an answer's
    status sends ``request`` again; None when its rule has no retry on status."""
    retries = request.retries
    if retries is None:
        return None

    def again(status: int) -> bool:
        request.status = status
        return retries.again(status, retry_ok, replayable=request.replayable)

    return again
