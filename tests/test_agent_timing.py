"""The agent's timing rules: jittered intervals, exponential backoff, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime


def test_retry_after_and_backoff() -> None:
    import random

    from homing.agent.decide import retry_after_seconds
    from homing.agent.runner import MAX_BACKOFF, next_delay

    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds("Sat, 28 Nov 2026 12:05:00 GMT", now) == 300
    assert retry_after_seconds("10000000", now) == 86400
    assert retry_after_seconds("soon", now) is None
    rng = random.Random(1)
    delays = [next_delay(3600, 0, rng) for _ in range(100)]
    assert min(delays) >= 1800
    assert max(delays) <= 5400
    assert len(set(delays)) > 90
    assert next_delay(3600, 1, rng) <= 45
    assert next_delay(3600, 30, rng) <= MAX_BACKOFF * 1.5
