"""Stolen keys and the operator's answer, in the world being built (homing.fleet.world).

A theft happens at one tick and is answered at another: the same tick unless
the scenario gives the operator a response delay (``[compromise]``). At the
theft the attacker takes the chain in service (or mints one under a stolen
CA key); at the answer the operator rotates, and until then the home keeps
signing with the stolen key still pinned, so the freshest metadata an
attacker can replay is the last signed before the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from homing import ceremonies
from homing.fleet.clock import days_per_tick, tick_time
from homing.fleet.public_site import PublicSite
from homing.fleet.schedule import Schedule
from homing.fleet.simulated_cas import SimulatedCA
from homing.fleet.site_ops import copy_repository
from homing.fleet.world_state import Compromise, World
from homing.pki.keys import generate_tls_key
from homing.site import DataDir

__all__ = ["Thefts"]

# Days a certificate minted under a stolen CA key is valid.
_MINTED_DAYS = 10 * 365


class WorldInProgress(Protocol):
    """What a theft reads and changes of the world being built."""

    world: World
    plan: Schedule
    workdir: Path
    data: Path
    dd: DataDir
    private_ca: SimulatedCA
    public_site: PublicSite | None


class Thefts:
    """Each tick's thefts and answers; ``step`` says whether homing's site changed."""

    def __init__(self, builder: WorldInProgress) -> None:
        self.builder = builder
        # Thefts not yet answered: the tick each is answered at.
        self._pending: dict[int, list[tuple[Compromise, str]]] = {}

    def step(self, tick: int) -> tuple[bool, bool]:
        """This tick's thefts and answers: (homing's metadata changed, its leaf renewed)."""
        plan = self.builder.plan
        if tick == plan.compromise:
            self._steal_key(tick)
        for stolen_at, answer_at in plan.server_ca_compromises:
            if tick == stolen_at:
                self._steal_server_ca(tick, answer_at)
        answered = False
        last = tick == plan.ticks - 1
        for due in sorted(t for t in self._pending if t <= tick or last):
            for c, kind in self._pending.pop(due):
                self._answer(tick, c, kind, rotate=due <= tick)
                answered = answered or due <= tick
        self._device_ca(tick)
        return answered, answered

    def _steal_key(self, tick: int) -> None:
        """The server's TLS key in service is stolen, with the chains it serves."""
        b = self.builder
        world, answer_at = b.world, b.plan.key_response
        assert answer_at is not None
        stolen = {
            "public": world.public[-1],
            "private": world.private[-1],
            "homing": world.homing[-1],
            "homing-public": world.public[-1],
        }
        c = Compromise("server TLS key", tick, stolen, {})
        world.compromises.append(c)
        self._pending.setdefault(answer_at, []).append((c, "key"))
        if answer_at != tick:
            world.events.append((tick, "the server's TLS key is stolen; nobody notices yet"))

    def _steal_server_ca(self, tick: int, answer_at: int) -> None:
        """A server-issuing CA's key is stolen: the attacker mints a certificate for home.

        homing's answer promotes its server CA backup and publishes pins without
        the stolen CA; the baseline company replaces its private issuing CA. The
        public strategies do not trust the company's CAs.
        """
        b = self.builder
        attacker = generate_tls_key()
        settings = b.dd.settings()
        homing_ca = SimulatedCA.around(
            b.dd.certificate("server-ca.pem"),
            b.dd.keystore(settings).load(f"server-ca-g{settings.server_ca_generation}"),
        )
        stolen = {
            "homing": homing_ca.chain(attacker, -1, tick, _MINTED_DAYS),
            "private": b.private_ca.chain(attacker, -1, tick, _MINTED_DAYS),
        }
        c = Compromise("server CA key", tick, stolen, {})
        b.world.compromises.append(c)
        self._pending.setdefault(answer_at, []).append((c, "server CA"))
        if answer_at != tick:
            b.world.events.append((tick, "a server-issuing CA's key is stolen; nobody notices yet"))

    def _answer(self, tick: int, c: Compromise, kind: str, rotate: bool) -> None:
        """The freshest metadata the attacker holds, then (``rotate``) the operator's rotation.

        A theft the run ends before answering leaves the attacker the run's
        last metadata, and nothing rotated.
        """
        b = self.builder
        now = tick_time(tick)
        # What the server re-signs on its own (snapshot weekly, timestamp daily).
        ceremonies.refresh_snapshot(b.dd, now)
        target = b.workdir / f"replay-{kind.replace(' ', '-')}-{c.tick}"
        copy_repository(b.data / "repository", target)
        c.replay["homing"] = target
        if kind == "key" and b.public_site is not None:
            c.replay["homing-public"] = b.public_site.replay(now)
        if not rotate:
            return
        ceremonies.rotate_issuing_ca(b.dd, "server", now)
        late = tick - c.tick
        after = f" ({late * days_per_tick()} days after the theft)" if late else ""
        if kind == "key":
            b.world.events.append(
                (tick, f"the server's TLS key is stolen; keys and CAs rotate{after}")
            )
        else:
            b.private_ca.new_issuing(tick)
            b.world.events.append(
                (tick, f"a server-issuing CA's key is stolen; the CAs rotate{after}")
            )

    def _device_ca(self, tick: int) -> None:
        """The device CA's stolen key is answered: homing promotes its backup, distrusts
        the old; or an emergency device-CA rotation (nothing distrusted)."""
        b = self.builder
        if tick in b.plan.device_ca_rotations:
            ceremonies.rotate_issuing_ca(b.dd, "device", tick_time(tick))
            b.world.events.append((tick, "device CA replaced at once (emergency, nothing stolen)"))
        if tick not in b.plan.device_ca_compromises:
            return
        ceremonies.rotate_issuing_ca(b.dd, "device", tick_time(tick), compromised=True)
        b.world.device_ca_distrusted = (*b.world.device_ca_distrusted, tick)
        b.world.events.append(
            (tick, "the device CA's key is stolen: its certificates are distrusted")
        )
