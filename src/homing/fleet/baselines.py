"""The six ways of pinning that homing is compared with, each with its real check."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import datetime, timedelta

from homing.fleet.clock import days_per_tick
from homing.fleet.strategy_base import (
    CUT_OFF,
    MANUAL,
    OK,
    ZERO,
    Cause,
    Contact,
    Strategy,
    _chain_valid,
)
from homing.fleet.world import Compromise, tick_time
from homing.pki.keys import spki_pin

__all__ = ["HPKP", "AnnounceNext", "FirmwarePins", "LeafFingerprint", "PrivateCA", "PublicCA"]


class LeafFingerprint(Strategy):
    name = "leaf-fingerprint"
    summary = "the server certificate's fingerprint, stored at assembly"
    reason = Cause.FINGERPRINT_CHANGED

    def factory(self, tick: int) -> Hashable:
        return int(self.world.public_at[tick])

    def _fingerprint(self, index: int) -> str:
        return self.world.public[index].fingerprint

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, int)
        presented = self.world.public[int(self.world.public_at[tick])]
        if presented.fingerprint == self._fingerprint(state):
            return Contact(state, OK, 1)
        return Contact(state, CUT_OFF, 1, self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, int)
        stolen = c.stolen.get("public")
        return stolen is not None and stolen.fingerprint == self._fingerprint(state)

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        return []  # a stored fingerprint never expires


class AnnounceNext(Strategy):
    name = "announce-next"
    summary = "the server announces the next fingerprint and when it becomes valid"
    reason = Cause.MISSED_ANNOUNCEMENT
    emergency = Cause.UNANNOUNCED_RENEWAL

    def factory(self, tick: int) -> Hashable:
        w = self.world
        return (int(w.public_at[tick]), int(w.announce_at[tick]), int(w.announce_from[tick]))

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, tuple)
        pinned, upcoming, valid_from = state
        w = self.world
        presented = w.public[int(w.public_at[tick])].fingerprint
        accepted = presented == w.public[pinned].fingerprint or (
            upcoming >= 0 and tick >= valid_from and presented == w.public[upcoming].fingerprint
        )
        if not accepted:
            stolen = w.compromise_tick
            if stolen is not None and pinned == int(w.public_at[stolen - 1]) and tick >= stolen:
                return Contact(state, CUT_OFF, 1, self.emergency)
            return Contact(state, CUT_OFF, 1, self.reason)
        if upcoming >= 0 and tick >= valid_from:
            pinned, upcoming, valid_from = upcoming, -1, -1
        if w.announce_at[tick] >= 0:
            upcoming, valid_from = int(w.announce_at[tick]), int(w.announce_from[tick])
        return Contact((pinned, upcoming, valid_from), OK, 1)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, tuple)
        chain = c.stolen.get("public")
        if chain is None:
            return False
        return any(
            i >= 0 and self.world.public[i].fingerprint == chain.fingerprint for i in state[:2]
        )

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        return []


class PublicCA(Strategy):
    name = "public-ca"
    summary = "a public CA bundle shipped in firmware, updated with firmware"
    reason = Cause.PUBLIC_ROOT_GONE

    def factory(self, tick: int) -> Hashable:
        return int(self.world.release_at[tick])

    def _public_ok(self, release: int, tick: int, skew: timedelta = ZERO) -> bool:
        w = self.world
        chain = w.public[int(w.public_at[tick])]
        return self._validates(
            ("release", release),
            w.releases[release].public_roots,
            chain,
            "public",
            tick_time(tick) + skew,
        )

    def _refused(self, release: int, tick: int, skew: timedelta, cause: Cause) -> Cause:
        """Why the public chain was refused: the clock, stale firmware, or the strategy's own."""
        if skew and self._public_ok(release, tick):
            return Cause.CLOCK_WRONG
        if not self.world.can_install(release, int(self.world.release_at[tick])):
            return Cause.FIRMWARE_KEY_RETIRED
        return cause

    def _update(self, release: int, tick: int) -> tuple[int, int]:
        """Take the newest firmware (its trust bundle) over the working connection.

        Only firmware signed by a key the installed firmware knows can be
        installed; after a firmware key is retired, a device that missed the
        overlap keeps what it has.
        """
        newest = int(self.world.release_at[tick])
        if newest == release or not self.world.can_install(release, newest):
            return release, 1
        return newest, 2

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, int)
        if not self._public_ok(state, tick, skew):
            return Contact(state, CUT_OFF, 1, self._refused(state, tick, skew, self.reason))
        release, requests = self._update(state, tick)
        return Contact(release, OK, requests)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, int)
        stolen = c.stolen.get("public")
        roots = self.world.releases[state].public_roots
        return stolen is not None and _chain_valid(stolen, roots, moment)


