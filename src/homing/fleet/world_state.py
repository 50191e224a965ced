"""What the built world holds: the server's chains, homing's published states, thefts.

Devices are judged against these (homing.fleet.strategies); homing.fleet.world
builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from homing.fleet.simulated_cas import Chain
from homing.pki.keys import spki_pin

# The hardware class of the simulated devices homing releases firmware for.
FIRMWARE_HARDWARE = "sim-board"

__all__ = ["FIRMWARE_HARDWARE", "Compromise", "FirmwareRelease", "HomingState", "Release", "World"]


@dataclass(frozen=True)
class Release:
    """A firmware release and the trust it carries."""

    tick: int
    public_roots: tuple[x509.Certificate, ...]
    key_pins: frozenset[str]
    # The firmware key generation this firmware verifies updates with, and the
    # generations that signed it (two during a key rotation's overlap).
    carries_key: int = 1
    signed_by: frozenset[int] = frozenset({1})


@dataclass(frozen=True)
class HomingState:
    """The homing repository as published at one moment (a copy of its metadata)."""

    index: int
    tick: int
    directory: Path
    # The newest firmware signed into its firmware role (None: none yet).
    firmware: FirmwareRelease | None = None


@dataclass(frozen=True)
class FirmwareRelease:
    """A firmware image homing's site signed (``homing release``) for the simulated board."""

    target: str
    version: str
    sequence: int


@dataclass(frozen=True)
class Compromise:
    """A stolen key and what the attacker can do with it, per device family.

    ``stolen``: the chain the attacker presents to each family of strategy
    ("public", "private", "homing", "homing-public"); a family missing here
    is not exposed. ``replay``: the freshest metadata the attacker can
    replay to each homing site.
    """

    what: str
    tick: int
    stolen: dict[str, Chain]
    replay: dict[str, Path]


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
    # The same, for a homing site whose server certificate comes from the public CA.
    homing_public_states: list[HomingState] = field(default_factory=list)
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
    homing_public_state_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # When the stolen server TLS key is replaced (the theft itself, its chains and
    # replays: ``compromises``); None if no theft is answered within the run.
    compromise_tick: int | None = None
    events: list[tuple[int, str]] = field(default_factory=list)
    # Published states whose timestamp or snapshot the operator let lapse: when it expires.
    homing_lapsed: dict[int, datetime] = field(default_factory=dict)
    homing_public_lapsed: dict[int, datetime] = field(default_factory=dict)
    # Whether a lapse is still open when the run stops (its role never re-signed in it).
    lapse_open_at_end: bool = False
    # Ticks at which the device CA's key was stolen and its certificates distrusted.
    device_ca_distrusted: tuple[int, ...] = ()
    # Every theft whose exposure is measured: the TLS key, a server-issuing CA key.
    compromises: list[Compromise] = field(default_factory=list)

    def key_pin(self, index: int) -> str:
        return spki_pin(self.keys[index].public_key())

    def can_install(self, installed: int, offered: int) -> bool:
        """Whether firmware ``installed`` verifies release ``offered``: a key it knows signed it."""
        return self.releases[installed].carries_key in self.releases[offered].signed_by
