"""The one token bucket (deliverer and API), on a fixed monotonic clock."""

from __future__ import annotations

import math

import pytest

from recocamp.ratelimit import RateLimiter


class Ticks:
    """A monotonic clock that moves only when told to, and a sleep that moves it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_refused_check_takes_nothing_while_a_blocking_take_runs_into_debt() -> None:
    clock = Ticks()
    limiter = RateLimiter(1.0, clock.sleep, burst_s=2.0, monotonic=clock)
    assert [limiter.wait_s() for _ in range(2)] == [0.0, 0.0]  # the burst of 2
    assert limiter.wait_s() == pytest.approx(1.0)
    assert limiter.wait_s() == pytest.approx(1.0)  # asking again costs nothing
    limiter.take()  # the same bucket: waits the second it owes
    assert clock.slept == [pytest.approx(1.0)]
    assert limiter.wait_s() == pytest.approx(1.0)


def test_per_minute_bursts_a_minutes_worth_and_keys_do_not_share() -> None:
    clock = Ticks()
    limiter = RateLimiter.per_minute(30, monotonic=clock)
    assert all(limiter.wait_s("a") == 0 for _ in range(30))
    assert limiter.wait_s("a") == pytest.approx(2.0)
    assert limiter.wait_s("b") == 0
    clock.now += 2.0
    assert limiter.wait_s("a") == 0


def test_share_splits_the_rate_between_processes() -> None:
    clock = Ticks()
    limiter = RateLimiter(10.0, clock.sleep, monotonic=clock)
    limiter.share(10.0, 4)
    assert (limiter.rate, limiter.capacity) == (2.5, 1.0)
    for _ in range(6):
        limiter.take()
    assert sum(clock.slept) == pytest.approx(5 * 0.4)  # 1 at once, then 1 per 0.4 s


@pytest.mark.parametrize("rate", [10.0, 2.5, 0.5])
def test_no_second_holds_more_requests_than_the_rate(rate: float) -> None:
    """``[esp] rate_limit_per_s`` is the provider's limit. With a second's worth of burst a
    full bucket went out at once and the refill followed in the same second: 19 requests in
    one second at 10 a second."""
    clock = Ticks()
    limiter = RateLimiter(rate, clock.sleep, monotonic=clock)
    times = []
    for _ in range(40):
        limiter.take()
        times.append(clock.now)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= math.ceil(rate)  # 2.5 a second: 3 in one second, then 2


def test_a_blocking_take_needs_a_sleep() -> None:
    with pytest.raises(TypeError):
        RateLimiter(1.0, monotonic=Ticks()).take()


def test_a_lent_rate_comes_back_spent() -> None:
    """Lending the rate (to a run's delivering processes) marks it lent while they send,
    and gives the bucket back empty: the rate was used meanwhile."""
    clock = Ticks()
    limiter = RateLimiter(2.0, clock.sleep, monotonic=clock)
    assert limiter.wait_s() == 0  # the bucket exists and has a token left
    with limiter.lend() as rate:
        assert rate == 2.0 and limiter.lent == 1
    assert limiter.lent == 0
    assert limiter.wait_s() == pytest.approx(0.5)  # empty: the next token in half a second


def test_the_rate_is_lent_to_one_borrower_at_a_time() -> None:
    """Two big campaign runs of one worker at once both borrowed the whole rate and each
    started its processes at it: twice what the provider allows. The second borrower gets
    nothing while the rate is out, and the first gets it back whole."""
    limiter = RateLimiter(2.0, Ticks().sleep, monotonic=Ticks())
    with limiter.lend() as first:
        with limiter.lend() as second:
            assert first == 2.0 and second is None and limiter.lent == 1
        assert limiter.lent == 1  # the second's end gives back nothing it did not get
    assert limiter.lent == 0
    with limiter.lend() as again:
        assert again == 2.0
