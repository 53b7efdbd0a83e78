"""Token-bucket rate limits and the exponential lock-out after failed logins.

Both take the current time as an argument (no clock of their own), so tests drive them
deterministically and one monotonic clock serves the whole server.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["AuditThrottle", "Lockout", "RateLimiter"]


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


class AuditThrottle:
    """Holds back the audit entries of repeated anonymous failures, counting them instead.

    Every anonymous refusal (401, 404, 405...) used to be one fsync'd audit entry, so
    anyone could fill the log's disk. Now each client address may write ``burst`` entries
    and then ``rate`` per second (and all addresses together ``total_burst`` /
    ``total_rate``); what is held back is counted per address and written as one summary
    entry (``audit.suppressed``: how many, which statuses) within ``flush_s`` seconds.

    Args:
        rate: Entries per second per address.
        burst: Entries an address may write at once.
        total_rate: Entries per second over all addresses.
        total_burst: Entries at once over all addresses.
        flush_s: Most seconds a count waits before its summary is written.
        max_keys: Most addresses tracked; beyond it counts go to the address ``*``.
    """

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        total_rate: float,
        total_burst: int,
        flush_s: float = 60.0,
        max_keys: int = 10_000,
    ) -> None:
        import threading

        self.per = RateLimiter(rate=rate, burst=burst, max_keys=max_keys)
        self.total = RateLimiter(rate=total_rate, burst=total_burst, max_keys=1)
        self.flush_s = flush_s
        self.max_keys = max_keys
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, client: str, now: float) -> bool:
        """Whether an entry for ``client`` may be written now (else call :meth:`hold`)."""
        with self._lock:
            if self.per.take(client, now) > 0:
                return False
            return self.total.take("*", now) <= 0

    def hold(self, client: str, status: int, now: float) -> None:
        """Count an entry that was not written."""
        with self._lock:
            key = client if client in self._held or len(self._held) < self.max_keys else "*"
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(first=now)
            held.count += 1
            held.last = now
            held.statuses[status] = held.statuses.get(status, 0) + 1

    def due(self, now: float, *, everything: bool = False) -> list[dict[str, object]]:
        """Summaries to write now (counts older than ``flush_s``, or all), forgotten here."""
        out = []
        with self._lock:
            while self._held:  # oldest first (insertion order): stop at the first not due
                client, held = next(iter(self._held.items()))
                if not everything and now - held.first < self.flush_s:
                    break
                del self._held[client]
                out.append(
                    {
                        "client": client,
                        "count": held.count,
                        "statuses": {str(k): v for k, v in sorted(held.statuses.items())},
                        "over_s": round(held.last - held.first, 3),
                    }
                )
        return out

    @property
    def pending(self) -> int:
        """Entries held back and not yet summarised."""
        with self._lock:
            return sum(h.count for h in self._held.values())


@dataclass(slots=True)
class _Held:
    first: float
    last: float = 0.0
    count: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
