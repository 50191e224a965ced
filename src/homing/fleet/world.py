"""The server side of a simulation: every certificate, key and trust document, for real.

Before a run, the world is built once: a public PKI (two roots, changing
intermediates), a baseline private PKI (a root with a finite life, rotating
issuing CAs), the server's TLS keys and leaf certificates on their renewal
schedule, firmware releases, and a real homing data directory driven
through homing's own ceremonies (issuing-CA rotations, root key rotations,
targets re-signing, the response to a stolen key), with a copy of the trust
metadata after every change. Devices are then judged against these real
artifacts; nothing here is a stand-in.

Time is counted in ticks of one simulated week from ``START``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.config import Validity
from homing.fleet.population import DAYS_PER_TICK, DAYS_PER_YEAR
from homing.fleet.scenario import Scenario
from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
from homing.pki.keys import generate_tls_key, spki_pin
from homing.pki.ledger import MemoryLedger
from homing.pki.profiles import server_csr, server_profile

__all__ = ["HOST", "START", "Chain", "HomingState", "Release", "World", "build_world", "tick_time"]

log = logging.getLogger(__name__)

START = datetime(2027, 1, 1, tzinfo=UTC)
HOST = "home.example.com"


def tick_time(tick: int) -> datetime:
    return START + timedelta(days=DAYS_PER_TICK * tick)


def year_tick(years: float) -> int:
    return round(years * DAYS_PER_YEAR / DAYS_PER_TICK)


@dataclass(frozen=True)
class Chain:
    """What the server presents: leaf first, then the intermediates."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    key_index: int

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER: what a fingerprint-pinning device stores."""
        return hashlib.sha256(self.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class Release:
    """A firmware release and the trust it carries."""

    tick: int
    public_roots: tuple[x509.Certificate, ...]
    key_pins: frozenset[str]


@dataclass(frozen=True)
class HomingState:
    """The homing repository as published at one moment (a copy of its metadata)."""

    index: int
    tick: int
    directory: Path


@dataclass
class World:
    ticks: int
    keys: list[ec.EllipticCurvePrivateKey]
    public: list[Chain] = field(default_factory=list)
    private: list[Chain] = field(default_factory=list)
    homing: list[Chain] = field(default_factory=list)
    public_roots: list[tuple[x509.Certificate, int]] = field(default_factory=list)
    private_anchor_sets: list[tuple[x509.Certificate, ...]] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    homing_states: list[HomingState] = field(default_factory=list)
    homing_root_ca: list[x509.Certificate] = field(default_factory=list)
    # Per tick: which chain, key, release, announcement and homing state is current.
    public_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    private_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    homing_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    key_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    release_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    anchors_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    announce_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    announce_from: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    homing_state_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    compromise_tick: int | None = None
    # The chains in service when the key was stolen, and the attacker's best replay.
    stolen: dict[str, Chain] = field(default_factory=dict)
    replay_dir: Path | None = None
    events: list[tuple[int, str]] = field(default_factory=list)

    def key_pin(self, index: int) -> str:
        return spki_pin(self.keys[index].public_key())


def _leaf(
    authority: Authority, key: ec.EllipticCurvePrivateKey, tick: int, days: int
) -> x509.Certificate:
    validity = Validity(server=timedelta(days=days))
    return authority.issue_csr(
        server_csr(key, [HOST]), server_profile([HOST], validity), tick_time(tick)
    )


class _CA:
    """A root and its current issuing CA, issuing the server's leaves."""

    def __init__(self, name: str, created: int, years: float, backdate_years: float = 0.0) -> None:
        self.name = name
        self.root_key = generate_tls_key()
        born = tick_time(created) - timedelta(days=backdate_years * DAYS_PER_YEAR)
        lifetime = timedelta(days=(years + backdate_years) * DAYS_PER_YEAR)
        self.root = make_root_ca(
            self.root_key,
            born,
            organization=name,
            common_name=f"{name} root",
            validity=Validity(root_ca=lifetime),
        )
        self.generation = 0
        self.authority: Authority | None = None

    def new_issuing(self, tick: int) -> x509.Certificate:
        self.generation += 1
        key = generate_tls_key()
        cert = make_issuing_ca(
            "server",
            key.public_key(),
            self.root,
            self.root_key,
            tick_time(tick),
            hosts=[HOST],
            generation=self.generation,
        )
        self.authority = Authority(cert, key, MemoryLedger())
        return cert

    def chain(self, key: ec.EllipticCurvePrivateKey, index: int, tick: int, days: int) -> Chain:
        assert self.authority is not None
        leaf = _leaf(self.authority, key, tick, days)
        return Chain(leaf, (self.authority.certificate,), index)


