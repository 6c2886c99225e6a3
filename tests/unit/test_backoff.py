"""mesh.backoff: exponential steps, capped, with equal jitter (or none)."""

from __future__ import annotations

from mesh.backoff import Backoff


def test_steps_double_and_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, jitter=False)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_jitter_stays_within_half_a_step_and_the_step() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, multiplier=3.0)
    for n in range(1, 6):
        step = min(3.0 ** (n - 1), 8.0)
        draws = [backoff.delay(n) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws)
        assert max(draws) - min(draws) > step / 10  # it really varies


def test_each_run_of_failures_starts_again() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=False)
    first, second = backoff.delays(), backoff.delays()
    assert [first(), first(), first()] == [0.5, 1.0, 2.0]
    assert second() == 0.5
