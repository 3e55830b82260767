"""One token bucket for every rate limit: the deliverer's requests to the ESP and the API's
requests per key. Pure: the monotonic clock and the sleep are passed in.

A bucket fills at ``rate`` tokens a second up to ``capacity`` (the burst: ``burst_s``
seconds' worth, at least one token). By default there is no burst (one token): requests are
spaced ``1 / rate`` apart, and no second holds more than ``rate`` of them. A second's worth
of burst (the default before) let a full bucket go out at once and the refill follow in the
same second: 19 requests in one second at 10 a second, where ``[esp] rate_limit_per_s`` is
documented as the provider's limit. The API's limit per minute bursts a minute's worth on
purpose (``per_minute``). Two ways to take a token:

- :meth:`RateLimiter.take` blocks: the token is taken at once (the bucket may go into debt)
  and the caller sleeps, outside the lock, for what it owes. The deliverer uses it, so
  threads that share a limiter queue up at the configured rate.
- :meth:`RateLimiter.wait_s` does not block: 0 when a token was free (and taken), else the
  seconds until one is (nothing taken). The API answers 429 with that as ``Retry-After``.

Each key (an API key's name; the deliverer uses the one default key) has its own bucket.
:meth:`RateLimiter.due_s` only looks (the API's failed authentications per client address:
a client that spent its bucket is refused before its credentials are checked), and
``max_keys`` bounds how many buckets are kept (keys an attacker chooses, such as addresses).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class RateLimiter:
    """Token buckets by key: ``rate`` requests a second, bursts of ``burst_s`` seconds' worth
    (none by default: one token).

    Thread-safe. A worker sets the rate to its share of the configured total with
    :meth:`share` when other workers run, so the provider sees the configured rate in total.
    """

    def __init__(
        self,
        rate: float,
        sleep: Callable[[float], object] | None = None,
        *,
        burst_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> None:
        self.burst_s, self.sleep, self.monotonic = burst_s, sleep, monotonic
        self.max_keys = max_keys  # see _bounded
        self.rate, self.capacity = rate, max(1.0, rate * burst_s)
        self.buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)
        self.lock = threading.Lock()
        self.lent = 0  # 1 while the whole rate is lent to senders elsewhere (:meth:`lend`)

    @classmethod
    def per_minute(
        cls,
        per_minute: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int | None = None,
    ) -> RateLimiter:
        """The API's limit: ``per_minute`` requests a minute, bursts of a minute's worth."""
        return cls(per_minute / 60.0, burst_s=60.0, monotonic=monotonic, max_keys=max_keys)

    def _refilled(self, key: str, now: float) -> float:
        tokens, at = self.buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def wait_s(self, key: str = "") -> float:
        """0 when the request may go ahead (and counts it), else seconds until it may."""
        with self.lock:
            now = self.monotonic()
            tokens = self._refilled(key, now)
            taken = 1.0 if tokens >= 1.0 else 0.0
            self.buckets[key] = (tokens - taken, now)
        return 0.0 if taken else (1.0 - tokens) / self.rate

    def due_s(self, key: str = "") -> float:
        """0 when a token is free for ``key``, else the seconds until one is; takes none."""
        if key not in self.buckets:  # a full bucket: no lock for the common answer
            return 0.0
        with self.lock:
            tokens = self._refilled(key, self.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def spend(self, key: str = "") -> None:
        """Take a token if there is one (never into debt): a failure counted."""
        with self.lock:
            now = self.monotonic()
            self._bounded(now)
            self.buckets[key] = (max(0.0, self._refilled(key, now) - 1.0), now)

    def _bounded(self, now: float) -> None:
        """With ``max_keys``, at most that many buckets: past it the full ones go (a full
        bucket is what a key without one gets), then, if still too many, all of them (the
        limit forgets rather than lets keys chosen by a client fill the memory)."""
        if self.max_keys is None or len(self.buckets) < self.max_keys:
            return
        self.buckets = {
            key: (tokens, at)
            for key, (tokens, at) in self.buckets.items()
            if min(self.capacity, tokens + (now - at) * self.rate) < self.capacity
        }
        if len(self.buckets) >= self.max_keys:
            self.buckets.clear()

    def take(self, key: str = "") -> None:
        """Take a token now, then sleep (with the injected sleep) until it was due."""
        if self.sleep is None:
            raise TypeError("RateLimiter.take needs the sleep passed to the constructor")
        with self.lock:
            now = self.monotonic()
            tokens = self._refilled(key, now)
            wait = (1.0 - tokens) / self.rate if tokens < 1.0 else 0.0
            self.buckets[key] = (tokens - 1.0, now)  # taken now, paid for by waiting below
        if wait > 0:
            self.sleep(wait)

    @contextmanager
    def lend(self) -> Iterator[float | None]:
        """Lend the whole rate to senders this limiter does not see (a run's delivering
        processes, each with its share of it), and get it back at the end. Meanwhile
        :attr:`lent` is set, and the deliverers that take from this limiter yield rather than
        send at the same rate again; the bucket comes back empty, as the rate was spent.

        The rate is lent to one holder at a time: a second borrower while it is out (two big
        campaign runs of one worker at once) gets None and sends nothing itself, since lending
        it the same whole rate again would double what the provider sees."""
        with self.lock:
            if self.lent:
                borrowed = False
            else:
                self.lent, borrowed = self.lent + 1, True
        if not borrowed:
            yield None
            return
        try:
            yield self.rate
        finally:
            with self.lock:
                self.lent -= 1
                now = self.monotonic()
                self.buckets = {key: (0.0, now) for key in self.buckets}

    def share(self, total: float, parts: int) -> None:
        """Set the rate to this process's share of ``total`` among ``parts`` processes."""
        with self.lock:
            self.rate = total / max(1, parts)
            self.capacity = max(1.0, self.rate * self.burst_s)
