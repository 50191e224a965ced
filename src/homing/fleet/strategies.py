"""How a device recognises its home server, one class per strategy.

Each strategy answers two questions for a device in a given state at a
given tick: does a contact with the server succeed, and what does the device
hold afterwards; and would the device accept the stolen key. The answers
come from real checks on the world's real artifacts: SHA-256 fingerprints of
real leaf certificates, RFC 7469 SPKI pins, ``cryptography``'s path
validation at the simulated time, and for homing the python-tuf chain walk
over the real published metadata followed by homing's pinned-chain check.
Device states are small hashable values, so many devices share one answer;
answers are cached per (state, situation), never invented.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography import x509
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Targets, Timestamp

from homing.agent.agent import Agent, CycleReport
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.state import DeviceConfig, DeviceState
from homing.agent.transport import verify_pinned_chain
from homing.errors import ChainError, MetadataError, TransportError
from homing.fleet.population import DAYS_PER_TICK
from homing.fleet.scenario import Scenario
from homing.fleet.world import HOST, START, Chain, HomingState, World, tick_time
from homing.fsutil import atomic_write
from homing.pki.keys import generate_tls_key, spki_pin
from homing.pki.validate import verify_server_chain
from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
from homing.trust.pins import PinPolicy

__all__ = ["CAUGHT_UP", "CUT_OFF", "MANUAL", "OK", "STRATEGIES", "Contact", "Strategy", "make"]

# Outcomes of one contact.
OK, CAUGHT_UP, MANUAL, CUT_OFF = 0, 1, 2, 3

NEVER = math.inf


@dataclass(frozen=True)
class Contact:
    state: Hashable
    outcome: int
    requests: int
    reason: str = ""
    walk_ms: float = 0.0


def days(moment: datetime) -> float:
    return (moment - START).total_seconds() / 86400.0


class Strategy:
    """A way to pin the home server; subclasses hold the real checks."""

    name = ""
    summary = ""
    recovers_expired_certificate = False
    manual_path = False

    def __init__(self, world: World, scenario: Scenario) -> None:
        self.world = world
        self.scenario = scenario
        self.device_cert_days = scenario.policy.baseline_device_cert_days
        self._windows = _ValidityWindows()

    def factory(self, tick: int) -> Hashable:
        raise NotImplementedError

    def contact(self, state: Hashable, tick: int) -> Contact:
        raise NotImplementedError

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        raise NotImplementedError

    def exposed_until(self, state: Hashable) -> float:
        """Days from START until this state stops accepting the stolen key without a contact."""
        tick = self.world.compromise_tick
        assert tick is not None
        start = tick_time(tick)
        if not self.accepts_stolen(state, start):
            return days(start)
        for moment in self._exposure_candidates(state):
            if moment > start and not self.accepts_stolen(state, moment):
                return days(moment)
        return NEVER

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        """Moments the stolen key may stop working: when the stolen certificates expire."""
        return sorted(
            chain.leaf.not_valid_after_utc + timedelta(seconds=1)
            for chain in self.world.stolen.values()
        )

    # -- real checks, cached --------------------------------------------------

    def _validates(
        self,
        anchors_key: Hashable,
        anchors: tuple[object, ...],
        chain: Chain,
        family: str,
        tick: int,
    ) -> bool:
        return self._windows.holds(
            (anchors_key, id(chain), family),
            tick_time(tick),
            lambda moment: _validated(chain, anchors, moment),
        )


def _validated(
    chain: Chain, anchors: tuple[object, ...], moment: datetime
) -> tuple[x509.Certificate, ...] | None:
    """The validated path (leaf to anchor), or None when the chain does not validate."""
    try:
        verified = verify_server_chain(
            chain.leaf,
            chain.intermediates,
            list(anchors),  # type: ignore[arg-type]
            HOST,
            moment,
        )
    except ChainError:
        return None
    return verified.chain


def _chain_valid(chain: Chain, anchors: tuple[object, ...], moment: datetime) -> bool:
    return _validated(chain, anchors, moment) is not None


class _ValidityWindows:
    """Caches path validation by the validity window of the path it found.

    Given the same chain and anchors, cryptography's verifier can only change
    its answer when the time crosses a certificate's notBefore or notAfter:
    so a path that validated at one moment validates at every moment inside
    the intersection of its certificates' validity periods, and is checked
    again outside it. Refusals are cached per moment only.
    """

    def __init__(self) -> None:
        self._valid: dict[Hashable, list[tuple[datetime, datetime]]] = {}
        self._refused: set[tuple[Hashable, datetime]] = set()

    def holds(
        self,
        key: Hashable,
        moment: datetime,
        check: Callable[[datetime], tuple[x509.Certificate, ...] | None],
    ) -> bool:
        for start, end in self._valid.get(key, ()):
            if start <= moment <= end:
                return True
        if (key, moment) in self._refused:
            return False
        path = check(moment)
        if path is None:
            self._refused.add((key, moment))
            return False
        start = max(c.not_valid_before_utc for c in path)
        end = min(c.not_valid_after_utc for c in path)
        self._valid.setdefault(key, []).append((start, end))
        return True


class LeafFingerprint(Strategy):
    name = "leaf-fingerprint"
    summary = "the server certificate's fingerprint, stored at assembly"
    reason = (
        "the server's certificate was renewed: the fingerprint stored at assembly no longer matches"
    )

    def factory(self, tick: int) -> Hashable:
        return int(self.world.public_at[tick])

    def _fingerprint(self, index: int) -> str:
        return self.world.public[index].fingerprint

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, int)
        presented = self.world.public[int(self.world.public_at[tick])]
        if presented.fingerprint == self._fingerprint(state):
            return Contact(state, OK, 1)
        return Contact(state, CUT_OFF, 1, self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, int)
        return self.world.stolen["public"].fingerprint == self._fingerprint(state)

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        return []  # a stored fingerprint never expires


class AnnounceNext(Strategy):
    name = "announce-next"
    summary = "the server announces the next fingerprint and when it becomes valid"
    reason = "offline while the next fingerprint was announced, so it never learned it"
    emergency = "the stolen key forced a renewal that could not be announced in advance"

    def factory(self, tick: int) -> Hashable:
        w = self.world
        return (int(w.public_at[tick]), int(w.announce_at[tick]), int(w.announce_from[tick]))

    def contact(self, state: Hashable, tick: int) -> Contact:
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

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, tuple)
        stolen = self.world.stolen["public"].fingerprint
        return any(i >= 0 and self.world.public[i].fingerprint == stolen for i in state[:2])

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        return []


class PublicCA(Strategy):
    name = "public-ca"
    summary = "a public CA bundle shipped in firmware, updated with firmware"
    reason = (
        "a public root in its firmware bundle expired and the server's chain moved to "
        "a root it never received"
    )

    def factory(self, tick: int) -> Hashable:
        return int(self.world.release_at[tick])

    def _public_ok(self, release: int, tick: int, chain: Chain | None = None) -> bool:
        w = self.world
        chain = chain or w.public[int(w.public_at[tick])]
        return self._validates(
            ("release", release), w.releases[release].public_roots, chain, "public", tick
        )

    def _update(self, release: int, tick: int) -> tuple[int, int]:
        """Take the newest firmware (its trust bundle) over the working connection."""
        newest = int(self.world.release_at[tick])
        return newest, 1 + (newest != release)

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, int)
        if not self._public_ok(state, tick):
            return Contact(state, CUT_OFF, 1, self.reason)
        release, requests = self._update(state, tick)
        return Contact(release, OK, requests)

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, int)
        roots = self.world.releases[state].public_roots
        return _chain_valid(self.world.stolen["public"], roots, moment)


class HPKP(PublicCA):
    name = "hpkp"
    summary = "SPKI pins with a backup pin and max-age, falling back to the public PKI"
    pin_reason = "every key it had pinned was replaced before its pins' max-age ran out"

    def factory(self, tick: int) -> Hashable:
        return (int(self.world.release_at[tick]), -1, 0)

    def _pins(self, key_index: int) -> set[str]:
        return {self.world.key_pin(key_index), self.world.key_pin(key_index + 1)}

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, tuple)
        release, pinned_key, until = state
        w = self.world
        if not self._public_ok(release, tick):
            return Contact(state, CUT_OFF, 1, self.reason)
        chain = w.public[int(w.public_at[tick])]
        if tick < until and spki_pin(chain.leaf) not in self._pins(pinned_key):
            return Contact(state, CUT_OFF, 1, self.pin_reason)
        release, requests = self._update(release, tick)
        max_age = max(1, round(self.scenario.policy.hpkp_max_age_days / DAYS_PER_TICK))
        return Contact((release, int(w.key_at[tick]), tick + max_age), OK, requests)

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, tuple)
        release, pinned_key, until = state
        stolen = self.world.stolen["public"]
        if not _chain_valid(stolen, self.world.releases[release].public_roots, moment):
            return False
        active = moment < tick_time(until)
        return not active or spki_pin(stolen.leaf) in self._pins(pinned_key)

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        assert isinstance(state, tuple)
        return sorted([*super()._exposure_candidates(state), tick_time(state[2])])


class PrivateCA(Strategy):
    name = "private-ca"
    summary = "a private CA certificate pinned at assembly"

    @property
    def reason(self) -> str:
        if self.scenario.policy.private_ca_pins == "issuing":
            return "the pinned issuing CA was replaced by a new one it does not know"
        return "the pinned private root expired and the server moved to a root it never received"

    def factory(self, tick: int) -> Hashable:
        return int(self.world.anchors_at[tick])

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, int)
        w = self.world
        chain = w.private[int(w.private_at[tick])]
        if self._validates(
            ("anchors", state), w.private_anchor_sets[state], chain, "private", tick
        ):
            return Contact(state, OK, 1)
        return Contact(state, CUT_OFF, 1, self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, int)
        return _chain_valid(
            self.world.stolen["private"], self.world.private_anchor_sets[state], moment
        )


class FirmwarePins(Strategy):
    name = "firmware-pins"
    summary = "key pins (current and next) shipped in signed firmware updates"
    reason = "missed the firmware update window: the server's key moved past the pins it holds"
    manual_path = True

    def factory(self, tick: int) -> Hashable:
        return int(self.world.release_at[tick])

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, int)
        w = self.world
        chain = w.public[int(w.public_at[tick])]
        if spki_pin(chain.leaf) in w.releases[state].key_pins:
            newest = int(w.release_at[tick])
            return Contact(newest, OK, 1 + (newest != state))
        # The update channel rides on the same pins: only a hand can install it.
        return Contact(int(w.release_at[tick]), MANUAL, 0, self.reason)

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, int)
        stolen = self.world.stolen["public"]
        return spki_pin(stolen.leaf) in self.world.releases[state].key_pins

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        return []  # a pinned key does not expire


# -- homing --------------------------------------------------------------------


class _CountingFetcher(DirectoryFetcher):
    """The file fetcher, counting what a device would have requested from the server."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests += 1
        return super()._fetch(url)


