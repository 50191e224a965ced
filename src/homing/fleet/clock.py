"""Simulated time: ticks from ``START``, a week each unless a scenario asks for a finer step.

The step is a scenario's setting (``fleet.step_days``), read by every part of
a run through ``days_per_tick()``; ``simulated_step`` sets it for the run's
duration (a context variable, so two runs in one process keep their own,
and the run's worker threads are handed it with ``contextvars.copy_context``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

__all__ = [
    "DAYS_PER_YEAR",
    "HOST",
    "START",
    "WEEK",
    "days_per_tick",
    "simulated_step",
    "tick_time",
    "year_tick",
]

START = datetime(2027, 1, 1, tzinfo=UTC)
HOST = "home.example.com"
DAYS_PER_YEAR = 365.25
WEEK = 7

_STEP: ContextVar[int] = ContextVar("homing_simulated_step_days", default=WEEK)


def days_per_tick() -> int:
    """Days in one tick of the run in progress (a week unless its scenario says)."""
    return _STEP.get()


@contextmanager
def simulated_step(days: int) -> Iterator[None]:
    """Run the enclosed simulation with ticks of ``days`` days."""
    token = _STEP.set(days)
    try:
        yield
    finally:
        _STEP.reset(token)


def tick_time(tick: int) -> datetime:
    return START + timedelta(days=days_per_tick() * tick)


def year_tick(years: float) -> int:
    return round(years * DAYS_PER_YEAR / days_per_tick())
