"""homing as a strategy: the agent's own trust refresh and pinned rule over a simulated network."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from homing.agent.agent import Agent, CycleReport
from homing.agent.decide import TrustChannel
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.installer import SlotInstaller
from homing.agent.state import DeviceConfig, DeviceState
from homing.agent.transport import verify_pinned_chain
from homing.errors import ChainError, MetadataError, TransportError
from homing.fleet.home import SimulatedHome, SimulatedNetwork, take_update
from homing.fleet.scenario import Scenario
from homing.fleet.strategy_base import (
    CAUGHT_UP,
    CUT_OFF,
    OK,
    ZERO,
    Cause,
    Contact,
    Home,
    Situation,
    Step,
    Strategy,
    days,
)
from homing.fleet.world import (
    FIRMWARE_HARDWARE,
    HOST,
    START,
    Chain,
    Compromise,
    HomingState,
    World,
    tick_time,
)
from homing.fsutil import atomic_write
from homing.pki.keys import generate_tls_key
from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
from homing.trust.pins import PinPolicy

__all__ = ["Homing", "HomingPublicCA"]


# -- homing --------------------------------------------------------------------


class _CountingFetcher(DirectoryFetcher):
    """The file fetcher, counting what a device would have requested from the server."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests += 1
        return super()._fetch(url)


@dataclass(frozen=True)
class _Walk:
    trust: TrustState | None
    requests: int
    walk_ms: float
    error: str = ""
    pinned: bool = True


