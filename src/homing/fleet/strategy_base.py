"""How a device recognises its home server: the outcome of a contact and the strategy interface.

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

import enum
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from homing.agent.decide import CertificateAction
from homing.errors import ChainError
from homing.fleet.scenario import Scenario
from homing.fleet.world import HOST, START, Chain, Compromise, World, tick_time
from homing.pki.validate import verify_server_chain

__all__ = [
    "CAUGHT_UP",
    "CUT_OFF",
    "MANUAL",
    "NEVER",
    "OK",
    "REFUSED",
    "Cause",
    "Contact",
    "Home",
    "Outcome",
    "Situation",
    "Step",
    "Strategy",
    "days",
]


class Outcome(enum.IntEnum):
    """How one contact ended (an int, so a fleet's outcomes are one numpy array)."""

    OK = 0
    CAUGHT_UP = 1  # reached home only after catching up by itself
    MANUAL = 2  # cut off, then recovered by a hand
    CUT_OFF = 3  # could not reach home
    REFUSED = 4  # reached home and was refused on purpose: a revoked device


OK, CAUGHT_UP, MANUAL, CUT_OFF, REFUSED = (
    Outcome.OK,
    Outcome.CAUGHT_UP,
    Outcome.MANUAL,
    Outcome.CUT_OFF,
    Outcome.REFUSED,
)


class Cause(enum.StrEnum):
    """Why a device was cut off: typed, so results are counted by cause, never by text."""

    FINGERPRINT_CHANGED = (
        "the server's certificate was renewed: the fingerprint stored at assembly no longer matches"
    )
    MISSED_ANNOUNCEMENT = "offline while the next fingerprint was announced, so it never learned it"
    UNANNOUNCED_RENEWAL = "the stolen key forced a renewal that could not be announced in advance"
    PUBLIC_ROOT_GONE = (
        "a public root in its firmware bundle expired and the server's chain moved to "
        "a root it never received"
    )
    PINNED_KEYS_REPLACED = "every key it had pinned was replaced before its pins' max-age ran out"
    PINNED_ISSUING_CA_REPLACED = "the pinned issuing CA was replaced by a new one it does not know"
    PRIVATE_ROOT_GONE = (
        "the pinned private root expired and the server moved to a root it never received"
    )
    MISSED_FIRMWARE_PINS = (
        "missed the firmware update window: the server's key moved past the pins it holds"
    )
    FIRMWARE_KEY_RETIRED = (
        "the firmware key rotated and the old one was retired while it was offline: it cannot "
        "verify any newer firmware, so the trust its firmware carries went stale"
    )
    CERT_EXPIRED = (
        "device certificate expired while it was offline, and there is no key-proof recovery"
    )
    DEVICE_CA_DISTRUSTED = (
        "the device CA's key was stolen and the server distrusts its certificates: without "
        "key-proof recovery the device cannot get a new one"
    )
    CLOCK_WRONG = (
        "its clock is so far off that every certificate it is shown looks not yet valid or expired"
    )
    ROOT_EXPIRED = "root metadata expired: a root ceremony was missed"
    TARGETS_EXPIRED = "targets metadata expired: the yearly re-signing was missed"
    METADATA_EXPIRED = (
        "trust metadata expired while the operator let it lapse: the device fails closed "
        "until it is re-signed"
    )
    CERTIFICATE_REFUSED = "the server refused its certificate"
    TRUST_REFRESH_REFUSED = "trust refresh refused"
    PINS_MISMATCH = "pins from fresh metadata do not match"


NEVER = math.inf
ZERO = timedelta(0)


@dataclass(frozen=True)
class Contact:
    state: Hashable
    outcome: Outcome
    requests: int
    cause: Cause | None = None
    walk_ms: float = 0.0
    # What the real check said, where it says more than the cause.
    detail: str = ""


@dataclass(frozen=True)
class Situation:
    """What decides how a device's certificate fares at a contact.

    ``phase``: the agent's rule on the certificate's dates (keep, renew,
    recover); ``distrusted``: issued by a device CA distrusted since its key
    was stolen; ``revoked``: the operator revoked the device.
    """

    phase: CertificateAction
    distrusted: bool = False
    revoked: bool = False


@dataclass(frozen=True)
class Step:
    """How the contact's certificate work ended, and what it cost."""

    outcome: Outcome
    posts: int  # requests to the server API, the check-in included
    renewed: bool = False
    recovered: bool = False
    cause: Cause | None = None
    # The server's refusals, by problem code, in order.
    refusals: tuple[str, ...] = ()
    # Firmware: the version the agent committed, or why it refused the assigned image.
    committed: str | None = None
    update_refused: str | None = None


class Home(Protocol):
    """The home server a strategy's devices present their certificates to (``fleet.home``)."""

    def presented(self, situation: Situation) -> Step: ...


def days(moment: datetime) -> float:
    return (moment - START).total_seconds() / 86400.0


class Strategy:
    """A way to pin the home server; subclasses hold the real checks."""

    name = ""
    summary = ""
    recovers_expired_certificate = False
    # Its devices take firmware through the simulated home (homing's rollout).
    takes_firmware = False
    manual_path = False

    def __init__(self, world: World, scenario: Scenario) -> None:
        self.world = world
        self.scenario = scenario
        self.device_cert_days = scenario.policy.baseline_device_cert_days
        self._windows = _ValidityWindows()

    def factory(self, tick: int) -> Hashable:
        raise NotImplementedError

    def contact(self, state: Hashable, tick: int, skew: timedelta = ZERO) -> Contact:
        """A contact at ``tick``, by a device whose clock reads ``skew`` off the true time."""
        raise NotImplementedError

    def firmware_sequence(self, state: Hashable) -> int:
        """The newest firmware a device in ``state`` is offered by homing's rollout (0: none).

        Only homing's devices take firmware through the simulated home; the
        other strategies' firmware rules are the world's (``World.can_install``).
        """
        return 0

    def firmware_step(self, home: Home, current: int, installed: int | None = None) -> Step:
        raise NotImplementedError(f"{self.name} takes no firmware from the simulated home")

    def certificate_step(self, home: Home, situation: Situation) -> Step:
        """A device's certificate at a contact, as the home server's rules answer it.

        Without homing's agent nothing answers a refusal: an expired or
        distrusted certificate cuts the device off.
        """
        return home.presented(situation)

    def accepts_stolen(self, state: Hashable, moment: datetime, c: Compromise) -> bool:
        """Whether this state accepts theft ``c``'s chain when its clock reads ``moment``."""
        raise NotImplementedError

    def exposed_until(self, state: Hashable, skew: timedelta, c: Compromise) -> float:
        """Days from START until this state stops accepting the stolen key without a contact."""
        start = tick_time(c.tick)
        if not self.accepts_stolen(state, start + skew, c):
            return days(start)
        for moment in self._exposure_candidates(state, c):
            if moment > start + skew and not self.accepts_stolen(state, moment, c):
                return days(moment - skew)
        return NEVER

    def _exposure_candidates(self, state: Hashable, c: Compromise) -> list[datetime]:
        """Moments the stolen key may stop working: when the stolen certificates expire."""
        return sorted(
            chain.leaf.not_valid_after_utc + timedelta(seconds=1) for chain in c.stolen.values()
        )

    # -- real checks, cached --------------------------------------------------

    def _validates(
        self,
        anchors_key: Hashable,
        anchors: tuple[object, ...],
        chain: Chain,
        family: str,
        moment: datetime,
    ) -> bool:
        """Path validation at ``moment`` (the device's clock), cached by validity window."""
        return self._windows.holds(
            (anchors_key, id(chain), family),
            moment,
            lambda at: _validated(chain, anchors, at),
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