class _SimulatedHome(HTTPSFetcher):
    """The network, simulated: the home server as the world publishes it at one moment.

    It is the agent's own fetcher with the socket replaced: a pinned fetch
    first puts the server's real chain through the agent's pinned-connection
    rule (``verify_pinned_chain``) and fails the way a real handshake check
    fails; then files come from the published repository copy.
    """

    def __init__(
        self, policy: PinPolicy | None, now: datetime, chain: Chain, repository: Path
    ) -> None:
        super().__init__(policy, now)
        self._chain = chain
        self._repository = repository
        self._checked = False

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if self.policy is not None and not self._checked:
            try:
                verify_pinned_chain(
                    self._chain.leaf,
                    self._chain.intermediates,
                    self.policy,
                    parts.hostname or "",
                    self.now,
                )
            except ChainError as e:
                self.pin_failure = e
                raise tuf_errors.DownloadError(str(e)) from e
            self._checked = True
        prefix = "/tuf/"
        if not parts.path.startswith(prefix):
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP 404", 404)
        path = self._repository.joinpath(*unquote(parts.path[len(prefix) :]).split("/"))
        self.requests += 1  # a 404 (python-tuf probing for the next root) is a request too
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP 404", 404) from e
        return iter([data])

    def close(self) -> None:
        pass


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

    def __init__(self, world: World, scenario: Scenario) -> None:
        super().__init__(world, scenario)
        self.device_cert_days = scenario.policy.homing_device_cert_days
        self._scratch = Path(tempfile.mkdtemp(prefix="homing-sim-"))
        self._device_dirs: dict[int, Path] = {}
        self._walks: dict[tuple[tuple[int, int], int], _Walk] = {}
        self._versions: dict[int, tuple[int, int]] = {}
        self._pins: dict[int, PinPolicy] = {}
        self._device_states: dict[int, Path] = {}
        self._expiries: dict[int, tuple[datetime, datetime]] = {}
        self._replay_expires: datetime | None = None

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _state(self, index: int) -> HomingState:
        return self.world.homing_states[index]

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

    def _walk(self, held: int, current: int) -> _Walk:
        """The agent's own trust refresh, from what the device held to what is published.

        The world copies the repository whenever the server's certificate
        changes, so the chain in service when a copy was published is the
        one every device meets until the next copy: the result holds for
        the whole period.
        """
        # Devices holding the same root and targets versions hold the same pins
        # and walk the same way: one walk answers for all of them.
        self._device_dir(held)
        key = (self._versions[held], current)
        if key not in self._walks:
            published = self._state(current)
            device = Path(tempfile.mkdtemp(dir=self._scratch))
            shutil.copytree(self._device_state(held), device, dirs_exist_ok=True)
            now = tick_time(published.tick)
            chain = self.world.homing[int(self.world.homing_at[published.tick])]
            fetchers: list[_SimulatedHome] = []

            def network(policy: PinPolicy | None, at: datetime) -> HTTPSFetcher:
                fetchers.append(_SimulatedHome(policy, at, chain, published.directory))
                return fetchers[-1]

            agent = Agent(DeviceState(device), clock=lambda: now, fetcher=network)
            report = CycleReport()
            started = time.perf_counter()
            try:
                trust = agent.refresh_trust(now, report)
            except (MetadataError, TransportError) as e:
                walk = _Walk(None, sum(f.requests for f in fetchers), 0.0, str(e))
            else:
                pinned = not any("bootstrap" in step for step in report.steps)
                elapsed = (time.perf_counter() - started) * 1e3
                walk = _Walk(trust, sum(f.requests for f in fetchers), elapsed, pinned=pinned)
            self._walks[key] = walk
            shutil.rmtree(device, ignore_errors=True)
        return self._walks[key]

    def _pinned_ok(self, policy_index: int, chain: Chain, moment: datetime) -> bool:
        """homing's pinned-connection check: the chain validates to a pinned root, a pin matches."""
        policy = self._policy(policy_index)

        def check(at: datetime) -> tuple[x509.Certificate, ...] | None:
            try:
                verified = verify_pinned_chain(chain.leaf, chain.intermediates, policy, HOST, at)
            except ChainError:  # PinError included
                return None
            return verified.chain

        return self._windows.holds(("pinned", policy_index, id(chain)), moment, check)

    def _still_valid(self, current: int, tick: int) -> str:
        """Root and targets must not be expired at the device's time (python-tuf's rule)."""
        self._device_dir(current)
        root_expires, targets_expires = self._expiries[current]
        moment = tick_time(tick)
        if moment >= root_expires:
            return "root metadata expired: a root ceremony was missed"
        if moment >= targets_expires:
            return "targets metadata expired: the yearly re-signing was missed"
        return ""

    def factory(self, tick: int) -> Hashable:
        return int(self.world.homing_state_at[tick])

    def contact(self, state: Hashable, tick: int) -> Contact:
        assert isinstance(state, int)
        w = self.world
        current = int(w.homing_state_at[tick])
        chain_index = int(w.homing_at[tick])
        expired = self._still_valid(current, tick)
        if expired:
            return Contact(state, CUT_OFF, 2, expired)
        walk = self._walk(state, current)
        if walk.trust is None:
            return Contact(state, CUT_OFF, walk.requests, f"trust refresh refused: {walk.error}")
        requests = walk.requests + 1  # and the check-in
        # Before the check-in: the pinned connection's rule with the pins just verified.
        if not self._pinned_ok(current, w.homing[chain_index], tick_time(tick)):
            return Contact(current, CUT_OFF, requests, "pins from fresh metadata do not match")
        caught_up = not walk.pinned or walk.trust.root_version != self._versions[state][0]
        return Contact(current, CAUGHT_UP if caught_up else OK, requests, walk_ms=walk.walk_ms)

    # -- the stolen key ---------------------------------------------------------

    def replay_expires(self) -> datetime:
        """When the attacker's freshest replay (signed just before the response) stops working.

        Found and then checked with python-tuf: the replayed metadata is
        accepted a minute before its timestamp expires and refused a second
        after, so a device cannot be made to talk to the stolen key longer.
        """
        if self._replay_expires is None:
            replay = self.world.replay_dir
            assert replay is not None
            expires = (
                Metadata[Timestamp]
                .from_file(str(replay / "metadata" / "timestamp.json"))
                .signed.expires
            )
            held = self._device_dir(0)
            _, before = self._refresh(held, replay, expires - timedelta(minutes=1))
            _, after = self._refresh(held, replay, expires + timedelta(seconds=1))
            if before.trust is None or after.trust is not None:
                raise MetadataError(
                    "replayed metadata did not expire when its timestamp did: "
                    f"{before.error or after.trust}"
                )
            self._replay_expires = expires
        return self._replay_expires

    def accepts_stolen(self, state: Hashable, moment: datetime) -> bool:
        assert isinstance(state, int)
        if moment >= self.replay_expires():
            return False
        return self._pinned_ok(state, self.world.stolen["homing"], moment)

    def _exposure_candidates(self, state: Hashable) -> list[datetime]:
        return sorted([*super()._exposure_candidates(state), self.replay_expires()])


STRATEGIES: dict[str, Callable[[World, Scenario], Strategy]] = {
    cls.name: cls
    for cls in (LeafFingerprint, AnnounceNext, PublicCA, HPKP, PrivateCA, FirmwarePins, Homing)
}


def make(name: str, world: World, scenario: Scenario) -> Strategy:
    return STRATEGIES[name](world, scenario)
