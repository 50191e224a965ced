"""The simulation loop: every device, every week, every strategy.

Devices are arrays (one entry each), their trust state an id into each
strategy's table of distinct states. Each week, the devices that are online
are grouped by state; each distinct state meets the server once through
the strategy's real checks, and the answer is applied to every device in
that state. Device certificates follow the agent's own renewal rule
(``homing.agent.agent.certificate_action``), evaluated on real
certificates. A device makes its week's contact at the start of the week.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt

from homing.errors import ConfigError
from homing.fleet.clock import days_per_tick, simulated_step
from homing.fleet.device_table import RunEvents, Week
from homing.fleet.population import Fleet, make_fleet
from homing.fleet.results import CERT_EXPIRED, Results, StrategyResult
from homing.fleet.run import StrategyRun
from homing.fleet.scenario import Scenario
from homing.fleet.strategies import (
    STRATEGIES,
    Homing,
    make,
)
from homing.fleet.world import World, build_world, tick_time

__all__ = ["CERT_EXPIRED", "Results", "StrategyResult", "simulate"]


def simulate(
    scenario: Scenario,
    strategies: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    workdir: Path | None = None,
) -> Results:
    """Run the scenario for the named strategies (all by default); deterministic per seed."""
    names = list(strategies or STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ConfigError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    names = list(dict.fromkeys(names))
    scratch = Path(tempfile.mkdtemp(prefix="homing-world-", dir=workdir))
    # The agent warns about every clock behind its time floor; here that is the scenario.
    agent_log = logging.getLogger("homing.agent.agent")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)
    try:
        with simulated_step(scenario.fleet.step_days):
            world = build_world(scenario, scratch, public_site="homing-public-ca" in names)
            fleet = make_fleet(scenario)
            return _run(scenario, world, fleet, names, progress)
    finally:
        agent_log.setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    scenario: Scenario,
    world: World,
    fleet: Fleet,
    names: list[str],
    progress: Callable[[int, int], None] | None,
) -> Results:
    runs = [StrategyRun(make(name, world, scenario), fleet) for name in names]
    made_tick = fleet.made_tick()
    theft = next((c for c in world.compromises if c.what == "server TLS key"), None)
    compromise_day = theft.tick * days_per_tick() if theft is not None else None
    run_days = world.ticks * days_per_tick()
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(runs), os.cpu_count() or 1)))
    events = RunEvents(
        tuple(world.compromises),
        frozenset(world.device_ca_distrusted),
        scenario.policy.manual_update_days,
    )
    # Devices in order of their end of life: those that die in a week are a slice.
    by_end = np.argsort(fleet.ends, kind="stable")
    first_revocation = float(fleet.revoked.min()) if fleet.size else math.inf
    previous_offline = by_end[:0]
    previous_online: npt.NDArray[np.bool_] | None = None
    ends = fleet.ends[by_end]
    try:
        for tick in range(world.ticks):
            assembled = np.flatnonzero(made_tick == tick)
            made = made_tick <= tick
            deployed = fleet.deployed(tick)
            deployed_mask = deployed & made
            online_mask = fleet.online(tick, deployed) & made
            refused = by_end[:0]
            if tick * days_per_tick() >= first_revocation:
                revoked = online_mask & (fleet.revoked <= tick * days_per_tick())
                refused = np.flatnonzero(revoked)
                online_mask &= ~revoked
            offline = np.flatnonzero(made & ~online_mask)
            if np.array_equal(offline, previous_offline):
                offline = previous_offline  # the same devices: their counts are reused
            previous_offline = offline
            deployed_count = max(1, int(deployed_mask.sum()))
            low, high = np.searchsorted(
                ends, [(tick - 1) * days_per_tick(), tick * days_per_tick()], "right"
            )
            dead = by_end[low:high] if tick else by_end[:0]

            week = Week(
                tick,
                assembled,
                deployed_mask,
                online_mask,
                offline,
                refused,
                dead,
                deployed_count,
                fleet.clock_changes(tick, online_mask, previous_online),
            )
            previous_online = online_mask
            # Strategies are independent and numpy releases the GIL: both cores work.
            # Each worker thread runs in a copy of this context (the run's step).
            steps = [
                pool.submit(contextvars.copy_context().run, run.step, week, events) for run in runs
            ]
            for step in steps:
                step.result()
            if progress is not None:
                progress(tick + 1, world.ticks)
        for run in runs:
            run.finish(
                fleet,
                world.compromises,
                run_days,
                world.ticks - 1,
                world.lapse_open_at_end,
                scenario.compromise,
            )
        ts_days = 1.0
        homing = next((r.strategy for r in runs if isinstance(r.strategy, Homing)), None)
        key = next((c for c in world.compromises if c.what == "server TLS key"), None)
        if homing is not None and key is not None:
            ts_days = (homing.replay_expires(key) - tick_time(key.tick)).total_seconds() / 86400
    finally:
        pool.shutdown()
        for run in runs:
            if isinstance(run.strategy, Homing):
                run.strategy.close()
    return Results(
        scenario=scenario,
        devices=fleet.size,
        years=scenario.fleet.years,
        ticks=world.ticks,
        events=world.events,
        strategies=[run.result for run in runs],
        compromise_day=compromise_day,
        timestamp_expiry_days=ts_days,
        step_days=days_per_tick(),
    )
