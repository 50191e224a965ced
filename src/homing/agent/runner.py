"""The agent's loop: cycles at jittered intervals, exponential backoff on failure."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable

from homing.agent.agent import Agent

__all__ = ["next_delay", "run_forever"]

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
        sleep(delay)


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
