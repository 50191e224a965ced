"""Who is online when: the fleet's devices as arrays, one entry per device.

A tick is a simulated week, or the scenario's finer step. Each device has a few drawn parameters
(assembly day, shipping day, end of life, its pattern's settings) and
``online(tick)`` answers, for every device at once, whether it reaches the
network at some point in that week. Everything is drawn from the scenario's
seed, so a run is reproducible to the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from homing.fleet.clock import DAYS_PER_YEAR, START
from homing.fleet.scenario import PATTERNS, Scenario

__all__ = ["DAYS_PER_YEAR", "EPOCH_DAYS", "Fleet", "make_fleet"]

# Days from 1970-01-01 (where a clock without a battery starts) to the run's start.
EPOCH_DAYS = (START - datetime(1970, 1, 1, tzinfo=UTC)).days

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Fleet:
    """Per-device parameters, all in days from the start of the run."""

    seed: int
    made: Floats
    shipped: Floats
    ends: Floats
    # Compact codes (a million devices: every byte per device is a megabyte per array).
    pattern: npt.NDArray[np.int8]
    population: npt.NDArray[np.int16]
    online_probability: Floats
    season_start: npt.NDArray[np.float32]  # whole days: exact in float32
    season_days: npt.NDArray[np.float32]
    outage_start: Floats
    outage_end: Floats
    population_names: tuple[str, ...]
    # How far each device's clock is off, in days.
    clock_offset: Floats
    # The day each device is revoked (inf: never).
    revoked: Floats
    # Dated outages of a share of the fleet: (first day, end day, who).
    outages: tuple[tuple[float, float, Bools], ...] = ()
    # Days in one tick (the scenario's fleet.step_days).
    step: int = 7
    # Clocks that read 1970 at every start, and the day each clock is set right
    # for good (inf: never); None where no population asks for either.
    clock_resets: Bools | None = None
    clock_fixed: Floats | None = None

    def clock_changes(
        self, tick: int, online: Bools, was_online: Bools | None
    ) -> tuple[tuple[Ints, float], ...]:
        """Devices whose clock reads differently from this tick on: (devices, offset in days).

        A clock set right this tick reads true (offset 0). A clock that resets
        at every start reads 1970-01-01 at a device's first contact after it was
        off (offline the tick before, or just shipped), until it is set right.
        """
        changes: list[tuple[Ints, float]] = []
        start = tick * self.step
        if self.clock_fixed is not None:
            fixed = np.flatnonzero(
                (start <= self.clock_fixed) & (self.clock_fixed < start + self.step)
            )
            if fixed.size:
                changes.append((fixed, 0.0))
        if self.clock_resets is not None:
            booted = self.clock_resets & online
            if was_online is not None:
                booted &= ~was_online
            if self.clock_fixed is not None:
                booted &= self.clock_fixed >= start + self.step  # not set right by now
            devices = np.flatnonzero(booted)
            if devices.size:
                changes.append((devices, -float(EPOCH_DAYS + start)))
        return tuple(changes)

    @property
    def size(self) -> int:
        return int(self.made.shape[0])

    def made_tick(self) -> Ints:
        return np.floor(self.made / self.step).astype(np.int64)

    def deployed(self, tick: int) -> Bools:
        """Shipped and not yet at end of life during this tick."""
        start, end = tick * self.step, (tick + 1) * self.step
        return (self.shipped < end) & (self.ends > start)

    def online(self, tick: int, deployed: Bools | None = None) -> Bools:
        """Whether each device reaches the network at some point in this tick.

        Each pattern's rule runs on its own devices only (their indices are
        found once), so a week costs little more than the deployed check.
        """
        start, end = tick * self.step, (tick + 1) * self.step
        online = self.deployed(tick) if deployed is None else deployed.copy()
        daily, seasonal, outage = self._members()
        if daily.size:
            # The draw is for every device, as the run is defined by the seed; only
            # the daily devices' share of it is looked at.
            draw = np.random.default_rng([self.seed, tick]).random(self.size)[daily]
            online[daily] &= draw < self._weekly_probability(daily)
        if seasonal.size:
            doy = start % DAYS_PER_YEAR
            season_start = self.season_start[seasonal]
            into = (doy - season_start) % DAYS_PER_YEAR
            ahead = (season_start - doy) % DAYS_PER_YEAR
            online[seasonal] &= (into < self.season_days[seasonal]) | (ahead < self.step)
        if outage.size:
            inside = (self.outage_start[outage] <= start) & (end <= self.outage_end[outage])
            online[outage] &= ~inside
        for first, last, who in self.outages:
            if first <= start and end <= last:
                online &= ~who
        return online

    def _members(self) -> tuple[Ints, Ints, Ints]:
        """The indices of the daily, seasonal and long-outage devices (found once)."""
        cached: tuple[Ints, Ints, Ints] | None = self.__dict__.get("_member_cache")
        if cached is None:
            code = {name: i for i, name in enumerate(PATTERNS)}
            cached = tuple(  # type: ignore[assignment]
                np.flatnonzero(self.pattern == code[name])
                for name in ("daily", "seasonal", "outage")
            )
            object.__setattr__(self, "_member_cache", cached)
        assert cached is not None
        return cached

    def _weekly_probability(self, daily: Ints) -> Floats:
        cached: Floats | None = self.__dict__.get("_weekly_cache")
        if cached is None:
            cached = 1.0 - (1.0 - self.online_probability[daily]) ** self.step
            object.__setattr__(self, "_weekly_cache", cached)
        return cached


def make_fleet(scenario: Scenario) -> Fleet:
    """Draw every device's parameters from the scenario's seed."""
    n = scenario.fleet.devices
    total_days = scenario.fleet.years * DAYS_PER_YEAR
    rng = np.random.default_rng(scenario.fleet.seed)
    counts = [int(p.share * n) for p in scenario.populations]
    counts[int(np.argmax([p.share for p in scenario.populations]))] += n - sum(counts)
    population = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int64)
    code = {name: i for i, name in enumerate(PATTERNS)}
    pops = scenario.populations

    def per_device(values: list[float]) -> Floats:
        return np.asarray(values, dtype=np.float64)[population]

    def uniform_years(ranges: list[tuple[float, float]]) -> Floats:
        low = per_device([r[0] for r in ranges])
        high = per_device([r[1] for r in ranges])
        out: Floats = rng.uniform(low, high) * DAYS_PER_YEAR
        return out

    pattern = per_device([float(code[p.pattern]) for p in pops]).astype(np.int8)
    made: Floats = rng.uniform(0.0, scenario.fleet.manufacture_years * DAYS_PER_YEAR, n)
    delay = uniform_years([p.warehouse_years for p in pops])
    shipped = made + np.where(pattern == code["warehouse"], delay, 0.0)
    life = uniform_years([p.lifetime_years for p in pops])
    ends = np.where(pattern == code["dead"], made + life, np.inf)
    outage_start: Floats = shipped + rng.uniform(0.0, total_days / 2, n)
    outage_end = outage_start + uniform_years([p.outage_years for p in pops])
    # Dated events draw from their own streams, so adding one changes no other draw.
    outages = []
    for i, o in enumerate(scenario.outages):
        who = np.random.default_rng([scenario.fleet.seed, 1, i]).random(n) < o.share
        first = o.at * DAYS_PER_YEAR
        outages.append((first, first + o.days, who))
    revoked = np.full(n, np.inf)
    for i, r in enumerate(scenario.revocations):
        who = np.random.default_rng([scenario.fleet.seed, 2, i]).random(n) < r.share
        revoked = np.where(who, np.minimum(revoked, r.at * DAYS_PER_YEAR), revoked)
    clock_offset = per_device([p.clock_offset_days for p in pops])
    resets = per_device([float(p.clock_resets_at_boot) for p in pops]) > 0
    fixed_year = [math.inf if p.clock_fixed_at is None else p.clock_fixed_at for p in pops]
    fixed = per_device(fixed_year) * DAYS_PER_YEAR
    # A clock that resets reads 1970 when first switched on, at the factory (the
    # start of its assembly tick: devices made together share one state); a clock
    # set right before its device was made is right from the start.
    step = scenario.fleet.step_days
    clock_offset = np.where(resets, -(EPOCH_DAYS + np.floor(made / step) * step), clock_offset)
    clock_offset = np.where(fixed <= made, 0.0, clock_offset)
    return Fleet(
        seed=scenario.fleet.seed,
        made=made,
        shipped=shipped,
        ends=ends,
        pattern=pattern,
        population=population.astype(np.int16),
        online_probability=per_device([p.online_probability for p in pops]),
        season_start=per_device([float(p.season_start_day) for p in pops]).astype(np.float32),
        season_days=per_device([float(p.season_days) for p in pops]).astype(np.float32),
        outage_start=outage_start,
        outage_end=outage_end,
        population_names=tuple(p.name for p in pops),
        clock_offset=clock_offset,
        revoked=revoked,
        outages=tuple(outages),
        step=scenario.fleet.step_days,
        clock_resets=resets if resets.any() else None,
        clock_fixed=fixed if np.isfinite(fixed).any() else None,
    )