class HPKP(PublicCA):
    name = "hpkp"
    summary = "SPKI pins with a backup pin and max-age, falling back to the public PKI"
    pin_reason = Cause.PINNED_KEYS_REPLACED

    def factory(self, tick: int) -> Hashable:
        return (int(self.world.release_at[tick]), -1, 0)

    def _pins(self, key_index: int) -> set[str]:
        return {self.world.key_pin(key_index), self.world.key_pin(key_index + 1)}

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, tuple)
        release, pinned_key, until = state
        w = self.world
        if not self._public_ok(release, tick, skew):
            return Contact(state, CUT_OFF, 1, self._refused(release, tick, skew, self.reason))
        chain = w.public[int(w.public_at[tick])]
        if tick < until and spki_pin(chain.leaf) not in self._pins(pinned_key):
            return Contact(state, CUT_OFF, 1, self.pin_reason)
        release, requests = self._update(release, tick)
        max_age = max(1, round(self.scenario.policy.hpkp_max_age_days / days_per_tick()))
        return Contact((release, int(w.key_at[tick]), tick + max_age), OK, requests)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, tuple)
        release, pinned_key, until = state
        stolen = c.stolen.get("public")
        if stolen is None:
            return False
        if not _chain_valid(stolen, self.world.releases[release].public_roots, moment):
            return False
        active = moment < tick_time(until)
        return not active or spki_pin(stolen.leaf) in self._pins(pinned_key)

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        assert isinstance(state, tuple)
        return sorted([*super()._exposure_candidates(state, c), tick_time(state[2])])


class PrivateCA(Strategy):
    name = "private-ca"
    summary = "a private CA certificate pinned at assembly"

    @property
    def reason(self) -> Cause:
        if self.scenario.policy.private_ca_pins == "issuing":
            return Cause.PINNED_ISSUING_CA_REPLACED
        return Cause.PRIVATE_ROOT_GONE

    def factory(self, tick: int) -> Hashable:
        return int(self.world.anchors_at[tick])

    def _private_ok(self, state: int, tick: int, skew: timedelta = ZERO) -> bool:
        w = self.world
        chain = w.private[int(w.private_at[tick])]
        anchors = w.private_anchor_sets[state]
        return self._validates(
            ("anchors", state), anchors, chain, "private", tick_time(tick) + skew
        )

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, int)
        if self._private_ok(state, tick, skew):
            return Contact(state, OK, 1)
        clock = skew and self._private_ok(state, tick)
        return Contact(state, CUT_OFF, 1, Cause.CLOCK_WRONG if clock else self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, int)
        stolen = c.stolen.get("private")
        anchors = self.world.private_anchor_sets[state]
        return stolen is not None and _chain_valid(stolen, anchors, moment)


class FirmwarePins(Strategy):
    name = "firmware-pins"
    summary = "key pins (current and next) shipped in signed firmware updates"
    reason = Cause.MISSED_FIRMWARE_PINS
    manual_path = True

    def factory(self, tick: int) -> Hashable:
        return int(self.world.release_at[tick])

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, int)
        w = self.world
        chain = w.public[int(w.public_at[tick])]
        newest = int(w.release_at[tick])
        if spki_pin(chain.leaf) in w.releases[state].key_pins:
            if not w.can_install(state, newest):
                return Contact(state, OK, 1)  # the update is refused: its key is unknown here
            return Contact(newest, OK, 1 + (newest != state))
        # The update channel rides on the same pins: only a hand can install it.
        stale = not w.can_install(state, newest)
        return Contact(newest, MANUAL, 0, Cause.FIRMWARE_KEY_RETIRED if stale else self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, int)
        stolen = c.stolen.get("public")
        return stolen is not None and spki_pin(stolen.leaf) in self.world.releases[state].key_pins

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        return []  # a pinned key does not expire
