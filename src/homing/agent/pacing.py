"""When the agent's next cycle runs, and the journal line that says so.

Light on purpose (the standard library only): the resident agent process
imports this and nothing else of homing, so what stays in memory while the
device sleeps is the interpreter and this (homing.agent.daemon).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn

__all__ = [
    "MAX_BACKOFF",
    "REVOKED",
    "Outcome",
    "cycle_forever",
    "delay_after",
    "next_delay",
    "next_line",
]

log = logging.getLogger("homing.agent.runner")

# Exit status of a revoked device (its unit does not restart it: RestartPreventExitStatus).
REVOKED = 3

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


@dataclass(frozen=True)
class Outcome:
    """What one cycle came to, as far as the loop cares."""

    checked_in: bool
    revoked: bool
    retry_after: float | None
    summary: str  # what it did, for the journal


def cycle_forever(
    cycle: Callable[[], Outcome],
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> NoReturn:
    """Run ``cycle`` until the device is revoked: a jittered interval between cycles,
    backoff after failures, the server's Retry-After honoured, one journal line each.
    ``sleep`` waits between cycles (a test's may stop the loop)."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
    failures = 0
    while True:
        outcome = cycle()
        if outcome.revoked:
            log.error("device revoked: stopping")
            raise SystemExit(REVOKED)
        failures = 0 if outcome.checked_in else failures + 1
        delay = delay_after(outcome.checked_in, outcome.retry_after, failures, interval, rng)
        log.info("%s", next_line(outcome.summary, outcome.checked_in, delay))
        sleep(delay)
