"""When each event of a scenario happens, in ticks (a week, or the scenario's step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from homing.fleet.clock import DAYS_PER_YEAR, days_per_tick, year_tick
from homing.fleet.scenario import Scenario
from homing.fleet.world_state import World

__all__ = ["Schedule", "announce"]


@dataclass(frozen=True)
class Schedule:
    """The ticks on which each kind of event happens."""

    ticks: int
    leaf_ticks: int
    leaf_days: int
    # The server's TLS key is stolen at ``compromise`` and replaced at ``key_response``
    # (the same tick unless the scenario gives the operator a response delay).
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
    # The device CA's key stolen: distrusted and replaced at the response tick.
    device_ca_compromises: frozenset[int] = frozenset()
    # A server CA's key stolen at the first tick, the CAs rotated at the second.
    server_ca_compromises: tuple[tuple[int, int], ...] = ()
    key_response: int | None = None
    # Emergency rotations (nothing stolen, nothing announced): what, per tick.
    emergencies: tuple[tuple[int, str], ...] = ()
    device_ca_rotations: frozenset[int] = frozenset()
    # Key and CA changes no one announces in advance (thefts answered, emergencies).
    unannounced: frozenset[int] = frozenset()

    def emergency(self, tick: int, of: str) -> bool:
        return (tick, of) in self.emergencies

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
        ticks = max(1, int(np.ceil(scenario.fleet.years * DAYS_PER_YEAR / days_per_tick())))
        leaf_ticks = max(1, round(srv.leaf_days / days_per_tick()))
        key_ticks = max(1, round(srv.key_days / days_per_tick()))
        delay = round(scenario.compromise.response_days / days_per_tick())
        compromise = year_tick(ev.key_compromise) if ev.key_compromise is not None else None
        if compromise is not None and compromise >= ticks:
            compromise = None  # after the end of the run: it does not happen
        emergencies = tuple(
            sorted((year_tick(e.at), e.of) for e in scenario.emergency_rotations if e.at > 0)
        )
        emergencies = tuple((t, of) for t, of in emergencies if 0 < t < ticks)
        key_changes = set(range(key_ticks, ticks, key_ticks))
        key_response = None
        if compromise is not None:
            key_response = compromise + delay
            if key_response < ticks:
                key_changes.add(key_response)
        key_changes |= {t for t, of in emergencies if of == "server-key"}
        ca_rotations = frozenset(
            {year_tick(y) for y in ev.issuing_ca_rotations}
            | {t for t, of in emergencies if of == "server-ca"}
        )
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
                overlap = round(rotation.retire_after_days / days_per_tick())
                rotations.append((tick, tick + overlap))
        device_ca = frozenset(
            year_tick(c.at) + delay for c in scenario.ca_compromises if c.ca == "device"
        )
        server_ca = sorted(
            (year_tick(c.at), year_tick(c.at) + delay)
            for c in scenario.ca_compromises
            if c.ca == "server"
        )
        # Every chain change is a leaf renewal too: a new intermediate issues a new leaf.
        scheduled = set(range(0, ticks, leaf_ticks)) | key_changes | ca_rotations
        scheduled |= intermediate_changes | {public_expiry, private_expiry}
        return cls(
            ticks=ticks,
            leaf_ticks=leaf_ticks,
            # Valid until the next renewal, with a week to spare.
            leaf_days=(leaf_ticks + 1) * days_per_tick(),
            compromise=compromise,
            public_expiry=public_expiry,
            public_successor=max(
                0, year_tick(ev.public_root_expiry - ev.public_new_root_lead_years)
            ),
            private_expiry=private_expiry,
            private_successor=year_tick(ev.private_root_years - 1.0),
            ca_rotations=ca_rotations,
            intermediate_changes=intermediate_changes,
            root_rotations=frozenset(
                {year_tick(y) for y in ev.root_rotations}
                | {t for t, of in emergencies if of == "root"}
            ),
            root_ca_rotations=frozenset(year_tick(y) for y in ev.root_ca_rotations if y > 0),
            key_changes=frozenset(key_changes),
            release_ticks=max(1, round(ev.firmware_release_days / days_per_tick())),
            renewals=tuple(sorted(t for t in scheduled if 0 <= t < ticks)),
            lapses=tuple(lapses),
            firmware_rotations=tuple(sorted(rotations)),
            device_ca_compromises=frozenset(t for t in device_ca if 0 < t < ticks),
            server_ca_compromises=tuple(pair for pair in server_ca if 0 < pair[0] < ticks),
            key_response=key_response,
            emergencies=emergencies,
            device_ca_rotations=frozenset(t for t, of in emergencies if of == "device-ca"),
            unannounced=frozenset(
                {t for t, of in emergencies if of in ("server-key", "server-ca")}
                | ({key_response} if key_response is not None else set())
            ),
        )


def announce(world: World, plan: Schedule, announce_days: int) -> None:
    """announce-next: before each scheduled renewal, the next fingerprint is announced.

    An emergency renewal (a stolen key answered, an emergency rotation) cannot
    be announced in advance, and an announcement it overtakes is void.
    """
    window = max(1, round(announce_days / days_per_tick()))
    sudden = plan.unannounced
    world.announce_at = np.full(world.ticks, -1, np.int64)
    world.announce_from = np.full(world.ticks, -1, np.int64)
    for tick in range(world.ticks):
        upcoming = [r for r in plan.renewals if tick < r <= tick + window and r not in sudden]
        if not upcoming:
            continue
        r = upcoming[0]
        if any(tick < change <= r for change in sudden):
            continue
        world.announce_at[tick] = world.public_at[r]
        world.announce_from[tick] = r
