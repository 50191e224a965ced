"""When the agent's next cycle runs, and the journal line that says so.

Light on purpose (the standard library only): the resident agent process
imports this and nothing else of homing, so what stays in memory while the
device sleeps is the interpreter and this (homing.agent.daemon).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

__all__ = ["MAX_BACKOFF", "delay_after", "next_delay", "next_line"]

MAX_BACKOFF = 6 * 3600.0


def next_delay(interval: float, failures: int, rng: random.Random) -> float:
    """Jittered interval; after failures, exponential backoff (capped), also jittered.

    Jitter keeps a fleet that lost power together from coming back in lockstep.
    """
    base = interval if failures == 0 else min(MAX_BACKOFF, 30.0 * 2 ** (failures - 1))
    return base * rng.uniform(0.5, 1.5)


def delay_after(
    checked_in: bool,
    retry_after: float | None,
    failures: int,
    interval: float,
    rng: random.Random,
) -> float:
    """The pause before the next cycle; ``failures`` counts this one if it failed."""
    delay = next_delay(interval, failures, rng)
    if retry_after is not None:
        # The server asked for this pause; jitter only lengthens it.
        delay = max(delay if checked_in else 0.0, retry_after * rng.uniform(1.0, 1.2))
    return delay


def next_line(summary: str, checked_in: bool, delay: float) -> str:
    """The journal's line for a cycle: ``summary`` (what it did), then what next and when."""
    at = (datetime.now(UTC) + timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")
    then = "next cycle" if checked_in else "retry"
    return f"{summary}; {then} in {delay:.0f} s (at {at})"
