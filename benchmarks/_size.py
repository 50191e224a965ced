"""How large a benchmark run is: full (the figures), quick (a first look), or a smoke run.

``HOMING_BENCH_SMOKE=1`` makes every benchmark as small as it can be and still
do each of its steps once: ``tests/test_benchmarks_run.py`` runs them all that
way, so a benchmark that no longer runs fails the tests instead of the next
person's ``make bench``. Its figures mean nothing.
"""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["SMOKE_ENV", "sized", "smoke"]

SMOKE_ENV = "HOMING_BENCH_SMOKE"

T = TypeVar("T")


def smoke() -> bool:
    return os.environ.get(SMOKE_ENV) == "1"


def sized(quick: bool, full: T, short: T, tiny: T) -> T:
    """``tiny`` in a smoke run, else ``short`` when quick, else ``full``."""
    if smoke():
        return tiny
    return short if quick else full
