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

import itertools
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from homing.agent.decide import CertificateAction, certificate_action
from homing.errors import ConfigError, HomingError
from homing.fleet.home import SimulatedHome
from homing.fleet.population import DAYS_PER_TICK, Fleet, make_fleet
from homing.fleet.scenario import Scenario
from homing.fleet.strategies import (
    CAUGHT_UP,
    CUT_OFF,
    MANUAL,
    NEVER,
    OK,
    REFUSED,
    STRATEGIES,
    Cause,
    Homing,
    Strategy,
    make,
)
from homing.fleet.strategy_base import Situation, Step
from homing.fleet.world import Compromise, World, build_world, tick_time
from homing.pki.keys import generate_tls_key

__all__ = ["Results", "StrategyResult", "simulate"]

CERT_EXPIRED = Cause.CERT_EXPIRED
# Each cause as a small integer, for a per-device array (and back).
CAUSES = tuple(Cause)
CAUSE_CODES = {cause: code for code, cause in enumerate(CAUSES)}
# What an operator's lapse cuts devices off with (homing.fleet.world).
LAPSE_CAUSE_CODES = [
    CAUSE_CODES[c] for c in (Cause.METADATA_EXPIRED, Cause.ROOT_EXPIRED, Cause.TARGETS_EXPIRED)
]
# Later than any tick of a run.
_FAR = 2**31 - 1


@dataclass
class StrategyResult:
    name: str
    summary: str
    bricked: int = 0
    manual_recoveries: int = 0
    manual_recovery_events: int = 0
    cut_off_devices: int = 0
    exposed_devices: int = 0
    exposure_device_days: float = 0.0
    exposure_max_days: float = 0.0
    # Every theft's exposure, by what was stolen (the fields above: the TLS key).
    exposures: dict[str, dict[str, Any]] = field(default_factory=dict)
    caught_up: int = 0
    catch_up_ms: float = 0.0
    catch_up_requests: float = 0.0
    returned_days: list[float] = field(default_factory=list)
    requests: int = 0
    key_proof_recoveries: int = 0
    certificate_renewals: int = 0
    reasons: Counter[Cause] = field(default_factory=Counter)
    # What the real check said, the first time each cause was met.
    details: dict[Cause, str] = field(default_factory=dict)
    connected: list[float] = field(default_factory=list)
    # Device-days spent cut off (deployed, last contact failed), per device class.
    cut_off_days: dict[str, float] = field(default_factory=dict)
    revoked: int = 0
    # Devices that died cut off but would have come back by themselves (not bricked).
    retired_cut_off: int = 0
    # Why the bricked devices were last cut off (None: a contact with no cause).
    bricked_causes: Counter[Cause | None] = field(default_factory=Counter)
    # Every device's state when the run stops, by class: they add up to the fleet.
    end_states: dict[str, int] = field(default_factory=dict)
    # homing's devices: firmware taken through the real agent's update.
    firmware_installs: int = 0
    firmware_refused: int = 0
    firmware_reasons: dict[str, int] = field(default_factory=dict)
    firmware_behind: int = 0
    takes_firmware: bool = False

    @property
    def why(self) -> str:
        """The one line that explains this strategy's failures."""
        if not self.reasons:
            return "never cut off"
        cause = self.reasons.most_common(1)[0][0]
        reason = cause.value
        if cause in self.details:
            reason = f"{reason}: {self.details[cause]}"
        return reason if len(self.reasons) == 1 else f"{reason} (and {len(self.reasons) - 1} more)"

    def to_json(self) -> dict[str, Any]:
        returned = sorted(self.returned_days)
        return {
            "name": self.name,
            "summary": self.summary,
            "bricked": self.bricked,
            "died_cut_off_not_bricked": self.retired_cut_off,
            "end_states": self.end_states,
            "bricked_by_cause": {
                (cause.name if cause is not None else "none"): count
                for cause, count in self.bricked_causes.most_common()
            },
            "manual_recoveries": self.manual_recoveries,
            "manual_recovery_events": self.manual_recovery_events,
            "devices_ever_cut_off": self.cut_off_devices,
            "compromises": self.exposures,
            "compromise": {
                "exposed_devices": self.exposed_devices,
                "exposed_device_days": round(self.exposure_device_days, 2),
                "longest_exposure_days": _finite(self.exposure_max_days),
            },
            "catch_up": {
                "automatic": self.caught_up,
                "mean_walk_ms": round(self.catch_up_ms / self.caught_up, 2)
                if self.caught_up
                else 0,
                "mean_requests": (
                    round(self.catch_up_requests / self.caught_up, 2) if self.caught_up else 0
                ),
                "after_cut_off": len(returned),
                "median_days_cut_off": returned[len(returned) // 2] if returned else 0,
                "max_days_cut_off": returned[-1] if returned else 0,
            },
            "server_requests": self.requests,
            "key_proof_recoveries": self.key_proof_recoveries,
            "certificate_renewals": self.certificate_renewals,
            "reasons": {c.value: n for c, n in self.reasons.most_common()},
            "causes": {c.name.lower(): n for c, n in self.reasons.most_common()},
            "why": self.why,
            "revoked": self.revoked,
            # Only homing's devices take firmware through the simulated home.
            "firmware": {
                "installs": self.firmware_installs,
                "refused": self.firmware_refused,
                "reasons": dict(self.firmware_reasons),
                "devices_behind_what_they_were_offered": self.firmware_behind,
            }
            if self.takes_firmware
            else None,
            "cut_off_device_days": {
                "total": round(sum(self.cut_off_days.values()), 1),
                **{k: round(v, 1) for k, v in self.cut_off_days.items()},
            },
        }


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)


