"""The agent's loop: cycles at jittered intervals, exponential backoff on failure."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from homing.agent.agent import Agent
from homing.agent.decide import CycleReport

__all__ = ["cycle_line", "next_delay", "run_forever"]

log = logging.getLogger(__name__)

MAX_BACKOFF = 6 * 3600.0


def next_delay(interval: float, failures: int, rng: random.Random) -> float:
    """Jittered interval; after failures, exponential backoff (capped), also jittered.

    Jitter keeps a fleet that lost power together from coming back in lockstep.
    """
    base = interval if failures == 0 else min(MAX_BACKOFF, 30.0 * 2 ** (failures - 1))
    return base * rng.uniform(0.5, 1.5)


def run_forever(
    agent: Agent,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> None:
    """Cycle until revoked; ``sleep`` waits between cycles (a test's may stop the loop)."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
    failures = 0
    while True:
        report = agent.run_once()
        if report.revoked:
            log.error("device revoked: stopping")
            raise SystemExit(3)
        failures = 0 if report.checked_in else failures + 1
        _release_memory()
        delay = next_delay(interval, failures, rng)
        if report.retry_after is not None:
            # The server asked for this pause; jitter only lengthens it.
            delay = max(
                delay if report.checked_in else 0.0, report.retry_after * rng.uniform(1.0, 1.2)
            )
        log.info("%s", cycle_line(report, delay))
        sleep(delay)


# What of a cycle's steps is worth a line in the journal (the rest is in `agent status`).
_NOTABLE = ("renewed", "recover", "firmware", "bootstrap channel", "trusted time", "refused")


def cycle_line(report: CycleReport, delay: float) -> str:
    """One line per cycle for the journal: what it did, what it does next and when."""
    done = "checked in" if report.checked_in else f"not checked in: {report.error or 'no answer'}"
    trust = report.trust
    if trust:
        done += f" (trust root v{trust.get('root')}, targets v{trust.get('targets')})"
    notable = [step for step in report.steps if any(word in step for word in _NOTABLE)]
    if notable:
        done += "; " + "; ".join(notable)
    at = (datetime.now(UTC) + timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")
    then = "next cycle" if report.checked_in else "retry"
    return f"{done}; {then} in {delay:.0f} s (at {at})"


def _release_memory() -> None:
    """Give the heap a cycle freed back to the system before sleeping (glibc only).

    A device agent spends almost all its life asleep; what a cycle allocated
    for TLS and metadata parsing should not stay resident meanwhile.
    """
    import ctypes
    import ctypes.util
    import gc
    import linecache
    import re

    re.purge()
    linecache.clearcache()
    sys._clear_type_cache()
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)
