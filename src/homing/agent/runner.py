"""The agent's loop in one process: cycles at jittered intervals, backoff on failure (the
resident agent runs each cycle in a process of its own: homing.agent.daemon)."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable

from homing.agent.agent import Agent
from homing.agent.decide import CycleReport
from homing.agent.pacing import MAX_BACKOFF, Outcome, cycle_forever, next_delay, next_line

__all__ = ["MAX_BACKOFF", "cycle_line", "cycle_summary", "next_delay", "run_forever"]

log = logging.getLogger(__name__)


def run_forever(
    agent: Agent,
    interval: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> None:
    """Cycle in this process until revoked (homing.agent.pacing.cycle_forever's loop)."""

    def cycle() -> Outcome:
        report = agent.run_once()
        _release_memory()
        return Outcome(report.checked_in, report.revoked, report.retry_after, cycle_summary(report))

    cycle_forever(cycle, interval, sleep, rng)


# What of a cycle's steps is worth a line in the journal (the rest is in `agent status`).
_NOTABLE = ("renewed", "recover", "firmware", "bootstrap channel", "trusted time", "refused")


def cycle_summary(report: CycleReport) -> str:
    """What a cycle did, for the journal (the rest is in `agent status`)."""
    done = "checked in" if report.checked_in else f"not checked in: {report.error or 'no answer'}"
    trust = report.trust
    if trust:
        done += f" (trust root v{trust.get('root')}, targets v{trust.get('targets')})"
    notable = [step for step in report.steps if any(word in step for word in _NOTABLE)]
    if notable:
        done += "; " + "; ".join(notable)
    return done


def cycle_line(report: CycleReport, delay: float) -> str:
    """One line per cycle for the journal: what it did, what it does next and when."""
    return next_line(cycle_summary(report), report.checked_in, delay)


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