class Homing(Strategy):
    """Pins in signed TUF metadata; catch-up over the bootstrap channel; key-proof recovery."""

    name = "homing"
    summary = "pins inside signed TUF metadata, walked forward root by root"
    recovers_expired_certificate = True
    takes_firmware = True

    def __init__(self, world: World, scenario: Scenario) -> None:
        super().__init__(world, scenario)
        self.device_cert_days = scenario.policy.homing_device_cert_days
        self._scratch = Path(tempfile.mkdtemp(prefix="homing-sim-"))
        self._device_dirs: dict[int, Path] = {}
        self._walks: dict[Hashable, _Walk] = {}
        self._versions: dict[int, tuple[int, int]] = {}
        self._pins: dict[int, PinPolicy] = {}
        self._device_states: dict[int, Path] = {}
        self._expiries: dict[int, tuple[datetime, datetime]] = {}
        self._replay_expires: dict[str, datetime] = {}
        self._updates: dict[tuple[int, int], Step] = {}

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    # -- the site this strategy's devices trust (overridden by the public-CA variant)

    def _states(self) -> list[HomingState]:
        return self.world.homing_states

    def _state_at(self, tick: int) -> int:
        return int(self.world.homing_state_at[tick])

    def _served(self, tick: int) -> Chain:
        """The chain the server presents at ``tick``."""
        return self.world.homing[int(self.world.homing_at[tick])]

    # The name this site's devices go by in a theft's chains and replays.
    family = "homing"

    def _state(self, index: int) -> HomingState:
        return self._states()[index]

    def _refresh(
        self, held: Path | None, source: Path, moment: datetime, bootstrap: bytes | None = None
    ) -> tuple[Path, _Walk]:
        """A real python-tuf refresh of a device holding ``held`` against ``source``."""
        device = Path(tempfile.mkdtemp(dir=self._scratch))
        if held is not None:
            shutil.copytree(held, device, dirs_exist_ok=True)
        fetcher = _CountingFetcher()
        started = time.perf_counter()
        try:
            trust = refresh_trust(
                device,
                (source / "metadata").as_uri() + "/",
                moment,
                fetcher=fetcher,
                target_url=(source / "targets").as_uri() + "/",
                bootstrap_root=bootstrap,
            )
        except MetadataError as e:
            return device, _Walk(None, fetcher.requests, 0.0, str(e))
        return device, _Walk(trust, fetcher.requests, (time.perf_counter() - started) * 1e3)

    def _device_dir(self, index: int) -> Path:
        """What a device fully up to date with state ``index`` holds (walked from root 1)."""
        if index not in self._device_dirs:
            state = self._state(index)
            root1 = (state.directory / "metadata" / "1.root.json").read_bytes()
            device, walk = self._refresh(None, state.directory, tick_time(state.tick), root1)
            if walk.trust is None:
                raise MetadataError(f"homing state {index} does not verify: {walk.error}")
            self._device_dirs[index] = device
            self._pins[index] = walk.trust.pin_policy
            self._versions[index] = (walk.trust.root_version, walk.trust.targets_version)
            # python-tuf's own cache of what it just verified.
            root = Metadata[Root].from_file(str(device / "root.json"))
            targets = Metadata[Targets].from_file(str(device / "targets.json"))
            self._expiries[index] = (root.signed.expires, targets.signed.expires)
        return self._device_dirs[index]

    def _policy(self, index: int) -> PinPolicy:
        self._device_dir(index)
        return self._pins[index]

    def _device_state(self, index: int) -> Path:
        """A device state directory as a device fully up to date with state ``index`` keeps it."""
        if index not in self._device_states:
            root = self._scratch / f"device-{index}"
            state = DeviceState.create(
                root,
                DeviceConfig(device_id="simulated", hardware=None, released_at=START.isoformat()),
                generate_tls_key(),
                (self._state(0).directory / "metadata" / "1.root.json").read_bytes(),
            )
            shutil.copytree(self._device_dir(index), state.trust_dir, dirs_exist_ok=True)
            atomic_write(root / "pins.json", self._policy(index).to_bytes())
            self._device_states[index] = root
        return self._device_states[index]

    def _walk(self, held: int, current: int, skew: timedelta = ZERO) -> _Walk:
        """The agent's own trust refresh, from what the device held to what is published.

        The world copies the repository whenever the server's certificate
        changes, so the chain in service when a copy was published is the
        one every device meets until the next copy: the result holds for
        the whole period.
        """
        # Devices holding the same root and targets versions hold the same pins
        # and walk the same way: one walk answers for all of them. A device
        # whose clock is off walks by its own clock and its own time floor.
        self._device_dir(held)
        key: Hashable = (self._versions[held], current)
        if skew:
            key = (held, current, skew)
        if key not in self._walks:
            published = self._state(current)
            device = Path(tempfile.mkdtemp(dir=self._scratch))
            shutil.copytree(self._device_state(held), device, dirs_exist_ok=True)
            now = tick_time(published.tick)
            chain = self._served(published.tick)
            fetchers: list[SimulatedNetwork] = []

            def network(policy: PinPolicy | None, at: datetime) -> HTTPSFetcher:
                fetchers.append(SimulatedNetwork(policy, at, chain, published.directory))
                return fetchers[-1]

            if skew:
                # What the device vouched for last: when the metadata it holds was published.
                DeviceState(device).raise_time_floor(tick_time(self._state(held).tick))
            agent = Agent(DeviceState(device), clock=lambda: now + skew, fetcher=network)
            report = CycleReport()
            started = time.perf_counter()
            try:
                trust = agent.refresh_trust(agent.now(), report)
            except (MetadataError, TransportError) as e:
                walk = _Walk(None, sum(f.requests for f in fetchers), 0.0, str(e))
            else:
                pinned = report.trust_channel is TrustChannel.PINNED
                elapsed = (time.perf_counter() - started) * 1e3
                walk = _Walk(trust, sum(f.requests for f in fetchers), elapsed, pinned=pinned)
            self._walks[key] = walk
            shutil.rmtree(device, ignore_errors=True)
        return self._walks[key]

    # -- firmware ---------------------------------------------------------------

    def firmware_sequence(self, state: Hashable) -> int:
        """The sequence of the newest firmware signed in published state ``state`` (0: none)."""
        assert isinstance(state, int)
        release = self._state(state).firmware
        return release.sequence if release is not None else 0

    def firmware_step(self, home: Home, current: int, installed: int | None = None) -> Step:
        """A device running an older release meets the rollout of state ``current``'s newest.

        The real agent's update (``homing.fleet.home.take_update``) on a device
        holding the trust of ``current`` (its contact just walked there) and
        running release ``installed`` (by default the one before the offered).
        """
        assert isinstance(home, SimulatedHome)
        published = self._state(current)
        release = published.firmware
        assert release is not None
        if installed is None:
            installed = release.sequence - 1
        key = (current, installed)
        if key not in self._updates:
            device = Path(tempfile.mkdtemp(dir=self._scratch))
            shutil.copytree(self._device_state(current), device, dirs_exist_ok=True)
            state = DeviceState(device)
            config = replace(state.config(), hardware=FIRMWARE_HARDWARE)
            atomic_write(state.config_path, config.to_json())
            if installed:
                # What it runs: the image it installed before (the factory's, or a release).
                factory = device / "running.img"
                factory.write_bytes(b"running firmware")
                slots = SlotInstaller(device / "slots")
                slots.install(factory, f"1.{installed}.0", installed)
                slots.boot_new()
                slots.commit()
            chain = self._served(published.tick)

            def network(policy: PinPolicy | None, at: datetime) -> SimulatedNetwork:
                return SimulatedNetwork(policy, at, chain, published.directory)

            self._updates[key] = take_update(
                home,
                state,
                release,
                tick_time(published.tick),
                self._policy(current),
                network,
                published.directory,
            )
            shutil.rmtree(device, ignore_errors=True)
        return self._updates[key]

    def certificate_step(self, home: Home, situation: Situation) -> Step:
        """The real agent's certificate work and check-in, against the home server's rules."""
        assert isinstance(home, SimulatedHome)
        return home.converse(situation, self._scratch, self._policy(0))

    def _pinned_ok(
        self, policy_index: int, chain: Chain, moment: datetime, behind: bool = False
    ) -> bool:
        """homing's pinned-connection check: the chain validates to a pinned root, a pin matches.

        ``behind``: the device's clock reads behind its time floor (``moment``
        is the floor), and the agent's rule for that case applies.
        """
        policy = self._policy(policy_index)

        def check(at: datetime) -> tuple[x509.Certificate, ...] | None:
            try:
                verified = verify_pinned_chain(
                    chain.leaf, chain.intermediates, policy, HOST, at, clock_behind_floor=behind
                )
            except ChainError:  # PinError included
                return None
            return verified.chain

        return self._windows.holds(("pinned", policy_index, id(chain), behind), moment, check)

    def _lapsed_expiry(self, current: int) -> datetime | None:
        """When the role an operator let lapse expires in this published state (None: no lapse)."""
        return self._lapses().get(current)

    def _lapses(self) -> dict[int, datetime]:
        return self.world.homing_lapsed

    def _still_valid(self, current: int, moment: datetime) -> Cause | None:
        """No role may be expired at the device's time (python-tuf's rule).

        The server re-signs timestamp and snapshot every day, so only root
        and targets can expire between published states, unless the
        operator let a role lapse (then its real expiry is checked too).
        """
        self._device_dir(current)
        root_expires, targets_expires = self._expiries[current]
        if moment >= root_expires:
            return Cause.ROOT_EXPIRED
        if moment >= targets_expires:
            return Cause.TARGETS_EXPIRED
        lapsed = self._lapsed_expiry(current)
        if lapsed is not None and moment >= lapsed:
            return Cause.METADATA_EXPIRED
        return None

    def factory(self, tick: int) -> Hashable:
        return self._state_at(tick)

    def in_doubt(self, state: int, clock: datetime) -> bool:
        """The agent's rule (homing.agent.trusted_time): a clock behind the time floor of
        what the device holds, or past every expiry it holds, is not used."""
        self._device_dir(state)
        root_expires, targets_expires = self._expiries[state]
        return clock < tick_time(self._state(state).tick) or clock > max(
            root_expires, targets_expires
        )

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        assert isinstance(state, int)
        asked = 0
        if skew and self.in_doubt(state, tick_time(tick) + skew):
            # In doubt, the agent asks its home for the time (one request, a
            # nonce, an answer signed by the timestamp key its root names) and
            # works at the true time from then on.
            skew, asked = ZERO, 1
        contact = self._contact_at(state, tick, skew, asked)
        if skew and contact.outcome == CUT_OFF:
            # The fourth doubt rule: refused by its own clock (metadata expired by it,
            # or the home's chain not valid at it), the agent asks home for the time and
            # tries again at it.
            # Refused at the home's time too: that refusal is the one that stands (the
            # agent works at the home's time once it has it).
            return self._contact_at(state, tick, ZERO, contact.requests + 1)
        return contact

    def _contact_at(self, state: int, tick: int, skew: timedelta, asked: int) -> Contact:
        """One contact by a clock ``skew`` off the true time (``asked``: requests made)."""
        current = self._state_at(tick)
        clock = tick_time(tick) + skew
        # The agent's time: its clock, raised to its time floor when behind it.
        floor = tick_time(self._state(state).tick)
        behind = clock < floor
        now = floor if behind else clock
        expired = self._still_valid(current, now)
        if expired is not None:
            return Contact(state, CUT_OFF, 2 + asked, expired)
        walk = self._walk(state, current, skew)
        if walk.trust is None:
            return Contact(
                state,
                CUT_OFF,
                walk.requests + asked,
                Cause.TRUST_REFRESH_REFUSED,
                detail=walk.error,
            )
        requests = walk.requests + 1 + asked  # and the check-in (and the time)
        # Before the check-in: the pinned connection's rule with the pins just verified.
        served = self._served(tick)
        if not self._pinned_ok(current, served, now, behind):
            return Contact(current, CUT_OFF, requests, Cause.PINS_MISMATCH)
        caught_up = not walk.pinned or walk.trust.root_version != self._versions[state][0]
        return Contact(current, CAUGHT_UP if caught_up else OK, requests, walk_ms=walk.walk_ms)

    # -- the stolen key ---------------------------------------------------------

    def replay_expires(self, c: Compromise) -> datetime:
        """When the attacker's freshest replay (signed just before the response) stops working.

        Its timestamp's expiry, or an earlier one of its other roles (a role the
        operator let lapse). Found and then checked with python-tuf: the
        replayed metadata is accepted a minute before that time and refused a
        second after, so a device cannot be made to talk to the stolen key longer.
        """
        if c.what not in self._replay_expires:
            replay = c.replay.get(self.family)
            assert replay is not None
            expires = _first_expiry(replay / "metadata")
            held = self._device_dir(0)
            _, before = self._refresh(held, replay, expires - timedelta(minutes=1))
            _, after = self._refresh(held, replay, expires + timedelta(seconds=1))
            if before.trust is None or after.trust is not None:
                raise MetadataError(
                    "replayed metadata did not expire when its first role did: "
                    f"{before.error or after.trust}"
                )
            self._replay_expires[c.what] = expires
        return self._replay_expires[c.what]

    def exposed_until(self, state: Hashable, skew: timedelta, c: Compromise) -> float:
        """Judged at the time the agent uses. A clock in doubt asks home for the time; the
        thief, who holds no timestamp key, cannot answer, and the agent talks to no one
        without it (ADR 0009): such a device is not exposed. Any other clock is its own."""
        assert isinstance(state, int)
        start = tick_time(c.tick)
        if skew and self.in_doubt(state, start + skew):
            return days(start)
        return super().exposed_until(state, skew, c)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        assert isinstance(state, int)
        stolen = c.stolen.get(self.family)
        if stolen is None or moment >= self.replay_expires(c):
            return False
        return self._pinned_ok(state, stolen, moment)

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        return sorted([*super()._exposure_candidates(state, c), self.replay_expires(c)])


