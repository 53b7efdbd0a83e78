"""Token-bucket rate limits and the exponential lock-out after failed logins.

Both take the current time as an argument (no clock of their own), so tests drive them
deterministically and one monotonic clock serves the whole server.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Lockout", "RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """One token bucket per key (client address, credential id), least recently used evicted.

    Args:
        rate: Tokens added per second.
        burst: Bucket capacity (requests allowed at once).
        max_keys: Most buckets kept; the least recently used is dropped beyond it.
    """

    def __init__(self, *, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key``.

        Returns:
            0.0 when allowed, else the seconds until a token is available (``Retry-After``).
        """
        b = self._buckets.pop(key, None)
        if b is None:
            b = _Bucket(float(self.burst), now)
        b.tokens = min(float(self.burst), b.tokens + max(0.0, now - b.stamp) * self.rate)
        b.stamp = now
        self._buckets[key] = b
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate


@dataclass(slots=True)
class _Failures:
    count: int
    until: float


class Lockout:
    """Locks an account out after repeated failed logins, doubling the wait each time.

    After ``after`` consecutive failures the account is locked for ``base_s``; every further
    failure (once the lock has expired) doubles it, up to ``max_s``. A success resets it.
    """

    def __init__(self, *, after: int, base_s: float, max_s: float, max_keys: int = 100_000) -> None:
        self.after = after
        self.base_s = base_s
        self.max_s = max_s
        self.max_keys = max_keys
        self._state: OrderedDict[str, _Failures] = OrderedDict()

    def locked_for(self, key: str, now: float) -> float:
        """Seconds ``key`` remains locked (0 when it may try)."""
        f = self._state.get(key)
        return max(0.0, f.until - now) if f is not None else 0.0

    def failure(self, key: str, now: float) -> float:
        """Record a failure; returns the lock-out it triggered in seconds (0: none yet)."""
        f = self._state.pop(key, None) or _Failures(0, 0.0)
        f.count += 1
        wait = 0.0
        if f.count >= self.after:
            wait = min(self.max_s, self.base_s * 2 ** (f.count - self.after))
            f.until = now + wait
        self._state[key] = f
        if len(self._state) > self.max_keys:
            self._state.popitem(last=False)
        return wait

    def success(self, key: str) -> None:
        """Forget the failures of ``key``."""
        self._state.pop(key, None)
