"""One strategy's devices through the run, week by week (homing.fleet.simulate drives it)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from datetime import timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from homing.errors import HomingError
from homing.fleet.clock import days_per_tick
from homing.fleet.device_table import (
    Answers,
    DeviceTable,
    RunEvents,
    Week,
    group_states,
    situation_of,
)
from homing.fleet.population import Fleet
from homing.fleet.results import CAUSE_CODES, CAUSES, LAPSE_CAUSE_CODES, finite_or_none
from homing.fleet.scenario import CompromiseResponse
from homing.fleet.strategies import (
    CAUGHT_UP,
    CUT_OFF,
    MANUAL,
    NEVER,
    OK,
    REFUSED,
    Cause,
)
from homing.fleet.world import Compromise, tick_time

__all__ = ["StrategyRun"]


class StrategyRun(DeviceTable):
    """One strategy's devices through the run.

    A device's interned state is (its clock's offset in days, the strategy's
    state): devices whose clocks are off meet the server on their own terms.
    Each week touches every online device a few times only (its state, its
    outcome, its status); certificate rules run on the devices past their
    renewal time, and the devices cut off are counted per class as their
    status changes, not by scanning the fleet.
    """

    def start_exposure(self, deployed: npt.NDArray[np.int64], c: Compromise) -> None:
        until = self.strategy.exposed_until
        ends = self._per_state(
            self.ids[deployed], self._skewed(lambda state, skew: until(state, skew, c)), np.float64
        )
        self.exposure_end[c.what] = np.full(self.ids.size, -math.inf)
        self.exposure_end[c.what][deployed] = ends
        # Device numbers fit 32 bits (at most ten million devices): half the memory.
        self._watch[c.what] = deployed[ends > c.tick * days_per_tick()].astype(np.int32)

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
        unique, inverse = group_states(after, len(self.states.values) + 1)
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

    def refuse(self, revoked: npt.NDArray[np.int64], tick: int) -> None:
        """Revoked devices reach home and are refused, by design: not cut off, never back."""
        codes = self._situations(revoked, tick)
        for code, count in zip(*np.unique(codes, return_counts=True), strict=True):
            step = self.step_for(situation_of(int(code), revoked=True))
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
        code_of = np.array([-1 if c is None else CAUSE_CODES[c] for c in causes], np.int8)
        self.last_cause[devices] = code_of[position[self.ids[devices]]]
        if reason_at:
            # A certificate refused at home: its own cause, not the trust contact's.
            refused = np.fromiter(reason_at.keys(), np.int64, len(reason_at))
            cause_at = np.fromiter(reason_at.values(), np.int64, len(reason_at))
            mine = np.isin(refused, devices)
            self.last_cause[refused[mine]] = code_of[cause_at[mine]]

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
            present, where = np.unique(codes, return_inverse=True)
            answered = np.array(
                [self.step_for(situation_of(int(c))).outcome is not CUT_OFF for c in present],
                np.bool_,
            )
            back[np.flatnonzero(due)] = answered[where]
        return back

    def count_cut_off(self) -> int:
        """Add this week's device-days cut off, per device class; returns the devices cut off."""
        self.cut_days += self.cut_now * days_per_tick()
        return int(self.cut_now.sum())

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
        reverted = np.zeros(0, np.int64)
        due = np.zeros(0, np.int64)
        if self.next_due <= tick:
            due = np.flatnonzero((self.renew_at <= tick) & online)
        if due.size:
            due_out = out[due] if out is not None else np.zeros(due.size, np.int8)
            connected = due_out != CUT_OFF
            caught = due_out == CAUGHT_UP
            codes = self._situations(due, tick)
            # The home server's answer per situation, as tables over situation codes.
            answer = Answers(
                [self.step_for(situation_of(int(c))) for c in np.unique(codes[connected])],
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
                reverted = gone
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
        r.returned_days.extend(((tick - self.cut_since[back]) * days_per_tick()).tolist())
        if manual.size:
            r.manual_recovery_events += int(manual.size)
            # Cut off until the hand came: that many days, in the device's class.
            self.cut_days += self._by_class(manual) * manual_days
            self.ever_manual[manual] = True
            r.returned_days.extend([float(manual_days)] * int(manual.size))
        self._set_status(changed, out_changed)
        if new is not None:
            self._move_counts(unique, counts, new_u, reverted, position)
            self.ids = new
            self._offline = None  # the offline devices' states are counted again

    def step(self, w: Week, events: RunEvents) -> None:
        """This strategy's devices through one week."""
        if w.assembled.size:
            self.assemble(w.assembled, w.tick)
        for devices, offset in w.clock_changes:
            self.reclock(devices, offset)
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
        self._watch[c.what] = self._watch[c.what][
            ends[self._watch[c.what]] > tick * days_per_tick()
        ]
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
        ends[stop] = np.minimum(ends[stop], tick * days_per_tick())

    def finish(
        self,
        fleet: Fleet,
        compromises: Sequence[Compromise],
        run_days: float,
        last_tick: int,
        lapse_open_at_end: bool = False,
        response: CompromiseResponse | None = None,
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
            figures = exposure_figures(self.exposure_end[c.what], fleet, c, run_days, response)
            r.exposures[c.what] = figures
            if c.what == "server TLS key":
                r.exposed_devices = figures["exposed_devices"]
                r.exposure_device_days = figures["exposed_device_days"]
                longest = figures["longest_exposure_days"]
                r.exposure_max_days = math.inf if longest is None else longest


def exposure_figures(
    until: npt.NDArray[np.float64],
    fleet: Fleet,
    c: Compromise,
    run_days: float,
    response: CompromiseResponse | None,
) -> dict[str, Any]:
    """Who accepted theft ``c``'s key, and for how long, among the devices it reached.

    ``until``: the day each device would stop accepting it. The attacker sits in
    front of ``response.intercepted_share`` of the fleet (drawn from the seed,
    one draw per theft) for ``response.intercept_days`` after the theft.
    """
    response = response or CompromiseResponse()
    start = c.tick * days_per_tick()
    window_end = start + response.intercept_days
    ends = np.minimum(np.minimum(np.minimum(until, fleet.ends), run_days), window_end)
    exposure = np.clip(ends - start, 0.0, None)
    if response.intercepted_share < 1.0:
        draw = np.random.default_rng([fleet.seed, 3, c.tick]).random(exposure.size)
        exposure[draw >= response.intercepted_share] = 0.0
    longest = float(exposure.max()) if exposure.size else 0.0
    never = (until == NEVER) & (fleet.ends > run_days) & (exposure > 0)
    if never.any() and math.isinf(window_end):
        longest = math.inf
    return {
        "day": start,
        "exposed_devices": int((exposure > 0).sum()),
        "exposed_device_days": round(float(exposure.sum()), 2),
        "longest_exposure_days": finite_or_none(longest),
        "intercepted_share": response.intercepted_share,
        "intercept_days": finite_or_none(response.intercept_days),
    }