@contextmanager
def _quiet() -> Iterator[None]:
    """The homing ceremonies warn about plaintext development keys; here they are throwaway."""
    logger = logging.getLogger("homing.pki.keystore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    saved = os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    try:
        yield
    finally:
        logger.setLevel(level)
        if saved is not None:
            os.environ["HOMING_KEY_PASSPHRASE"] = saved


def build_world(scenario: Scenario, workdir: Path) -> World:
    """Build every artifact of the run under ``workdir`` (a scratch directory)."""
    with _quiet():
        return _build(scenario, workdir)


def _build(scenario: Scenario, workdir: Path) -> World:
    ev, srv = scenario.events, scenario.server
    ticks = max(1, int(np.ceil(scenario.fleet.years * DAYS_PER_YEAR / DAYS_PER_TICK)))
    leaf_ticks = max(1, round(srv.leaf_days / DAYS_PER_TICK))
    key_ticks = max(1, round(srv.key_days / DAYS_PER_TICK))
    leaf_days = leaf_ticks * DAYS_PER_TICK + DAYS_PER_TICK
    compromise = year_tick(ev.key_compromise) if ev.key_compromise is not None else None
    if compromise is not None and compromise >= ticks:
        compromise = None
    world = World(ticks=ticks, keys=[generate_tls_key(), generate_tls_key()])

    # -- the schedule ------------------------------------------------------
    public_expiry = year_tick(ev.public_root_expiry)
    public_successor = max(0, year_tick(ev.public_root_expiry - ev.public_new_root_lead_years))
    private_expiry = year_tick(ev.private_root_years)
    private_successor = year_tick(ev.private_root_years - 1.0)
    ca_rotations = {year_tick(y) for y in ev.issuing_ca_rotations}
    intermediate_changes = {year_tick(y) for y in ev.public_intermediate_changes}
    root_rotations = {year_tick(y) for y in ev.root_rotations}
    key_changes = {t for t in range(key_ticks, ticks, key_ticks)}
    if compromise is not None:
        key_changes.add(compromise)
    scheduled = set(range(0, ticks, leaf_ticks)) | key_changes | ca_rotations
    scheduled |= intermediate_changes | {public_expiry, private_expiry}
    renewals = sorted(t for t in scheduled if 0 <= t < ticks)

    # -- public and baseline private PKI -----------------------------------
    public_ca = _CA("Example Public Trust", 0, ev.public_root_expiry, backdate_years=6.0)
    world.public_roots.append((public_ca.root, 0))
    public_ca.new_issuing(0)
    public_next: _CA | None = None
    private_ca = _CA("Example Devices Inc", 0, ev.private_root_years)
    private_ca.new_issuing(0)
    private_next: _CA | None = None
    anchor_sets: dict[tuple[bytes, ...], int] = {}

    def anchors(*certs: x509.Certificate) -> int:
        key = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
        if key not in anchor_sets:
            anchor_sets[key] = len(world.private_anchor_sets)
            world.private_anchor_sets.append(certs)
        return anchor_sets[key]

    # -- homing ------------------------------------------------------------
    data = workdir / "homing-data"
    ceremonies.init(data, START, hosts=[HOST], validity=Validity(server=timedelta(days=leaf_days)))
    states_dir = workdir / "homing-states"
    world.homing_root_ca.append(ceremonies.DataDir(data).certificate("root-ca.pem"))

    def snapshot_homing(tick: int) -> None:
        index = len(world.homing_states)
        target = states_dir / str(index)
        shutil.copytree(data / "repository", target)
        world.homing_states.append(HomingState(index, tick, target))

    def homing_chain(key_index: int) -> Chain:
        certs = x509.load_pem_x509_certificates((data / "pki" / "server-chain.pem").read_bytes())
        return Chain(certs[0], tuple(certs[1:]), key_index)

    snapshot_homing(0)
    world.homing.append(homing_chain(0))

    arrays = {
        name: np.zeros(ticks, np.int64)
        for name in (
            "public_at",
            "private_at",
            "homing_at",
            "key_at",
            "release_at",
            "anchors_at",
            "homing_state_at",
        )
    }
    key_index = 0
    release_ticks = max(1, round(ev.firmware_release_days / DAYS_PER_TICK))
    renewal_set = set(renewals)
    for tick in range(ticks):
        now = tick_time(tick)
        homing_changed = False
        homing_renewed = False
        if tick == public_successor and public_next is None and tick < ticks:
            public_next = _CA("Example Public Trust G2", tick, 25.0)
            world.public_roots.append((public_next.root, tick))
            public_next.new_issuing(tick)
            world.events.append((tick, "public CA publishes a new root"))
        if tick == private_successor and private_next is None and tick > 0:
            private_next = _CA("Example Devices Inc G2", tick, 20.0)
            private_next.new_issuing(tick)
            world.events.append((tick, "company makes a successor private root"))
        if tick == public_expiry and public_next is not None:
            public_ca = public_next
            world.events.append((tick, "old public root expires; chains move to the new root"))
        elif tick in intermediate_changes:
            public_ca.new_issuing(tick)
            world.events.append((tick, "public CA replaces its intermediate"))
        if tick == private_expiry and private_next is not None:
            private_ca = private_next
            world.events.append((tick, "private root expires; server moves to its successor"))
        elif tick in ca_rotations:
            private_ca.new_issuing(tick)
        if compromise is not None and tick == compromise:
            world.stolen = {
                "public": world.public[-1],
                "private": world.private[-1],
                "homing": world.homing[-1],
            }
            # What the server re-signs on its own (snapshot weekly, timestamp daily).
            ceremonies.refresh_snapshot(data, now)
            world.replay_dir = workdir / "replay"
            shutil.copytree(data / "repository", world.replay_dir)
            ceremonies.rotate_issuing_ca(data, "server", now)
            homing_changed = homing_renewed = True
            world.events.append((tick, "the server's TLS key is stolen; keys and CAs rotate"))
        if tick in key_changes:
            key_index += 1
            world.keys.append(generate_tls_key())
            if tick != compromise:
                world.events.append((tick, "server TLS key rotated to the pre-announced backup"))
        if tick in ca_rotations and not homing_renewed:
            ceremonies.rotate_issuing_ca(data, "server", now)
            homing_changed = homing_renewed = True
            world.events.append((tick, "issuing CA rotated (homing promotes its backup key)"))
        if tick in root_rotations:
            ceremonies.rotate_root(data, now)
            homing_changed = True
            world.events.append((tick, "homing root keys rotated (root N+1 signed by N)"))
        if tick > 0 and tick % year_tick(1.0) == 0 and not homing_changed:
            ceremonies.refresh_targets(data, now)
            homing_changed = True
        if tick in renewal_set:
            key = world.keys[key_index]
            world.public.append(public_ca.chain(key, key_index, tick, leaf_days))
            world.private.append(private_ca.chain(key, key_index, tick, leaf_days))
            if not homing_renewed:
                ceremonies.rotate_server_cert(data, now)
            world.homing.append(homing_chain(key_index))
        if homing_changed:
            snapshot_homing(tick)
        if tick % release_ticks == 0 or tick == compromise:
            roots = tuple(
                cert
                for cert, since in world.public_roots
                if since <= tick and cert.not_valid_after_utc > now
            )
            pins = frozenset({world.key_pin(key_index), world.key_pin(key_index + 1)})
            world.releases.append(Release(tick, roots, pins))
        arrays["public_at"][tick] = len(world.public) - 1
        arrays["private_at"][tick] = len(world.private) - 1
        arrays["homing_at"][tick] = len(world.homing) - 1
        arrays["key_at"][tick] = key_index
        arrays["release_at"][tick] = len(world.releases) - 1
        arrays["homing_state_at"][tick] = len(world.homing_states) - 1
        if scenario.policy.private_ca_pins == "root":
            shipped = [private_ca.root]
            if private_next is not None and private_next is not private_ca:
                shipped.append(private_next.root)
            arrays["anchors_at"][tick] = anchors(*shipped)
        else:
            assert private_ca.authority is not None
            arrays["anchors_at"][tick] = anchors(private_ca.authority.certificate)
    for name, values in arrays.items():
        setattr(world, name, values)
    world.compromise_tick = compromise
    _announcements(world, renewals, leaf_ticks, srv.announce_days, compromise)
    ceremonies.DataDir(data).close()
    return world


def _announcements(
    world: World, renewals: list[int], leaf_ticks: int, announce_days: int, compromise: int | None
) -> None:
    """announce-next: before each scheduled renewal, the next fingerprint is announced.

    An emergency renewal (the stolen key) cannot be announced in advance.
    """
    window = max(1, round(announce_days / DAYS_PER_TICK))
    world.announce_at = np.full(world.ticks, -1, np.int64)
    world.announce_from = np.full(world.ticks, -1, np.int64)
    for tick in range(world.ticks):
        upcoming = [r for r in renewals if r > tick and r - tick <= window and r != compromise]
        if not upcoming:
            continue
        r = upcoming[0]
        if compromise is not None and tick < compromise <= r:
            continue
        world.announce_at[tick] = world.public_at[r]
        world.announce_from[tick] = r
