"""When each event of a scenario happens, in ticks of one simulated week."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from homing.fleet.clock import year_tick
from homing.fleet.population import DAYS_PER_TICK, DAYS_PER_YEAR
from homing.fleet.scenario import Scenario
from homing.fleet.world_state import World

__all__ = ["Schedule", "announce"]


@dataclass(frozen=True)
class Schedule:
    """The ticks on which each kind of event happens."""

    ticks: int
    leaf_ticks: int
    leaf_days: int
    compromise: int | None
    public_expiry: int
    public_successor: int
    private_expiry: int
    private_successor: int
    ca_rotations: frozenset[int]
    intermediate_changes: frozenset[int]
    root_rotations: frozenset[int]
    root_ca_rotations: frozenset[int]
    key_changes: frozenset[int]
    release_ticks: int
    renewals: tuple[int, ...]
    # (role, first tick expired, tick re-signed)
    lapses: tuple[tuple[str, int, int], ...] = ()
    # (rotation tick, tick the old key is retired)
    firmware_rotations: tuple[tuple[int, int], ...] = ()
    device_ca_compromises: frozenset[int] = frozenset()
    server_ca_compromises: frozenset[int] = frozenset()

    def lapse_starting(self, tick: int) -> list[tuple[str, int, int]]:
        """Lapses whose role must be signed now to expire at the next tick."""
        return [lapse for lapse in self.lapses if lapse[1] - 1 == tick]

    def lapse_ending(self, tick: int) -> list[tuple[str, int, int]]:
        return [lapse for lapse in self.lapses if lapse[2] == tick]

    def frozen(self, tick: int) -> bool:
        """Whether an operator's lapse keeps the homing site from publishing at ``tick``."""
        return any(start <= tick < end for _, start, end in self.lapses)

    @classmethod
    def of(cls, scenario: Scenario) -> Schedule:
        ev, srv = scenario.events, scenario.server
        ticks = max(1, int(np.ceil(scenario.fleet.years * DAYS_PER_YEAR / DAYS_PER_TICK)))
        leaf_ticks = max(1, round(srv.leaf_days / DAYS_PER_TICK))
        key_ticks = max(1, round(srv.key_days / DAYS_PER_TICK))
        compromise = year_tick(ev.key_compromise) if ev.key_compromise is not None else None
        if compromise is not None and compromise >= ticks:
            compromise = None  # after the end of the run: it does not happen
        key_changes = set(range(key_ticks, ticks, key_ticks))
        if compromise is not None:
            key_changes.add(compromise)
        ca_rotations = frozenset(year_tick(y) for y in ev.issuing_ca_rotations)
        intermediate_changes = frozenset(year_tick(y) for y in ev.public_intermediate_changes)
        public_expiry = year_tick(ev.public_root_expiry)
        private_expiry = year_tick(ev.private_root_years)
        lapses = []
        for lapse in scenario.lapses:
            start = max(1, year_tick(lapse.at))
            end = max(start + 1, year_tick(lapse.at + lapse.days / DAYS_PER_YEAR))
            if start < ticks:
                lapses.append((lapse.role, start, min(end, ticks)))
        rotations = []
        for rotation in scenario.firmware_key_rotations:
            tick = year_tick(rotation.at)
            if tick < ticks:
                overlap = round(rotation.retire_after_days / DAYS_PER_TICK)
                rotations.append((tick, tick + overlap))
        device_ca = frozenset(year_tick(c.at) for c in scenario.ca_compromises if c.ca == "device")
        server_ca = frozenset(year_tick(c.at) for c in scenario.ca_compromises if c.ca == "server")
        # Every chain change is a leaf renewal too: a new intermediate issues a new leaf.
        scheduled = set(range(0, ticks, leaf_ticks)) | key_changes | ca_rotations
        scheduled |= intermediate_changes | {public_expiry, private_expiry}
        return cls(
            ticks=ticks,
            leaf_ticks=leaf_ticks,
            # Valid until the next renewal, with a week to spare.
            leaf_days=(leaf_ticks + 1) * DAYS_PER_TICK,
            compromise=compromise,
            public_expiry=public_expiry,
            public_successor=max(
                0, year_tick(ev.public_root_expiry - ev.public_new_root_lead_years)
            ),
            private_expiry=private_expiry,
            private_successor=year_tick(ev.private_root_years - 1.0),
            ca_rotations=ca_rotations,
            intermediate_changes=intermediate_changes,
            root_rotations=frozenset(year_tick(y) for y in ev.root_rotations),
            root_ca_rotations=frozenset(year_tick(y) for y in ev.root_ca_rotations if y > 0),
            key_changes=frozenset(key_changes),
            release_ticks=max(1, round(ev.firmware_release_days / DAYS_PER_TICK)),
            renewals=tuple(sorted(t for t in scheduled if 0 <= t < ticks)),
            lapses=tuple(lapses),
            firmware_rotations=tuple(sorted(rotations)),
            device_ca_compromises=frozenset(t for t in device_ca if 0 < t < ticks),
            server_ca_compromises=frozenset(t for t in server_ca if 0 < t < ticks),
        )


def announce(world: World, plan: Schedule, announce_days: int) -> None:
    """announce-next: before each scheduled renewal, the next fingerprint is announced.

    An emergency renewal (the stolen key) cannot be announced in advance.
    """
    window = max(1, round(announce_days / DAYS_PER_TICK))
    compromise = plan.compromise
    world.announce_at = np.full(world.ticks, -1, np.int64)
    world.announce_from = np.full(world.ticks, -1, np.int64)
    for tick in range(world.ticks):
        upcoming = [r for r in plan.renewals if tick < r <= tick + window and r != compromise]
        if not upcoming:
            continue
        r = upcoming[0]
        if compromise is not None and tick < compromise <= r:
            continue
        world.announce_at[tick] = world.public_at[r]
        world.announce_from[tick] = r
