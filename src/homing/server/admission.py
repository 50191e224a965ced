"""Admission control: past capacity, the least urgent work waits, told when to come back.

Each worker admits at most ``capacity`` requests in flight. Every kind of
request may use only its share of that, most urgent first:

- trust (TUF metadata and targets, key-proof recovery): the whole capacity,
  because a device that cannot refresh its trust or recover is the one that
  bricks;
- device (check-in, update progress, certificate renewal): 85 %;
- enrollment (a factory station's new devices): 70 %;
- operator (admin API, fleet view, metrics, the API document): 50 %.

So as load grows the operator's calls are turned away first and devices'
trust last. A request turned away is answered ``429`` with ``Retry-After``
drawn at random from its kind's window, so a fleet turned away together
does not come back together. Liveness and readiness are never turned away.

Per-key token buckets bound one device's check-ins and one factory
station's enrollments, whatever the load.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

__all__ = ["ADMISSION", "Admission", "Kind", "RateLimiter", "kind_of"]


class Kind(Enum):
    """What a request is for, in the order it is kept under load."""

    TRUST = ("trust", 1.0, (1, 10))
    DEVICE = ("device", 0.85, (30, 120))
    ENROLLMENT = ("enrollment", 0.7, (60, 300))
    OPERATOR = ("operator", 0.5, (5, 20))

    def __init__(self, label: str, share: float, retry_window: tuple[int, int]) -> None:
        self.label = label
        self.share = share
        self.retry_window = retry_window


def kind_of(method: str, path: str) -> Kind | None:
    """The kind of a request by its path; None for what is never turned away."""
    if path in ("/healthz", "/readyz"):
        return None
    if path.startswith(("/tuf/", "/v1/recover", "/v1/time")):
        return Kind.TRUST
    if path.startswith("/v1/device/") or path == "/.well-known/est/simplereenroll":
        return Kind.DEVICE
    if path.startswith("/.well-known/est/"):
        return Kind.ENROLLMENT
    return Kind.OPERATOR


class Admission:
    def __init__(self, capacity: int, rng: random.Random | None = None) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def admit(self, kind: Kind) -> bool:
        """Whether a request of ``kind`` may start now (it then counts until ``done``)."""
        if self.in_flight >= self.capacity * kind.share:
            return False
        self.in_flight += 1
        return True

    def done(self) -> None:
        self.in_flight -= 1

    def retry_after(self, kind: Kind) -> int:
        low, high = kind.retry_window
        return self._rng.randint(low, high)


ADMISSION: web.AppKey[Admission] = web.AppKey("admission", Admission)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per key (a device id, a station name), in this worker's memory.

    ``burst`` requests at once, then one per ``every`` seconds. At most
    ``max_keys`` buckets are kept, the least recently used forgotten first (a
    forgotten key starts full again). With several workers each keeps its
    own, so a key's bound is per worker.
    """

    def __init__(
        self,
        burst: int,
        every: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.every = every
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()  # enrollments take from a thread

    @classmethod
    def of(cls, limit: tuple[int, float] | None) -> RateLimiter | None:
        """A limiter for ``(burst, every)``, or None for no limit."""
        return cls(limit[0], limit[1]) if limit is not None else None

    def take(self, key: str) -> float | None:
        """None when ``key`` may go on; else the seconds until it may."""
        with self._lock:
            return self._take(key)

    def _take(self, key: str) -> float | None:
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.every)
        bucket.at = now
        self._buckets[key] = bucket
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) * self.every

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))
