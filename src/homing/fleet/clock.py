"""Simulated time: ticks of one week from ``START``, and the server's one host name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from homing.fleet.population import DAYS_PER_TICK, DAYS_PER_YEAR

__all__ = ["DAYS_PER_YEAR", "HOST", "START", "tick_time", "year_tick"]

START = datetime(2027, 1, 1, tzinfo=UTC)
HOST = "home.example.com"


def tick_time(tick: int) -> datetime:
    return START + timedelta(days=DAYS_PER_TICK * tick)


def year_tick(years: float) -> int:
    return round(years * DAYS_PER_YEAR / DAYS_PER_TICK)
