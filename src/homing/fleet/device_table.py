"""One strategy's fleet as arrays: interned states, statuses, certificates, classes.

The bookkeeping under ``homing.fleet.run``: each device is an entry in
contiguous arrays, its trust state an id into the strategy's table of
distinct states, and the home server's answer per certificate situation is
asked once (``step_for``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from homing.agent.decide import CertificateAction, certificate_action
from homing.fleet.home import SimulatedHome
from homing.fleet.population import Fleet
from homing.fleet.results import StrategyResult
from homing.fleet.strategies import (
    CUT_OFF,
    OK,
    Cause,
    Strategy,
)
from homing.fleet.strategy_base import Situation, Step
from homing.fleet.world import Compromise, tick_time
from homing.pki.keys import generate_tls_key

__all__ = [
    "Answers",
    "DeviceTable",
    "InternedStates",
    "RunEvents",
    "Week",
    "certificate_ticks",
    "group_states",
    "padded_counts",
    "situation_of",
]

_FAR = 2**31 - 1


class InternedStates:
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


def group_states(
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


def padded_counts(counts: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    """Counts per state id, with zeros for ids interned since they were counted."""
    if counts.size >= size:
        return counts[:size]
    return np.concatenate([counts, np.zeros(size - counts.size, counts.dtype)])


def certificate_ticks(days: int) -> tuple[int, int]:
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


def situation_of(code: int, *, revoked: bool = False) -> Situation:
    return Situation(_PHASES[code // 2], bool(code % 2), revoked)


class Answers:
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
class Week:
    """What every strategy's run shares in one week."""

    tick: int
    assembled: npt.NDArray[np.int64]
    deployed: npt.NDArray[np.bool_]
    online: npt.NDArray[np.bool_]
    offline: npt.NDArray[np.int64]  # made, not online
    refused: npt.NDArray[np.int64]  # online, revoked
    dead: npt.NDArray[np.int64]  # at the end of their life this week
    deployed_count: int
    # Devices whose clock reads differently from this week on: (devices, offset in days).
    clock_changes: tuple[tuple[npt.NDArray[np.int64], float], ...] = ()


@dataclass(frozen=True)
class RunEvents:
    """The run's events that touch every strategy's devices."""

    compromises: tuple[Compromise, ...]
    device_ca_distrusted: frozenset[int]
    manual_days: int


class DeviceTable:
    """The arrays every strategy's run keeps for its devices, and how they are read."""

    def __init__(self, strategy: Strategy, fleet: Fleet) -> None:
        n = fleet.size
        self.strategy = strategy
        self.fleet = fleet
        self.states = InternedStates()
        self.ids = np.full(n, -1, np.int32)
        self.status = np.full(n, OK, np.int8)
        self.cert_expiry = np.zeros(n, np.int32)
        self.renew_at = np.full(n, _FAR, np.int32)
        self.cut_since = np.full(n, -1, np.int32)
        self.ever_cut = np.zeros(n, np.bool_)
        # Why each device was last cut off (CAUSE_CODES; -1: never, or no cause).
        self.last_cause = np.full(n, -1, np.int8)
        self.ever_manual = np.zeros(n, np.bool_)
        # Per theft: the day each device stops accepting it, and who may still.
        self.exposure_end: dict[str, npt.NDArray[np.float64]] = {}
        self._watch: dict[str, npt.NDArray[np.int32]] = {}
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
        self.renew_ticks, self.life_ticks = certificate_ticks(strategy.device_cert_days)
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
        self._count_in(devices)
        self._offline = None

    def reclock(self, devices: npt.NDArray[np.int64], offset: float) -> None:
        """These devices' clocks now read ``offset`` days off: their states are re-keyed."""
        devices = devices[self.ids[devices] >= 0]
        if devices.size == 0:
            return
        unique, inverse = np.unique(self.ids[devices], return_inverse=True)
        states = cast(list[tuple[float, Hashable]], self.states.values)
        moved = np.array(
            [self.states.intern((offset, states[u][1])) for u in unique.tolist()], np.int32
        )
        self._count_in(devices, -1)
        self.ids[devices] = moved[inverse]
        self._count_in(devices)
        self._offline = None

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
        return padded_counts(self._held, known)

    def _count_in(self, devices: npt.NDArray[np.int64], sign: int = 1) -> None:
        """Add (or with -1 take away) these devices' states to the kept counts."""
        if self._held is None:
            return
        size = len(self.states.values)
        self._held = padded_counts(self._held, size) + sign * np.bincount(
            self.ids[devices], minlength=size
        )

    def _move_counts(
        self,
        unique: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int64],
        moved_to: npt.NDArray[np.int32],
        reverted: npt.NDArray[np.int64],
        position: npt.NDArray[np.int32],
    ) -> None:
        """Keep the devices-per-state counts as the week's contacts move states.

        Every online device in state ``unique[k]`` (``counts[k]`` of them) moved to
        ``moved_to[k]``, except the ``reverted`` devices (refused at their
        certificate's step), which keep their state; ``self.ids`` still holds the
        states from before. Counting the moves per state, not the fleet again,
        saves a pass over every device each week something changes.
        """
        if self._held is None:
            return
        held = padded_counts(self._held, len(self.states.values)).copy()
        moving = moved_to != unique
        np.subtract.at(held, unique[moving], counts[moving])
        np.add.at(held, moved_to[moving], counts[moving])
        if reverted.size:
            old = self.ids[reverted]
            went = moved_to[position[old]]
            back = went != old
            np.add.at(held, old[back], 1)
            np.subtract.at(held, went[back], 1)
        self._held = held

    def _offline_by(self, offline: npt.NDArray[np.int64], known: int) -> npt.NDArray[np.int64]:
        """How many offline devices hold each state id; the same offline set is counted once."""
        if self._offline is None or self._offline[0] is not offline:
            self._offline = (offline, np.bincount(self.ids[offline], minlength=known))
        return padded_counts(self._offline[1], known)

    def _by_class(self, devices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.bincount(self.fleet.population[devices], minlength=self.cut_now.size)

    def _set_status(self, devices: npt.NDArray[np.int64], status: npt.NDArray[np.int8]) -> None:
        """Change these devices' status, keeping the counts of those cut off and not OK."""
        before = self.status[devices]
        was, now = before == CUT_OFF, status == CUT_OFF
        self.cut_now += self._by_class(devices[now & ~was]) - self._by_class(devices[was & ~now])
        self.unsettled += int((status != OK).sum()) - int((before != OK).sum())
        self.status[devices] = status

    def step_for(self, situation: Situation) -> Step:
        """The home server's answer to a certificate in ``situation`` (one conversation each)."""
        if situation not in self._steps:
            self._steps[situation] = self.strategy.certificate_step(self.home, situation)
        return self._steps[situation]

    def _situations(self, devices: npt.NDArray[np.int64], tick: int) -> npt.NDArray[np.int64]:
        """Each device's certificate situation code (``situation_of`` reads it back)."""
        expiry = self.cert_expiry[devices]
        # The renewal time by the certificate's own dates (a distrusted one is due at once).
        renewing = expiry - (self.life_ticks - self.renew_ticks) <= tick
        phase = np.where(expiry <= tick, 2, np.where(renewing, 1, 0))
        return cast(npt.NDArray[np.int64], phase * 2 + self.distrusted[devices])

    def _per_state(
        self, ids: npt.NDArray[Any], answer: Callable[[Hashable], Any], dtype: Any
    ) -> npt.NDArray[Any]:
        unique, inverse = group_states(ids, len(self.states.values))
        values = np.array([answer(self.states.values[u]) for u in unique], dtype=dtype)
        return values[inverse]
