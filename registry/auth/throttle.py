"""Abuse limits, in memory per server process: failed authentications per address, and an
optional request rate per token. Both answer "wait this many seconds" or None."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

MAX_TRACKED = 10_000  # addresses / tokens remembered; the oldest are forgotten first


class FailureThrottle:
    """After ``max_failures`` failed authentications within ``window_s`` from one address,
    that address is refused for ``lockout_s`` seconds (whatever it sends)."""

    def __init__(self, max_failures: int, window_s: float, lockout_s: float, clock=time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.clock = clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._blocked: dict[str, float] = {}

    def retry_after(self, address: str) -> int | None:
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._blocked[address]
            return None
        return max(1, math.ceil(left))

    def failed(self, address: str) -> None:
        now = self.clock()
        times = self._failures.pop(address, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.max_failures:
            self._blocked[address] = now + self.lockout_s
            times.clear()
        else:
            self._failures[address] = times
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)
        if len(self._blocked) > MAX_TRACKED:
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}


class TokenRateLimiter:
    """A token bucket per token name: ``rate`` requests per second, bursts of ``rate``."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = rate
        self.burst = max(1.0, rate)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after(self, token: str) -> int | None:
        """Take one request from the bucket; None if allowed, else seconds to wait."""
        now = self.clock()
        level, last = self._buckets.pop(token, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        wait = None
        if level >= 1:
            level -= 1
        else:
            wait = max(1, math.ceil((1 - level) / self.rate))
        self._buckets[token] = (level, now)
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return wait
