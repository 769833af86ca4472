"""The Elasticsearch retry policy: exponential backoff with jitter, within a budget of time without
progress (esrag/stores/es_client.py)."""

from __future__ import annotations

import random

from esrag.stores.es_client import RetryPolicy


class FakeClock:
    """A clock that advances only when the policy sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def policy(budget: float, clock: FakeClock, seed: int = 1) -> RetryPolicy:
    return RetryPolicy(budget_s=budget, initial_s=0.5, max_s=8.0, sleep=clock.sleep, clock=clock,
                       rng=random.Random(seed))


def test_waits_double_with_jitter_up_to_the_cap() -> None:
    clock = FakeClock()
    p = policy(1000, clock)
    for attempt in range(8):
        p.wait(attempt)
    caps = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert all(cap / 2 <= s <= cap for s, cap in zip(clock.slept, caps, strict=True))
    assert len(set(clock.slept)) == len(clock.slept)  # jittered: no two waits alike


def test_the_budget_bounds_the_total_wait_and_then_gives_up() -> None:
    clock = FakeClock()
    p = policy(10, clock)
    attempt = 0
    while p.wait(attempt) is not None:
        attempt += 1
    assert abs(sum(clock.slept) - 10) < 1e-9  # the last wait is cut to what is left
    assert p.wait(0) is None  # spent: later requests are tried once each, without waiting


def test_progress_makes_the_budget_whole_again() -> None:
    clock = FakeClock()
    p = policy(3, clock)
    while p.wait(5) is not None:
        pass
    p.progress()
    assert p.remaining() == 3
    assert p.wait(0) is not None


def test_retry_after_is_honoured_within_the_budget() -> None:
    clock = FakeClock()
    p = policy(5, clock)
    assert p.wait(0, retry_after=2.0) == 2.0
    assert p.wait(0, retry_after=30.0) == 3.0  # never past the budget
