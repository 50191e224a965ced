"""The public-CA homing site: the operator's ACME ceremonies, week by week."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from homing import ceremonies
from homing.config import Validity
from homing.fleet.clock import DAYS_PER_YEAR, HOST, START, tick_time, year_tick
from homing.fleet.schedule import Schedule
from homing.fleet.simulated_cas import SimulatedCA
from homing.fleet.site_ops import copy_repository, pem_of, sign_release, sign_role
from homing.fleet.world_state import FirmwareRelease, HomingState, World
from homing.site import DataDir

__all__ = ["PublicSite", "WorldInProgress"]


class WorldInProgress(Protocol):
    """What the public site reads of the world being built (homing.fleet.world)."""

    world: World
    plan: Schedule
    workdir: Path
    public_ca: SimulatedCA
    public_next: SimulatedCA | None

    def release_due(self, tick: int) -> bool: ...


class PublicSite:
    """A second homing site whose server serves the public CA's chain (``homing acme``).

    The simulated operator runs the real ceremonies: ``acme_setup`` with the
    public roots and the server's first two keys, ``install_certificate`` for
    every chain the public CA issues (promoting the backup key when the
    server's key changes), ``set_public_roots`` when the public CA publishes
    a new root, and the same calendar as the private site (root a year
    before it expires, targets yearly, snapshot with every new certificate).
    """

    def __init__(self, builder: WorldInProgress, data: Path, root_years: float) -> None:
        from homing.ceremonies import acme

        self.builder = builder
        self.data = data
        self.served = 0  # how many public chains have been installed
        self.successor_published = False  # the public CA's new root, in the pin policy
        self.published_roots = [builder.public_ca.root]
        ceremonies.init(
            data,
            START,
            hosts=[HOST],
            validity=Validity(
                server=timedelta(days=builder.plan.leaf_days),
                root_ca=timedelta(days=root_years * DAYS_PER_YEAR),
            ),
        )
        dd = self.dd = DataDir(data)
        store = dd.keystore(dd.settings())
        # The server's keys are the world's keys: the public CA certifies them.
        store.store("server-acme-g1", builder.world.keys[0])
        store.store("server-acme-g2", builder.world.keys[1])
        acme.acme_setup(
            dd,
            START,
            directory="https://acme.example.invalid/directory",
            public_roots_pem=pem_of(builder.public_ca.root),
            identifiers=(HOST,),
        )
        self.renew_root_by = self._root_renewal()
        self.firmware: FirmwareRelease | None = None

    def _root_renewal(self) -> datetime:
        dd = self.dd
        return dd.repository(dd.settings()).root().signed.expires - timedelta(days=DAYS_PER_YEAR)

    def replay(self, now: datetime) -> Path:
        """The freshest metadata an attacker holding the stolen key can replay."""
        ceremonies.refresh_snapshot(self.dd, now)
        target = self.builder.workdir / "public-replay"
        copy_repository(self.data / "repository", target)
        return target

    def step(self, tick: int) -> None:
        """One week of the operator's site: lapses as the private site's, then the usual."""
        b, now = self.builder, tick_time(tick)
        if b.plan.frozen(tick):
            # The server's own certificate renewals go on; what changes the pins waits.
            self._install(now, frozen=True)
            return
        for role, _, _ in b.plan.lapse_ending(tick):
            sign_role(self.dd, role, now)
            self.renew_root_by = self._root_renewal()
        self._usual(tick)
        for role, start, _ in b.plan.lapse_starting(tick):
            sign_role(self.dd, role, now, until=tick_time(start))
            self._copy(tick)
            if role in ("timestamp", "snapshot"):
                b.world.homing_public_lapsed[len(b.world.homing_public_states) - 1] = tick_time(
                    start
                )

    def _copy(self, tick: int) -> None:
        world = self.builder.world
        index = len(world.homing_public_states)
        target = self.builder.workdir / "homing-public-states" / str(index)
        copy_repository(self.data / "repository", target)
        world.homing_public_states.append(HomingState(index, tick, target, self.firmware))

    def _usual(self, tick: int) -> None:
        from homing.ceremonies import acme

        b, now, world = self.builder, tick_time(tick), self.builder.world
        changed = b.plan.lapse_ending(tick) != []  # the trust metadata
        installed = False  # the served chain
        if (
            not self.successor_published
            and tick >= b.plan.public_successor
            and b.public_next is not None
        ):
            # At its tick, or at the end of a lapse that held the site back then: the
            # chains served meanwhile (under the roots already published) first, so the
            # one the server presents is current when the roots are checked against it.
            rotated, installed = self._install(now, frozen=False)
            roots = [cert for cert, _ in world.public_roots]
            acme.set_public_roots(self.dd, now, pem_of(*roots))
            self.published_roots = roots
            self.successor_published = changed = True
            changed = changed or rotated
        rotated, installed_now = self._install(now, frozen=False)
        changed, installed = changed or rotated, installed or installed_now
        if now >= self.renew_root_by:
            ceremonies.rotate_root(self.dd, now)
            self.renew_root_by = self._root_renewal()
            changed = True
        if tick > 0 and tick % year_tick(1.0) == 0 and not changed:
            ceremonies.refresh_targets(self.dd, now)
            changed = True
        if installed and not changed:
            # As the private site: fresh metadata with every certificate.
            ceremonies.refresh_snapshot(self.dd, now)
        if b.release_due(tick):
            self.firmware = sign_release(self.dd, b.workdir, self.firmware, now)
            changed = True
        if changed or installed:
            self._copy(tick)

    def _install(self, now: datetime, *, frozen: bool) -> tuple[bool, bool]:
        """Install the public CA's chains served since the last step: whether the pins
        changed (a key rotation, or the first chain) and whether any was installed."""
        from homing.ceremonies import acme

        world = self.builder.world
        changed = installed = False
        while self.served < len(world.public):
            chain = world.public[self.served]
            rotate = self.served > 0 and chain.key_index != world.public[self.served - 1].key_index
            if frozen and (rotate or self.served == 0):
                break  # it publishes pins: at the lapse's end
            top = (chain.intermediates or (chain.leaf,))[-1]
            if top.issuer not in {r.subject for r in self.published_roots}:
                break  # under a root the pin policy does not name yet
            acme.install_certificate(
                self.dd,
                now,
                pem_of(chain.leaf, *chain.intermediates),
                rotate_key=rotate,
                next_backup=world.keys[chain.key_index + 1] if rotate else None,
            )
            if self.served == 0:
                acme.set_tls_mode(self.dd, now, "public")
            changed = changed or rotate or self.served == 0
            self.served += 1
            installed = True
        return changed, installed

    def close(self) -> None:
        self.dd.close()
