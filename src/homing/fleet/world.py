"""The server side of a simulation: every certificate, key and trust document, for real.

Before a run, the world is built once: a public PKI (two roots, changing
intermediates), a baseline private PKI (a root with a finite life, rotating
issuing CAs), the server's TLS keys and leaf certificates on their renewal
schedule, firmware releases, and a real homing data directory driven
through homing's own ceremonies (issuing-CA rotations, root key rotations,
targets re-signing, the response to a stolen key), with a copy of the trust
metadata after every change. Devices are then judged against these real
artifacts; nothing here is a stand-in.

Time is counted in ticks from ``START``: a week, or the scenario's finer step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.config import Validity
from homing.fleet.clock import DAYS_PER_YEAR, HOST, START, tick_time, year_tick
from homing.fleet.public_site import PublicSite
from homing.fleet.scenario import Scenario
from homing.fleet.schedule import Schedule, announce
from homing.fleet.simulated_cas import Chain, SimulatedCA
from homing.fleet.site_ops import copy_repository, sign_release, sign_role
from homing.fleet.thefts import Thefts
from homing.fleet.world_state import (
    FIRMWARE_HARDWARE,
    Compromise,
    FirmwareRelease,
    HomingState,
    Release,
    World,
)
from homing.pki.keys import generate_tls_key
from homing.site import DataDir

__all__ = [
    "FIRMWARE_HARDWARE",
    "HOST",
    "START",
    "Chain",
    "Compromise",
    "FirmwareRelease",
    "HomingState",
    "Release",
    "World",
    "build_world",
    "tick_time",
]

log = logging.getLogger(__name__)


@contextmanager
def _quiet() -> Iterator[None]:
    """The homing ceremonies warn about plaintext development keys; here they are throwaway."""
    logger = logging.getLogger("homing.pki.keystore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_world(scenario: Scenario, workdir: Path, *, public_site: bool = True) -> World:
    """Build every artifact of the run under ``workdir`` (a scratch directory).

    ``public_site``: also run the homing site whose server certificate comes
    from the public CA (only the ``homing-public-ca`` strategy reads it).
    """
    with _quiet():
        return _Builder(scenario, workdir, public_site).build()


_PER_TICK = (
    "public_at",
    "private_at",
    "homing_at",
    "key_at",
    "release_at",
    "anchors_at",
    "homing_state_at",
    "homing_public_state_at",
)


class _Builder:
    """Walks the schedule week by week, making each event happen for real."""

    def __init__(self, scenario: Scenario, workdir: Path, public_site: bool = True) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.plan = Schedule.of(scenario)
        self.world = World(ticks=self.plan.ticks, keys=[generate_tls_key(), generate_tls_key()])
        self.key_index = 0
        self.firmware_key = 1
        ev = scenario.events
        self.public_ca = SimulatedCA(
            "Example Public Trust", 0, ev.public_root_expiry, backdate_years=6.0
        )
        self.world.public_roots.append((self.public_ca.root, 0))
        self.public_ca.new_issuing(0)
        self.public_next: SimulatedCA | None = None
        self.private_ca = SimulatedCA("Example Devices Inc", 0, ev.private_root_years)
        self.private_ca.new_issuing(0)
        self.private_next: SimulatedCA | None = None
        self.anchor_sets: dict[tuple[bytes, ...], int] = {}
        self.per_tick = {name: np.zeros(self.plan.ticks, np.int64) for name in _PER_TICK}
        self.data = workdir / "homing-data"
        # The X.509 root CA is made to outlive the run: homing has no ceremony
        # to replace it yet, so a fleet planned for longer than its default 20
        # years chooses a longer root at init, as this simulated company does.
        root_years = max(20.0, scenario.fleet.years + 1.0)
        ceremonies.init(
            self.data,
            START,
            hosts=[HOST],
            validity=Validity(
                server=timedelta(days=self.plan.leaf_days),
                root_ca=timedelta(days=root_years * DAYS_PER_YEAR),
            ),
        )
        # One handle on the site (and its database) for every ceremony of the run.
        self.dd = DataDir(self.data)
        self.renew_by = self._renewal_dates()
        # Scheduled ceremonies a lapse holds back until its end (_due).
        self.held_back: set[str] = set()
        self.homing_firmware: FirmwareRelease | None = None
        self.world.homing_root_ca.append(self.dd.certificate("root-ca.pem"))
        self._snapshot_homing(0)
        self.world.homing.append(self._homing_chain())
        self.public_site = (
            PublicSite(self, workdir / "homing-public-data", root_years) if public_site else None
        )
        self.thefts = Thefts(self)

    def build(self) -> World:
        for tick in range(self.plan.ticks):
            self._public_pki(tick)
            self._private_pki(tick)
            frozen = self.plan.frozen(tick)
            changed, renewed = self.thefts.step(tick)
            self._server_key(tick)
            changed_too, renewed_too = self._homing_ceremonies(tick, changed, renewed, frozen)
            changed_too |= self._firmware_key(tick, frozen)
            changed_too |= self._homing_release(tick, frozen)
            renewed_leaf = self._renew_leaves(tick, renewed or renewed_too)
            if renewed_leaf and not (changed or changed_too or frozen):
                # The server re-signs snapshot and timestamp on its own; a copy per
                # certificate means a device's refresh always meets the chain it
                # would meet in that period, with fresh metadata.
                ceremonies.refresh_snapshot(self.dd, tick_time(tick))
                changed_too = True
            if (changed or changed_too) and not frozen:
                self._snapshot_homing(tick)
            self._lapses(tick)
            if self.public_site is not None:
                self.public_site.step(tick)
            self._release(tick)
            self._record(tick)
        world = self.world
        for name, values in self.per_tick.items():
            setattr(world, name, values)
        response = self.plan.key_response
        world.compromise_tick = (
            response if response is not None and response < world.ticks else None
        )
        world.lapse_open_at_end = any(end >= self.plan.ticks for _, _, end in self.plan.lapses)
        announce(world, self.plan, self.scenario.server.announce_days)
        self.dd.close()
        if self.public_site is not None:
            self.public_site.close()
        return world

    # -- the public and the baseline private PKI ---------------------------------

    def _public_pki(self, tick: int) -> None:
        plan, events = self.plan, self.world.events
        if tick == plan.public_successor and self.public_next is None:
            # Successor roots outlive the run (each real one is followed by another).
            lifetime = max(25.0, self.scenario.fleet.years + 1.0)
            self.public_next = SimulatedCA("Example Public Trust G2", tick, lifetime)
            self.world.public_roots.append((self.public_next.root, tick))
            self.public_next.new_issuing(tick)
            events.append((tick, "public CA publishes a new root"))
        if tick == plan.public_expiry and self.public_next is not None:
            self.public_ca = self.public_next
            events.append((tick, "old public root expires; chains move to the new root"))
        elif tick in plan.intermediate_changes:
            self.public_ca.new_issuing(tick)
            events.append((tick, "public CA replaces its intermediate"))

    def _private_pki(self, tick: int) -> None:
        plan, events = self.plan, self.world.events
        if tick == plan.private_successor and self.private_next is None and tick > 0:
            lifetime = max(20.0, self.scenario.fleet.years + 1.0)
            self.private_next = SimulatedCA("Example Devices Inc G2", tick, lifetime)
            self.private_next.new_issuing(tick)
            events.append((tick, "company makes a successor private root"))
        if tick == plan.private_expiry and self.private_next is not None:
            self.private_ca = self.private_next
            events.append((tick, "private root expires; server moves to its successor"))
        elif tick in plan.ca_rotations:
            self.private_ca.new_issuing(tick)

    # -- the server's key and homing's ceremonies --------------------------------

    def _server_key(self, tick: int) -> None:
        if tick not in self.plan.key_changes:
            return
        self.key_index += 1
        self.world.keys.append(generate_tls_key())  # the next key, announced from now on
        if self.plan.emergency(tick, "server-key"):
            self.world.events.append(
                (tick, "server TLS key replaced at once (emergency, unannounced)")
            )
        elif tick != self.plan.key_response:
            self.world.events.append((tick, "server TLS key rotated to the pre-announced backup"))

    def _due(self, what: str, scheduled: bool, frozen: bool) -> bool:
        """Whether a scheduled ceremony of homing's operator happens now.

        During a lapse the operator's site publishes nothing, so a ceremony
        scheduled then is held back and happens at the lapse's end, never dropped.
        """
        if frozen:
            if scheduled:
                self.held_back.add(what)
            return False
        if what in self.held_back:
            self.held_back.discard(what)
            return True
        return scheduled

    def _homing_ceremonies(
        self, tick: int, changed: bool, renewed: bool, frozen: bool
    ) -> tuple[bool, bool]:
        """Returns whether homing's metadata changed and whether its leaf was renewed."""
        plan, now, events = self.plan, tick_time(tick), self.world.events
        held = {"issuing CA", "root", "root CA"} & self.held_back
        rotate_ca = self._due("issuing CA", tick in plan.ca_rotations, frozen)
        rotate_root = self._due("root", tick in plan.root_rotations, frozen)
        rotate_root_ca = self._due("root CA", tick in plan.root_ca_rotations, frozen)
        if frozen:
            return False, False
        late = " (held back by the lapse)"
        sudden = " (emergency, unannounced)"
        renewed_device_ca = False
        if rotate_ca and not renewed:
            ceremonies.rotate_issuing_ca(self.dd, "server", now)
            changed = renewed = True
            events.append(
                (tick, "issuing CA rotated (homing promotes its backup key)"
                 + (late if "issuing CA" in held else "")
                 + (sudden if plan.emergency(tick, "server-ca") else ""))
            )  # fmt: skip
        if rotate_root:
            ceremonies.rotate_root(self.dd, now)
            changed = True
            events.append(
                (tick, "homing root keys rotated (root N+1 signed by N)"
                 + (late if "root" in held else "")
                 + (sudden if plan.emergency(tick, "root") else ""))
            )  # fmt: skip
        if rotate_root_ca:
            # A new X.509 root beside the old: the server presents its CA certified by
            # both, devices learn the new root from the pin policy (the real ceremony).
            ceremonies.rotate_root_ca(self.dd, now)
            self.world.homing_root_ca.append(self.dd.certificate("root-ca.pem"))
            changed = renewed = True
            events.append(
                (tick, "homing's X.509 root CA replaced (a new root beside the old)"
                 + (late if "root CA" in held else ""))
            )  # fmt: skip
        # The operator's calendar: whatever would expire within a year is
        # renewed now, exactly as docs/ceremonies.md asks of a real operator.
        if now >= self.renew_by["root"]:
            ceremonies.rotate_root(self.dd, now)
            changed = True
            events.append((tick, "homing root renewed before it expires"))
        if now >= self.renew_by["server-ca"] and not renewed:
            ceremonies.rotate_issuing_ca(self.dd, "server", now)
            changed = renewed = True
            events.append((tick, "issuing CA rotated before it expires"))
        if now >= self.renew_by["device-ca"]:
            ceremonies.rotate_issuing_ca(self.dd, "device", now)
            renewed_device_ca = True
        if tick > 0 and tick % year_tick(1.0) == 0 and not changed:
            ceremonies.refresh_targets(self.dd, now)  # targets live two years
            changed = True
        if changed or renewed or renewed_device_ca:
            self.renew_by = self._renewal_dates()
        return changed, renewed

    def _renewal_dates(self) -> dict[str, datetime]:
        """When the TUF root and each issuing CA must be renewed: a year before they expire."""
        dd = self.dd
        margin = timedelta(days=DAYS_PER_YEAR)
        root = dd.repository(dd.settings()).root().signed.expires
        return {
            "root": root - margin,
            "server-ca": dd.certificate("server-ca.pem").not_valid_after_utc - margin,
            "device-ca": dd.certificate("device-ca.pem").not_valid_after_utc - margin,
        }

    def _renew_leaves(self, tick: int, homing_renewed: bool) -> bool:
        """Returns whether the server's certificates were renewed this tick."""
        if tick not in self.plan.renewals:
            if homing_renewed:
                # An unscheduled CA rotation re-issued homing's leaf: serve it.
                self.world.homing.append(self._homing_chain())
            return homing_renewed
        key, days = self.world.keys[self.key_index], self.plan.leaf_days
        self.world.public.append(self.public_ca.chain(key, self.key_index, tick, days))
        self.world.private.append(self.private_ca.chain(key, self.key_index, tick, days))
        if not homing_renewed:
            ceremonies.rotate_server_cert(self.dd, tick_time(tick))
        self.world.homing.append(self._homing_chain())
        return True

    def _homing_chain(self) -> Chain:
        pem = (self.data / "pki" / "server-chain.pem").read_bytes()
        certs = x509.load_pem_x509_certificates(pem)
        return Chain(certs[0], tuple(certs[1:]), self.key_index)

    def _snapshot_homing(self, tick: int) -> None:
        index = len(self.world.homing_states)
        target = self.workdir / "homing-states" / str(index)
        copy_repository(self.data / "repository", target)
        self.world.homing_states.append(HomingState(index, tick, target, self.homing_firmware))

    # -- an operator's lapse, a stolen device CA, the firmware key ------------------

    def _lapses(self, tick: int) -> None:
        """A role signed to expire at the next tick and left so; re-signed when the lapse ends."""
        for role, start, _ in self.plan.lapse_starting(tick):
            sign_role(self.dd, role, tick_time(tick), until=tick_time(start))
            self._snapshot_homing(tick)
            if role in ("timestamp", "snapshot"):
                self.world.homing_lapsed[len(self.world.homing_states) - 1] = tick_time(start)
            self.world.events.append((start, f"the operator lets the {role} metadata lapse"))
        for role, _, _ in self.plan.lapse_ending(tick):
            sign_role(self.dd, role, tick_time(tick))
            self.renew_by = self._renewal_dates()
            self._snapshot_homing(tick)
            self.world.events.append((tick, f"the {role} metadata is re-signed"))

    def _firmware_key(self, tick: int, frozen: bool) -> bool:
        """A new firmware key: homing re-delegates in TUF; firmware-carried keys need an overlap."""
        scheduled = any(start == tick for start, _ in self.plan.firmware_rotations)
        if scheduled:
            self.firmware_key += 1
            self.world.events.append((tick, "firmware signing key rotated"))
        if not self._due("firmware key", scheduled, frozen):
            return False
        ceremonies.rotate_firmware_key(self.dd, tick_time(tick))
        return True

    # -- firmware and the per-tick record --------------------------------------

    def _signed_by(self, tick: int) -> frozenset[int]:
        """Firmware key generations that sign a release made at ``tick``."""
        keys = {self.firmware_key}
        for start, retire in self.plan.firmware_rotations:
            if start <= tick < retire:
                keys.add(self.firmware_key - 1)
        return frozenset(keys)

    def release_due(self, tick: int) -> bool:
        rotation = any(start == tick for start, _ in self.plan.firmware_rotations)
        return not (tick % self.plan.release_ticks) or tick == self.plan.key_response or rotation

    def _homing_release(self, tick: int, frozen: bool) -> bool:
        """homing's operator signs the release into the firmware role (the real ceremony)."""
        if frozen or not self.release_due(tick):
            return False
        self.homing_firmware = sign_release(
            self.dd, self.workdir, self.homing_firmware, tick_time(tick)
        )
        return True

    def _release(self, tick: int) -> None:
        if not self.release_due(tick):
            return
        now, world = tick_time(tick), self.world
        roots = tuple(
            cert
            for cert, since in world.public_roots
            if since <= tick and cert.not_valid_after_utc > now
        )
        pins = frozenset({world.key_pin(self.key_index), world.key_pin(self.key_index + 1)})
        world.releases.append(Release(tick, roots, pins, self.firmware_key, self._signed_by(tick)))

    def _anchors(self, *certs: x509.Certificate) -> int:
        """The index of this set of trust anchors, interned."""
        key = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
        if key not in self.anchor_sets:
            self.anchor_sets[key] = len(self.world.private_anchor_sets)
            self.world.private_anchor_sets.append(certs)
        return self.anchor_sets[key]

    def _record(self, tick: int) -> None:
        world, at = self.world, self.per_tick
        at["public_at"][tick] = len(world.public) - 1
        at["private_at"][tick] = len(world.private) - 1
        at["homing_at"][tick] = len(world.homing) - 1
        at["key_at"][tick] = self.key_index
        at["release_at"][tick] = len(world.releases) - 1
        at["homing_state_at"][tick] = len(world.homing_states) - 1
        at["homing_public_state_at"][tick] = len(world.homing_public_states) - 1
        if self.scenario.policy.private_ca_pins == "root":
            # The factory ships every private root that is in use or about to be.
            shipped = [self.private_ca.root]
            if self.private_next is not None and self.private_next is not self.private_ca:
                shipped.append(self.private_next.root)
            at["anchors_at"][tick] = self._anchors(*shipped)
        else:
            assert self.private_ca.authority is not None
            at["anchors_at"][tick] = self._anchors(self.private_ca.authority.certificate)