class HomingPublicCA(Homing):
    """homing with the server's certificate from a public CA, pinned by the server's keys.

    The same agent and the same rules; the site publishes a pin policy of
    public roots and the server's active and backup keys (``homing acme``),
    and the server presents the public CA's chain: renewals, new
    intermediates and root changes happen whenever the public CA wants.
    """

    name = "homing-public-ca"
    summary = "homing, with a public-CA server certificate pinned by the server's keys"

    def _states(self) -> list[HomingState]:
        return self.world.homing_public_states

    def _state_at(self, tick: int) -> int:
        return int(self.world.homing_public_state_at[tick])

    def _served(self, tick: int) -> Chain:
        return self.world.public[int(self.world.public_at[tick])]

    family = "homing-public"

    def _lapses(self) -> dict[int, datetime]:
        return self.world.homing_public_lapsed


def _first_expiry(metadata: Path) -> datetime:
    """When the first role of a published repository expires (timestamp, the snapshot it
    names, the targets that names, the newest root)."""
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json")).signed
    snapshot = (
        Metadata[Snapshot]
        .from_file(str(metadata / f"{timestamp.snapshot_meta.version}.snapshot.json"))
        .signed
    )
    targets = (
        Metadata[Targets]
        .from_file(str(metadata / f"{snapshot.meta['targets.json'].version}.targets.json"))
        .signed
    )
    newest = max(metadata.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
    root = Metadata[Root].from_file(str(newest)).signed
    first: datetime = min(timestamp.expires, snapshot.expires, targets.expires, root.expires)
    return first