@dataclass
class Results:
    scenario: Scenario
    devices: int
    years: float
    ticks: int
    events: list[tuple[int, str]]
    strategies: list[StrategyResult]
    compromise_day: float | None
    timestamp_expiry_days: float

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "devices": self.devices,
            "years": self.years,
            "seed": self.scenario.fleet.seed,
            "weeks": self.ticks,
            "compromise_day": self.compromise_day,
            "timestamp_expiry_days": self.timestamp_expiry_days,
            "events": [{"day": t * DAYS_PER_TICK, "event": e} for t, e in self.events],
            "strategies": [s.to_json() for s in self.strategies],
            "connected_share": {
                s.name: [round(v, 5) for v in s.connected] for s in self.strategies
            },
        }


class _States:
    """Interned device states of one strategy, with per-state lookup tables."""

    def __init__(self) -> None:
        self.ids: dict[Hashable, int] = {}
        self.values: list[Hashable] = []

    def intern(self, state: Hashable) -> int:
        found = self.ids.get(state)
        if found is None:
            found = self.ids[state] = len(self.values)
            self.values.append(state)
        return found


def _group(
    ids: npt.NDArray[Any], count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct state ids present, and for each device the position of its id among them.

    What ``np.unique(..., return_inverse=True)`` returns, without sorting:
    ids are small integers, so a table does it in linear time.
    """
    present = np.zeros(count, np.bool_)
    present[ids] = True
    unique = np.flatnonzero(present)
    position = np.zeros(count, np.int64)
    position[unique] = np.arange(unique.size)
    return unique, position[ids]


def _padded(counts: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    """Counts per state id, with zeros for ids interned since they were counted."""
    if counts.size >= size:
        return counts[:size]
    return np.concatenate([counts, np.zeros(size - counts.size, counts.dtype)])


def _certificate_ticks(days: int) -> tuple[int, int]:
    """(renew after, expired after) in ticks, found by the agent's rule on a real certificate."""
    key = generate_tls_key()
    issued = tick_time(0)
    name = x509.Name([])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(issued)
        .not_valid_after(issued + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    renew = expire = None
    tick = 0
    while expire is None:
        action = certificate_action(cert, tick_time(tick))
        if action is CertificateAction.RENEW and renew is None:
            renew = tick
        if action is CertificateAction.RECOVER:
            expire = tick
        tick += 1
    return (renew if renew is not None else expire), expire


# A device's certificate situation as a small integer: phase * 2 + distrusted.
_PHASES = (CertificateAction.KEEP, CertificateAction.RENEW, CertificateAction.RECOVER)


def _situation(code: int, *, revoked: bool = False) -> Situation:
    return Situation(_PHASES[code // 2], bool(code % 2), revoked)


class _Answers:
    """The home server's answers to the situations present, as tables indexed by situation code."""

    def __init__(self, steps: Sequence[Step], codes: npt.NDArray[np.int64]) -> None:
        size = 2 * len(_PHASES)
        self.outcome = np.zeros(size, np.int8)
        self.extra = np.zeros(size, np.int64)
        self.renewed = np.zeros(size, np.bool_)
        self.recovered = np.zeros(size, np.bool_)
        self.cause_at = np.zeros(size, np.int64)
        self.causes: list[Cause | None] = []
        for code, step in zip(codes.tolist(), steps, strict=True):
            self.outcome[code] = step.outcome
            self.extra[code] = step.posts - 1  # the check-in is the contact's own request
            self.renewed[code] = step.renewed
            self.recovered[code] = step.recovered
            self.cause_at[code] = len(self.causes)
            self.causes.append(step.cause)


@dataclass(frozen=True)
class _Week:
    """What every strategy's run shares in one week."""

    tick: int
    assembled: npt.NDArray[np.int64]
    deployed: npt.NDArray[np.bool_]
    online: npt.NDArray[np.bool_]
    offline: npt.NDArray[np.int64]  # made, not online
    refused: npt.NDArray[np.int64]  # online, revoked
    dead: npt.NDArray[np.int64]  # at the end of their life this week
    deployed_count: int


@dataclass(frozen=True)
class _Events:
    """The run's events that touch every strategy's devices."""

    compromises: tuple[Compromise, ...]
    device_ca_distrusted: frozenset[int]
    manual_days: int


class _Run:
    """One strategy's devices through the run.

    A device's interned state is (its clock's offset in days, the strategy's
    state): devices whose clocks are off meet the server on their own terms.
    Each week touches every online device a few times only (its state, its
    outcome, its status); certificate rules run on the devices past their
    renewal time, and the devices cut off are counted per class as their
    status changes, not by scanning the fleet.
    """

    def __init__(self, strategy: Strategy, fleet: Fleet) -> None:
        n = fleet.size
        self.strategy = strategy
        self.fleet = fleet
        self.states = _States()
        self.ids = np.full(n, -1, np.int32)
        self.status = np.full(n, OK, np.int8)
        self.cert_expiry = np.zeros(n, np.int32)
        self.renew_at = np.full(n, _FAR, np.int32)
        self.cut_since = np.full(n, -1, np.int32)
        self.ever_cut = np.zeros(n, np.bool_)
        # Why each device was last cut off (CAUSE_CODES; -1: never, or no cause).
        self.last_cause = np.full(n, -1, np.int16)
        self.ever_manual = np.zeros(n, np.bool_)
        # Per theft: the day each device stops accepting it, and who may still.
        self.exposure_end: dict[str, npt.NDArray[np.float64]] = {}
        self._watch: dict[str, npt.NDArray[np.int64]] = {}
        # Certificates issued by a device CA whose key was stolen (and so distrusted).
        self.distrusted = np.zeros(n, np.bool_)
        classes = len(fleet.population_names)
        self.cut_days = np.zeros(classes, np.float64)
        self.cut_now = np.zeros(classes, np.int64)
        # Devices whose status is not OK (cut off, by hand, caught up, refused).
        self.unsettled = 0
        # The earliest renewal time of any device, and the devices per state id.
        self.next_due = _FAR
        self._held: npt.NDArray[np.int64] | None = None
        self._offline: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self.renew_ticks, self.life_ticks = _certificate_ticks(strategy.device_cert_days)
        self.result = StrategyResult(strategy.name, strategy.summary)
        # The home server this strategy's devices present their certificates to,
        # and its answer per certificate situation (one real conversation each).
        self.home = SimulatedHome(strategy.device_cert_days)
        self._steps: dict[Situation, Step] = {}
        # Firmware (homing's devices): the sequence each runs, and who failed to update.
        self.takes_firmware = self.result.takes_firmware = strategy.takes_firmware
        self.firmware = np.zeros(n if self.takes_firmware else 0, np.int32)
        self._firmware_table = np.zeros(0, np.int64)
        self._behind = np.zeros(n if self.takes_firmware else 0, np.bool_)
        self._behind_count = 0

    def assemble(self, devices: npt.NDArray[np.int64], tick: int) -> None:
        made = self.strategy.factory(tick)
        if self.takes_firmware:
            self.firmware[devices] = self.strategy.firmware_sequence(made)
        offsets = self.fleet.clock_offset[devices]
        for offset in np.unique(offsets):
            self.ids[devices[offsets == offset]] = self.states.intern((float(offset), made))
        self.cert_expiry[devices] = tick + self.life_ticks
        self.renew_at[devices] = tick + self.renew_ticks
        self.next_due = min(self.next_due, tick + self.renew_ticks)
        self._held = self._offline = None

    def _skewed(self, answer: Callable[[Hashable, timedelta], Any]) -> Callable[[Hashable], Any]:
        """``answer(state, skew)`` for an interned (offset, state) key."""

        def per_key(key: Hashable) -> Any:
            assert isinstance(key, tuple)
            offset, state = key
            return answer(state, timedelta(days=offset))

        return per_key

    def _held_by(self, known: int) -> npt.NDArray[np.int64]:
        """How many made devices hold each state id (recounted only after states moved)."""
        if self._held is None:
            self._held = np.bincount(self.ids[self.ids >= 0], minlength=known)
        return _padded(self._held, known)

    def _offline_by(self, offline: npt.NDArray[np.int64], known: int) -> npt.NDArray[np.int64]:
        """How many offline devices hold each state id; the same offline set is counted once."""
        if self._offline is None or self._offline[0] is not offline:
            self._offline = (offline, np.bincount(self.ids[offline], minlength=known))
        return _padded(self._offline[1], known)

    def _by_class(self, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.bincount(self.fleet.population[devices], minlength=self.cut_now.size)

    def _set_status(self, devices: npt.NDArray[np.int64], status: npt.NDArray[np.int8]) -> None:
        """Change these devices' status, keeping the counts of those cut off and not OK."""
        before = self.status[devices]
        was, now = before == CUT_OFF, status == CUT_OFF
        self.cut_now += self._by_class(devices[now & ~was]) - self._by_class(devices[was & ~now])
        self.unsettled += int((status != OK).sum()) - int((before != OK).sum())
        self.status[devices] = status

    def start_exposure(self, deployed: npt.NDArray[np.int64], c: Compromise) -> None:
        until = self.strategy.exposed_until
        ends = self._per_state(
            self.ids[deployed], self._skewed(lambda state, skew: until(state, skew, c)), np.float64
        )
        self.exposure_end[c.what] = np.full(self.ids.size, -math.inf)
        self.exposure_end[c.what][deployed] = ends
        self._watch[c.what] = deployed[ends > c.tick * DAYS_PER_TICK]

    def distrust_certificates(self, tick: int) -> None:
        """The device CA's key was stolen: the server distrusts every certificate it issued."""
        made = self.ids >= 0
        self.renew_at[made] = np.minimum(self.renew_at[made], tick)  # due at once
        self.distrusted[made] = True
        self.next_due = min(self.next_due, tick)

    def _firmware_by_id(self) -> npt.NDArray[np.int64]:
        """The newest firmware sequence offered in each interned state; the last entry (0)
        answers for the id -1 of devices not made yet."""
        known = len(self.states.values)
        if self._firmware_table.size != known + 1:
            offered = [
                self.strategy.firmware_sequence(cast(tuple[float, Hashable], v)[1])
                for v in self.states.values
            ]
            self._firmware_table = np.array([*offered, 0], np.int64)
        return self._firmware_table

    def _take_firmware(
        self,
        out: npt.NDArray[np.int8] | None,
        new: npt.NDArray[np.int32] | None,
        online: npt.NDArray[np.bool_],
    ) -> None:
        """Devices that reached home on a state offering newer firmware take the rollout.

        Only devices whose state moved this week (or whose last update failed)
        can be behind. The agent accepts an image by comparing sequences
        (anti-rollback), so every device running an older release meets a
        state's rollout the same way: one update through the real agent per
        published state (``Strategy.firmware_step``) answers for all of them.
        """
        if new is None and self._behind_count == 0:
            return
        mask = new != self.ids if new is not None else np.zeros(self.ids.size, np.bool_)
        if self._behind_count:
            mask |= self._behind & online
        candidates = np.flatnonzero(mask)
        after = new[candidates] if new is not None else self.ids[candidates]
        reached = out[candidates] if out is not None else np.zeros(candidates.size, np.int8)
        offered = self._firmware_by_id()[after]
        need = ((reached == OK) | (reached == CAUGHT_UP)) & (self.firmware[candidates] < offered)
        devices, after, offered = candidates[need], after[need], offered[need]
        if devices.size == 0:
            return
        r = self.result
        unique, inverse = _group(after, len(self.states.values) + 1)
        steps = []
        for state_id in unique.tolist():
            value = cast(tuple[float, Hashable], self.states.values[state_id])[1]
            assert isinstance(value, int)
            steps.append(self.strategy.firmware_step(self.home, value))
        extra = np.array([s.posts - 1 for s in steps], np.int64)  # besides the contact's check-in
        committed = np.array([s.committed is not None for s in steps], np.bool_)
        r.requests += int(extra[inverse].sum())
        took = committed[inverse]
        self.firmware[devices[took]] = offered[took]
        r.firmware_installs += int(took.sum())
        failed = devices[~took]
        r.firmware_refused += int(failed.size)
        for k, step in enumerate(steps):
            if not committed[k] and step.update_refused:
                count = int((inverse == k).sum())
                r.firmware_reasons[step.update_refused] = (
                    r.firmware_reasons.get(step.update_refused, 0) + count
                )
        # Who still runs older firmware than its state offers: retried at its next contact.
        self._behind[devices] = ~took
        self._behind_count = int(self._behind.sum()) if failed.size or self._behind_count else 0

    def step_for(self, situation: Situation) -> Step:
        """The home server's answer to a certificate in ``situation`` (one conversation each)."""
        if situation not in self._steps:
            self._steps[situation] = self.strategy.certificate_step(self.home, situation)
        return self._steps[situation]

    def _situations(self, devices: npt.NDArray[np.int64], tick: int) -> npt.NDArray[np.int64]:
        """Each device's certificate situation code (``_situation`` reads it back)."""
        expiry = self.cert_expiry[devices]
        # The renewal time by the certificate's own dates (a distrusted one is due at once).
        renewing = expiry - (self.life_ticks - self.renew_ticks) <= tick
        phase = np.where(expiry <= tick, 2, np.where(renewing, 1, 0))
        return cast(npt.NDArray[np.int64], phase * 2 + self.distrusted[devices])

    def refuse(self, revoked: npt.NDArray[np.int64], tick: int) -> None:
        """Revoked devices reach home and are refused, by design: not cut off, never back."""
        codes = self._situations(revoked, tick)
        for code, count in zip(*np.unique(codes, return_counts=True), strict=True):
            step = self.step_for(_situation(int(code), revoked=True))
            if step.outcome is OK:
                raise HomingError(f"the home server let a revoked device in: {step}")
            self.result.requests += step.posts * int(count)
        self._set_status(revoked, np.full(revoked.size, REFUSED, np.int8))

    def _remember_causes(
        self,
        devices: npt.NDArray[np.int64],
        position: npt.NDArray[np.int32],
        reason_at: dict[int, int],
        causes: list[Cause | None],
    ) -> None:
        """Why each of these devices was cut off this week (``end_states`` reads it)."""
        index = position[self.ids[devices]].astype(np.int64)
        for k, device in enumerate(devices.tolist()):
            cause = causes[reason_at.get(device, int(index[k]))]
            self.last_cause[device] = -1 if cause is None else CAUSE_CODES[cause]

    def retire(self, dead: npt.NDArray[np.int64]) -> None:
        """Devices at the end of their life are no longer counted as cut off; those that
        died cut off are judged at the end of the run (``finish``)."""
        cut = dead[self.status[dead] == CUT_OFF]
        self.cut_now -= self._by_class(cut)

    def would_come_back(self, devices: npt.NDArray[np.int64], tick: int) -> npt.NDArray[np.bool_]:
        """Whether devices cut off would come back by themselves at ``tick`` (the run's last
        week): their trust contact, and their certificate's conversation with the home
        when one is due, answered there as for a device alive and online.

        A device cut off by a lapse was not bricked, even if it died or slept before the
        home was back. One cut off for good (a changed fingerprint, an expired
        certificate with no key-proof recovery) is bricked, dead or alive.
        """
        s = self.strategy

        def answers(key: Hashable) -> bool:
            offset, state = cast(tuple[float, Hashable], key)
            contact = s.contact(state, tick, timedelta(days=offset))
            return contact.outcome not in (CUT_OFF, MANUAL)

        back = self._per_state(self.ids[devices], answers, np.bool_)
        due = back & (self.renew_at[devices] <= tick)
        if due.any():
            codes = self._situations(devices[due], tick)
            steps = np.array(
                [self.step_for(_situation(int(c))).outcome is not CUT_OFF for c in codes], np.bool_
            )
            back[np.flatnonzero(due)] = steps
        return back

    def count_cut_off(self) -> int:
        """Add this week's device-days cut off, per device class; returns the devices cut off."""
        self.cut_days += self.cut_now * DAYS_PER_TICK
        return int(self.cut_now.sum())

    def _per_state(
        self, ids: npt.NDArray[Any], answer: Callable[[Hashable], Any], dtype: Any
    ) -> npt.NDArray[Any]:
        unique, inverse = _group(ids, len(self.states.values))
        values = np.array([answer(self.states.values[u]) for u in unique], dtype=dtype)
        return values[inverse]

    def week(
        self,
        online: npt.NDArray[np.bool_],
        offline: npt.NDArray[np.int64],
        tick: int,
        manual_days: int,
    ) -> None:
        """One week's contacts of the devices ``online`` (a mask over the fleet).

        ``offline``: the devices made but not online. Every per-device step is
        one pass over contiguous arrays (masks, lookups in per-state tables);
        how many devices hold each state is kept as states move, so a week
        counts only the offline devices to know who is calling.
        """
        s, r = self.strategy, self.result
        known = len(self.states.values)
        counts_all = self._held_by(known) - self._offline_by(offline, known)
        unique = np.flatnonzero(counts_all)
        if unique.size == 0:
            return
        counts = counts_all[unique]
        keys = [cast(tuple[float, Hashable], self.states.values[u]) for u in unique]
        contacts = [s.contact(state, tick, timedelta(days=offset)) for offset, state in keys]
        for c in contacts:
            if c.cause is not None and c.detail:
                r.details.setdefault(c.cause, c.detail)
        new_u = np.array(
            [self.states.intern((k[0], c.state)) for k, c in zip(keys, contacts, strict=True)],
            np.int32,
        )
        out_u = np.array([c.outcome for c in contacts], np.int8)
        req_u = np.array([c.requests for c in contacts], np.int64)
        walk_u = np.array([c.walk_ms for c in contacts])
        causes: list[Cause | None] = [c.cause for c in contacts]
        caught_u = out_u == CAUGHT_UP
        r.requests += int(req_u @ counts)
        r.caught_up += int(counts[caught_u].sum())
        r.catch_up_ms += float(walk_u[caught_u] @ counts[caught_u])
        r.catch_up_requests += float(req_u[caught_u] @ counts[caught_u])
        # Which contact answered each state id.
        position = np.zeros(known + 1, np.int32)
        position[unique] = np.arange(unique.size, dtype=np.int32)
        # A quiet week: every state answers OK and stays; only the devices whose status
        # is not OK (and those with certificate work) need touching.
        quiet = bool((out_u == OK).all() and (new_u == unique).all())
        out: npt.NDArray[np.int8] | None = None
        new: npt.NDArray[np.int32] | None = None
        if not quiet:
            # Tables indexed by state id; the last entry answers for -1 (not made yet).
            out_table = np.zeros(known + 1, np.int8)
            out_table[unique] = out_u
            out = np.take(out_table, self.ids)
            if not (new_u == unique).all():
                new_table = np.arange(known + 1, dtype=np.int32)
                new_table[unique] = new_u
                new_table[known] = -1
                new = np.take(new_table, self.ids)
                new[offline] = self.ids[offline]

        # Certificates: only the devices past their renewal time have anything to do.
        reason_at: dict[int, int] = {}
        due = np.zeros(0, np.int64)
        if self.next_due <= tick:
            due = np.flatnonzero((self.renew_at <= tick) & online)
        if due.size:
            due_out = out[due] if out is not None else np.zeros(due.size, np.int8)
            connected = due_out != CUT_OFF
            caught = due_out == CAUGHT_UP
            codes = self._situations(due, tick)
            # The home server's answer per situation, as tables over situation codes.
            answer = _Answers(
                [self.step_for(_situation(int(c))) for c in np.unique(codes[connected])],
                np.unique(codes[connected]),
            )
            extra = answer.extra[codes] * connected  # requests besides the contact's check-in
            r.requests += int(extra.sum())
            r.catch_up_requests += float(extra[caught].sum())
            recovered = connected & answer.recovered[codes]
            renewed = connected & answer.renewed[codes]
            r.key_proof_recoveries += int(recovered.sum())
            r.certificate_renewals += int(renewed.sum())
            lost = connected & (answer.outcome[codes] == CUT_OFF)
            if lost.any():
                if out is None:
                    out = np.zeros(self.ids.size, np.int8)
                if new is None:
                    new = self.ids.copy()
                gone = due[lost]
                # It reached home and was refused: whatever it caught up is undone.
                was_caught = gone[out[gone] == CAUGHT_UP]
                at = position[self.ids[was_caught]]
                r.caught_up -= int(was_caught.size)
                r.catch_up_ms -= float(walk_u[at].sum())
                r.catch_up_requests -= float(req_u[at].sum())
                out[gone] = CUT_OFF
                new[gone] = self.ids[gone]
                base = len(causes)
                causes += answer.causes
                for g, code in zip(gone.tolist(), codes[lost].tolist(), strict=True):
                    reason_at[g] = base + int(answer.cause_at[code])
            fresh = due[renewed | recovered]
            self.cert_expiry[fresh] = tick + self.life_ticks
            self.renew_at[fresh] = tick + self.renew_ticks
            self.distrusted[fresh] = False
            self.next_due = int(self.renew_at.min())

        if self.takes_firmware:
            self._take_firmware(out, new, online)

        if out is None:
            if self.unsettled == 0:
                return  # every device OK before and after, none moved
            changed = np.flatnonzero((self.status != OK) & online)
            out_changed = np.zeros(changed.size, np.int8)
        else:
            changed = np.flatnonzero((self.status != out) & online)
            out_changed = out[changed]
        old_changed = self.status[changed]
        newly = changed[out_changed == CUT_OFF]
        back = changed[old_changed == CUT_OFF]
        self.cut_since[newly] = tick
        if newly.size:
            self._remember_causes(newly, position, reason_at, causes)
        manual = changed[:0]
        if out is not None and (out_u == MANUAL).any():
            manual = np.flatnonzero((out == MANUAL) & online)
        first = np.union1d(newly, manual)
        first = first[~self.ever_cut[first]]
        self.ever_cut[first] = True
        reasons = position[self.ids[first]].astype(np.int64)
        if reason_at:
            for k, device in enumerate(first.tolist()):
                reasons[k] = reason_at.get(device, reasons[k])
        for index, count in zip(*np.unique(reasons, return_counts=True), strict=True):
            cause = causes[int(index)]
            if cause is not None:
                r.reasons[cause] += int(count)
        r.returned_days.extend(((tick - self.cut_since[back]) * DAYS_PER_TICK).tolist())
        if manual.size:
            r.manual_recovery_events += int(manual.size)
            # Cut off until the hand came: that many days, in the device's class.
            self.cut_days += self._by_class(manual) * manual_days
            self.ever_manual[manual] = True
            r.returned_days.extend([float(manual_days)] * int(manual.size))
        self._set_status(changed, out_changed)
        if new is not None:
            self.ids = new
            self._held = self._offline = None  # states moved: count again at the next week

    def step(self, w: _Week, events: _Events) -> None:
        """This strategy's devices through one week."""
        if w.assembled.size:
            self.assemble(w.assembled, w.tick)
        for c in events.compromises:
            if w.tick == c.tick:
                self.start_exposure(np.flatnonzero(w.deployed), c)
        if w.tick in events.device_ca_distrusted:
            self.distrust_certificates(w.tick)
        self.retire(w.dead)
        if w.refused.size:
            self.refuse(w.refused, w.tick)
        self.week(w.online, w.offline, w.tick, events.manual_days)
        for c in events.compromises:
            if w.tick >= c.tick:
                self.end_exposure(w.online, w.tick, c)
        cut = self.count_cut_off()
        self.result.connected.append(1.0 - cut / w.deployed_count)

    def end_exposure(self, online_mask: npt.NDArray[np.bool_], tick: int, c: Compromise) -> None:
        """Exposed devices that met the server this week: does their new state trust the key?"""
        ends = self.exposure_end[c.what]
        self._watch[c.what] = self._watch[c.what][ends[self._watch[c.what]] > tick * DAYS_PER_TICK]
        watch = self._watch[c.what][online_mask[self._watch[c.what]]]
        if watch.size == 0:
            return
        moment = tick_time(tick)
        accepts = self._per_state(
            self.ids[watch],
            self._skewed(lambda state, skew: self.strategy.accepts_stolen(state, moment + skew, c)),
            np.bool_,
        )
        stop = watch[~accepts]
        ends[stop] = np.minimum(ends[stop], tick * DAYS_PER_TICK)

    def finish(
        self,
        fleet: Fleet,
        compromises: Sequence[Compromise],
        run_days: float,
        last_tick: int,
        lapse_open_at_end: bool = False,
    ) -> None:
        r = self.result
        made = self.ids >= 0
        cut = (self.status == CUT_OFF) & made
        died = np.zeros(self.ids.size, np.bool_)
        died[fleet.ends <= run_days] = True
        # Bricked is what would not come back by itself: every device whose last contact
        # failed is judged at the run's last week, as if alive and online then (a
        # seasonal device cut off by a lapse comes back at its next season).
        cut_ids = np.flatnonzero(cut)
        back = np.zeros(self.ids.size, np.bool_)
        back[cut_ids[self.would_come_back(cut_ids, last_tick)]] = True
        bricked = cut & ~back
        # Cut off by a lapse the run ends inside: waiting on the operator (or dead
        # meanwhile), not bricked.
        waiting = np.zeros(self.ids.size, np.bool_)
        if lapse_open_at_end:
            held = bricked & np.isin(self.last_cause, LAPSE_CAUSE_CODES)
            bricked &= ~held
            waiting = held & ~died
        r.bricked = int(bricked.sum())
        r.retired_cut_off = int((cut & died & ~bricked).sum())
        r.bricked_causes = Counter(
            CAUSES[code] if code >= 0 else None for code in self.last_cause[bricked].tolist()
        )
        refused = (self.status == REFUSED) & made
        r.end_states = {
            "not made": int((~made).sum()),
            "healthy": int((made & ~died & ~cut & ~refused).sum()),
            "revoked": int(refused.sum()),
            "bricked": r.bricked,
            "cut off at the end, back at its next contact": int((cut & back & ~died).sum()),
            "waiting on a lapse still open": int(waiting.sum()),
            "died": int((made & died & ~bricked & ~refused).sum()),
        }
        r.revoked = int(((self.status == REFUSED) & made).sum())
        r.cut_off_days = {
            name: float(days)
            for name, days in zip(fleet.population_names, self.cut_days, strict=True)
        }
        r.cut_off_devices = int((self.ever_cut & made).sum())
        if self.takes_firmware:
            offered = self._firmware_by_id()[self.ids]
            r.firmware_behind = int((made & (self.firmware < offered)).sum())
        r.manual_recoveries = int(self.ever_manual.sum())
        for c in compromises:
            if c.what not in self.exposure_end:
                continue
            until = self.exposure_end[c.what]
            ends = np.minimum(np.minimum(until, fleet.ends), run_days)
            exposure = np.clip(ends - c.tick * DAYS_PER_TICK, 0.0, None)
            exposed = int((exposure > 0).sum())
            device_days = float(exposure.sum())
            longest = float(exposure.max()) if exposure.size else 0.0
            never = (until == NEVER) & (fleet.ends > run_days) & (exposure > 0)
            longest = math.inf if never.any() else longest
            r.exposures[c.what] = {
                "day": c.tick * DAYS_PER_TICK,
                "exposed_devices": exposed,
                "exposed_device_days": round(device_days, 2),
                "longest_exposure_days": _finite(longest),
            }
            if c.what == "server TLS key":
                r.exposed_devices, r.exposure_device_days = exposed, device_days
                r.exposure_max_days = longest


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
    runs = [_Run(make(name, world, scenario), fleet) for name in names]
    made_tick = fleet.made_tick()
    compromise = world.compromise_tick
    compromise_day = compromise * DAYS_PER_TICK if compromise is not None else None
    run_days = world.ticks * DAYS_PER_TICK
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(runs), os.cpu_count() or 1)))
    events = _Events(
        tuple(world.compromises),
        frozenset(world.device_ca_distrusted),
        scenario.policy.manual_update_days,
    )
    # Devices in order of their end of life: those that die in a week are a slice.
    by_end = np.argsort(fleet.ends, kind="stable")
    first_revocation = float(fleet.revoked.min()) if fleet.size else math.inf
    previous_offline = by_end[:0]
    ends = fleet.ends[by_end]
    try:
        for tick in range(world.ticks):
            assembled = np.flatnonzero(made_tick == tick)
            made = made_tick <= tick
            deployed = fleet.deployed(tick)
            deployed_mask = deployed & made
            online_mask = fleet.online(tick, deployed) & made
            refused = by_end[:0]
            if tick * DAYS_PER_TICK >= first_revocation:
                revoked = online_mask & (fleet.revoked <= tick * DAYS_PER_TICK)
                refused = np.flatnonzero(revoked)
                online_mask &= ~revoked
            offline = np.flatnonzero(made & ~online_mask)
            if np.array_equal(offline, previous_offline):
                offline = previous_offline  # the same devices: their counts are reused
            previous_offline = offline
            deployed_count = max(1, int(deployed_mask.sum()))
            low, high = np.searchsorted(
                ends, [(tick - 1) * DAYS_PER_TICK, tick * DAYS_PER_TICK], "right"
            )
            dead = by_end[low:high] if tick else by_end[:0]

            week = _Week(
                tick, assembled, deployed_mask, online_mask, offline, refused, dead, deployed_count
            )
            # Strategies are independent and numpy releases the GIL: both cores work.
            list(pool.map(_Run.step, runs, itertools.repeat(week), itertools.repeat(events)))
            if progress is not None:
                progress(tick + 1, world.ticks)
        for run in runs:
            run.finish(fleet, world.compromises, run_days, world.ticks - 1, world.lapse_open_at_end)
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
    )
