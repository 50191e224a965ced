"""The agent's decisions, without I/O: given state, time and the server's answers, what next.

Everything here takes plain values and an explicit ``now`` and returns a
typed decision or raises a ``homing.errors`` type; the agent's shell
(``homing.agent.agent``) does the I/O around it, and the fleet simulator
applies the same rules to its devices.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from cryptography import x509

from homing.errors import PolicyError, TransportError
from homing.pki.keys import spki_pin
from homing.trust.pins import PinPolicy

__all__ = [
    "Assignment",
    "CertificateAction",
    "CheckInAnswer",
    "CycleReport",
    "Image",
    "TrustChannel",
    "accept_image",
    "certificate_action",
    "held_trust",
    "recovers_after",
    "retry_after_seconds",
]

# A server cannot ask a device to stay silent for longer than this.
MAX_RETRY_AFTER_SECONDS = 86400.0


class TrustChannel(enum.Enum):
    """Over which channel a cycle refreshed its trust (typed: callers never read step text)."""

    PINNED = "pinned"
    BOOTSTRAP = "bootstrap"


@dataclass
class CycleReport:
    """What one cycle did, step by step, and how it ended."""

    checked_in: bool = False
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    # The cycle ended because the device is revoked: it stops for good.
    revoked: bool = False
    trust: dict[str, int] = field(default_factory=dict)
    # Seconds the server asked the device to wait (HTTP Retry-After).
    retry_after: float | None = None
    # Which channel brought the trust this cycle used (None: not refreshed).
    trust_channel: TrustChannel | None = None
    # What the cycle did with the device certificate.
    renewed: bool = False
    recovered: bool = False
    # Firmware: the version committed this cycle, or why an assigned image was refused.
    committed_version: str | None = None
    update_refused: str | None = None
    # The pinned TLS connections home: how many resumed a session, how many were full.
    tls_handshakes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_in": self.checked_in,
            "steps": self.steps,
            "error": self.error,
            "revoked": self.revoked,
            "trust": self.trust,
            "tls_handshakes": self.tls_handshakes,
        }


class CertificateAction(enum.Enum):
    """What a cycle does with the device certificate."""

    KEEP = "keep"
    RENEW = "renew"
    RECOVER = "recover"


# The server's refusals of a device certificate that key-proof recovery answers:
# it expired, the CA that issued it was distrusted after its key was stolen, or
# the server has no record of it (restored from a backup taken before it).
RECOVERABLE_REFUSALS = frozenset(
    {"certificate_expired", "certificate_distrusted", "certificate_unknown"}
)


def recovers_after(code: str | None) -> bool:
    """Whether the server's refusal of this device's certificate is answered by recovery."""
    return code in RECOVERABLE_REFUSALS


def certificate_action(cert: x509.Certificate | None, now: datetime) -> CertificateAction:
    """Missing or expired: key-proof recovery. From two thirds of its lifetime: renewal.

    Two thirds leaves a device that is online now and then enough time to
    renew before expiry; the fleet simulator applies this same rule.
    """
    if cert is None or now >= cert.not_valid_after_utc:
        return CertificateAction.RECOVER
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if now >= cert.not_valid_before_utc + lifetime * 2 / 3:
        return CertificateAction.RENEW
    return CertificateAction.KEEP


@dataclass(frozen=True)
class Assignment:
    """An update the server assigns: a rollout and a signed target name."""

    rollout: int
    target: str


@dataclass(frozen=True)
class CheckInAnswer:
    """The check-in answer, its shape and types checked."""

    server_time: datetime
    assignment: Assignment | None

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> CheckInAnswer:
        """Raises TransportError naming the field a malformed answer gets wrong."""
        raw_time = doc.get("server_time")
        if not isinstance(raw_time, str) or len(raw_time) > 64:
            raise TransportError("the check-in answer has no valid 'server_time'")
        try:
            server_time = datetime.fromisoformat(raw_time)
        except ValueError as e:
            raise TransportError("the check-in answer's 'server_time' is not a date") from e
        if server_time.tzinfo is None:
            raise TransportError("the check-in answer's 'server_time' has no time zone")
        update = doc.get("update")
        assignment = None
        if update is not None:
            if not isinstance(update, dict):
                raise TransportError("the check-in answer's 'update' is not an object")
            rollout, target = update.get("rollout"), update.get("target")
            if not isinstance(rollout, int) or isinstance(rollout, bool) or rollout < 0:
                raise TransportError("the check-in answer's update has no valid 'rollout'")
            if not isinstance(target, str) or not 0 < len(target) <= 512:
                raise TransportError("the check-in answer's update has no valid 'target'")
            assignment = Assignment(rollout, target)
        return cls(server_time, assignment)


@dataclass(frozen=True)
class Image:
    """A firmware image the device accepts to install."""

    version: str
    sequence: int


def accept_image(custom: Any, hardware: str | None, installed_sequence: int) -> Image:
    """Whether a signed target may be installed here; PolicyError saying why not.

    ``custom`` is the target's signed custom metadata: it must name this
    device's hardware class and a sequence above the installed one
    (anti-rollback).
    """
    fields = custom if isinstance(custom, dict) else {}
    if fields.get("hardware") != hardware:
        raise PolicyError(f"image is for hardware {fields.get('hardware')!r}, not {hardware!r}")
    sequence = fields.get("sequence", 0)
    version = fields.get("version", "")
    if not isinstance(sequence, int) or isinstance(sequence, bool):
        raise PolicyError("image has no valid sequence number")
    if not isinstance(version, str):
        raise PolicyError("image has no valid version")
    if sequence <= installed_sequence:
        raise PolicyError(
            f"anti-rollback: sequence {sequence} is not above the installed {installed_sequence}"
        )
    return Image(version, sequence)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP-date; capped at a day."""
    if value is None:
        return None
    try:
        seconds = float(int(value.strip()))
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER_SECONDS))


def held_trust(policy: PinPolicy, chain: Sequence[x509.Certificate]) -> dict[str, Any]:
    """What this device trusts, as it reports it at check-in.

    The SHA-256 of its pin policy names the whole policy (the server keeps
    every one it published), and ``pins_matched`` the pins of ``chain`` (the
    chain this connection verified) that the policy holds: which server-CA
    generation the device reached home through.
    """
    held = set(policy.spki_pins)
    return {
        "pin_policy": hashlib.sha256(policy.to_bytes()).hexdigest(),
        "pins_matched": sorted({spki_pin(c) for c in chain} & held),
    }
