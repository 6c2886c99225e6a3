"""One request's retries on its answers' status (``waypoint.retries``): the rule's codes
and attempts, the Service's retry budget, the backoff, and the ``URX`` flag. Pure, on
Trio's clock (``autojump_clock``: no real waiting)."""

from __future__ import annotations

import structlog
import trio

from mesh.model_l7 import Retry
from tests.builders import service
from waypoint.budget import BudgetConfig, RetryBudgets
from waypoint.decisions import Backend, Forward, Rule
from waypoint.dispatch import Plan
from waypoint.http_request import HttpRequest
from waypoint.retries import URX, Retries

WEB = service("web", vip="10.96.0.10", ports={80: 8080}, backends=[])


def plan(retry: Retry | None) -> Plan:
    request = HttpRequest("GET", "/", "web")
    rule = Rule("HTTPRoute", "default/web", 0, retry=retry)
    forward = Forward(rule, Backend("default/web", 80, 1), request)
    return Plan(request, [], WEB, forward)


async def test_an_answer_with_a_retry_code_goes_again_up_to_the_attempts_then_urx(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=2)), False, RetryBudgets())
    assert retries is not None
    assert retries.again(503, attempt_left=True)
    assert retries.again(503, attempt_left=True)
    assert not retries.again(503, attempt_left=True)  # two retries: the third answer stands
    assert retries.done == 2
    assert retries.flag(503) == URX
    assert retries.flag(200) is None  # a success after retries carries no flag


async def test_other_codes_and_the_last_attempt_are_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=2)), False, RetryBudgets())
    assert retries is not None
    assert not retries.again(500, attempt_left=True)
    assert retries.flag(500) is None
    assert not retries.again(503, attempt_left=False)  # no attempt left for it
    assert retries.flag(503) is None  # never retried: a plain 503, as without a retry


async def test_no_codes_or_a_body_means_no_retries_on_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budgets = RetryBudgets()
    assert Retries.of(plan(None), False, budgets) is None
    assert Retries.of(plan(Retry(())), False, budgets) is None
    assert Retries.of(plan(Retry((503,))), True, budgets) is None  # its body is not kept


async def test_the_services_budget_refuses_a_retry_storm_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budgets = RetryBudgets(BudgetConfig(percent=20, min_retries=0))
    allowed = 0
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):  # every answer fails: each request would retry twice
            retries = Retries.of(plan(Retry((503,), attempts=2)), False, budgets)
            assert retries is not None
            while retries.again(503, attempt_left=True):
                allowed += 1
            assert retries.flag(503) == URX
    assert allowed <= 50 * 20 // 100  # at most a fifth of the requests
    assert allowed > 0
    refused = [e for e in logs if e["event"] == "retry_budget_exhausted"]
    assert refused, "the budget's refusal is logged"
    assert refused[0]["service"] == "default/web"


async def test_the_backoff_doubles_from_the_rules_up_to_ten_times_with_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = Retries.of(plan(Retry((503,), attempts=10, backoff_ms=100)), False, RetryBudgets())
    assert retries is not None
    waits = []
    for _ in range(6):
        assert retries.again(503, attempt_left=True)
        waits.append(retries.backoff())
    for wait, base in zip(waits, (0.1, 0.2, 0.4, 0.8, 1.0, 1.0), strict=True):
        assert base <= wait < base * 1.5
