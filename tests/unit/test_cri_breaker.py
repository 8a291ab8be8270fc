"""The CRI circuit breaker, on a fake clock."""

from __future__ import annotations

import threading

import pytest

from ociresolve.cri.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def breaker(clock: Clock, *, backoff: float = 1.0, max_backoff: float = 30.0) -> Breaker:
    return Breaker(failures_to_open=3, backoff=backoff, max_backoff=max_backoff, clock=clock)


def open_it(b: Breaker) -> None:
    for _ in range(b.failures_to_open):
        assert b.allow()
        b.failure()
    assert b.state == "open"


def test_closed_lets_every_call_through(clock: Clock) -> None:
    b = breaker(clock)
    assert b.state == "closed"
    assert all(b.allow() for _ in range(100))
    assert b.opened == 0


def test_opens_after_n_failures_in_a_row(clock: Clock) -> None:
    b = breaker(clock)
    b.failure()
    b.failure()
    assert b.state == "closed" and b.allow()
    b.failure()
    assert b.state == "open"
    assert b.opened == 1
    assert not b.allow()


def test_a_success_resets_the_failure_count(clock: Clock) -> None:
    b = breaker(clock)
    for _ in range(10):
        b.failure()
        b.failure()
        b.success()
    assert b.state == "closed" and b.opened == 0


def test_refuses_while_open(clock: Clock) -> None:
    b = breaker(clock, backoff=2.0)
    open_it(b)
    for _ in range(20):
        clock.advance(0.099)
        assert not b.allow()
    assert b.state == "open"


def test_one_half_open_probe_after_the_backoff(clock: Clock) -> None:
    b = breaker(clock, backoff=2.0)
    open_it(b)
    clock.advance(2.0)
    assert b.allow()  # the probe
    assert b.state == "half-open"
    assert not any(b.allow() for _ in range(10))  # only one while it is out
    clock.advance(100.0)
    assert not b.allow()  # still only one: the probe has not reported


def test_only_one_of_many_threads_gets_the_probe(clock: Clock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(1.0)
    start = threading.Barrier(16)
    allowed: list[bool] = []

    def ask() -> None:
        start.wait()
        allowed.append(b.allow())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 1


def test_a_successful_probe_closes_it(clock: Clock) -> None:
    b = breaker(clock, backoff=2.0)
    open_it(b)
    clock.advance(2.0)
    assert b.allow()
    b.success()
    assert b.state == "closed"
    assert all(b.allow() for _ in range(10))
    # Closed means closed: it takes failures_to_open failures again to open it.
    b.failure()
    b.failure()
    assert b.state == "closed"


def test_a_failed_probe_reopens_it_with_the_backoff_doubled(clock: Clock) -> None:
    b = breaker(clock, backoff=1.0)
    open_it(b)
    clock.advance(1.0)
    assert b.allow()
    b.failure()
    assert b.state == "open"
    clock.advance(1.999)
    assert not b.allow()
    clock.advance(0.001)
    assert b.allow()
    assert b.state == "half-open"


def test_the_backoff_doubles_up_to_the_max(clock: Clock) -> None:
    b = breaker(clock, backoff=1.0, max_backoff=5.0)
    open_it(b)
    for wait in (1.0, 2.0, 4.0, 5.0, 5.0, 5.0):
        clock.advance(wait - 0.25)
        assert not b.allow()
        clock.advance(0.25)
        assert b.allow()
        b.failure()  # the probe fails
    assert b.opened == 7  # the first opening, then each failed probe's


def test_a_success_resets_the_backoff(clock: Clock) -> None:
    b = breaker(clock, backoff=1.0)
    open_it(b)
    for wait in (1.0, 2.0, 4.0):  # two failed probes: the backoff is 4 s
        clock.advance(wait)
        assert b.allow()
        b.failure()
    clock.advance(8.0)
    assert b.allow()
    b.success()
    open_it(b)
    clock.advance(1.0)
    assert b.allow()  # back to the base backoff
