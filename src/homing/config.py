"""Named limits and lifetimes, in one place.

Every size, count and depth an attacker controls has a limit here, and every
lifetime an operator may want to change has a default here, so that a review
of homing's exposure starts and ends with this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

__all__ = ["Expiries", "Limits", "Validity"]


@dataclass(frozen=True)
class Limits:
    """Upper bounds on attacker-controlled input, enforced before parsing."""

    # A DER certificate from a peer; real ones are well under 4 KiB.
    max_certificate_bytes: int = 16 * 1024
    # Root CA -> issuing CA -> leaf is depth 2; allow one spare level.
    max_chain_depth: int = 3
    # Intermediates a peer may present alongside its leaf.
    max_intermediates: int = 4
    max_csr_bytes: int = 16 * 1024
    # python-tuf's own default; homing always walks from the newest verified
    # root, so this bounds one walk, not a device's lifetime.
    max_root_rotations: int = 256
    max_root_bytes: int = 512 * 1024
    max_timestamp_bytes: int = 16 * 1024
    max_snapshot_bytes: int = 2 * 1024 * 1024
    max_targets_bytes: int = 5 * 1024 * 1024
    max_pin_policy_bytes: int = 256 * 1024
    # Answers of the home server API to the agent (check-in, recovery, EST);
    # real ones are a few KiB.
    max_answer_bytes: int = 1024 * 1024
    # The body of a refusal or of a metadata 404: only a reason is read.
    max_error_body_bytes: int = 4096
    # Nesting of a JSON request body the server parses; homing's own are 3 deep.
    max_json_depth: int = 32
    # Check-in history rows kept per device: the newest overwrites the oldest,
    # so what one device sends cannot grow the database past this (its latest
    # state lives in its own row). At the agent's hourly default, ten days.
    checkin_history_per_device: int = 240
    # Recovery challenges one device may hold open at once; older ones lapse.
    open_recovery_nonces_per_device: int = 8
    # One request to the home server, headers and body, from start to end.
    request_deadline_seconds: float = 60.0
    # One read from the network.
    read_timeout_seconds: float = 15.0


@dataclass(frozen=True)
class Expiries:
    """How long each kind of TUF metadata stays valid once signed.

    Offline-signed roles live long because devices sleep for years and the
    keys that sign them sit in a safe; online roles live short because their
    expiry bounds how long a stolen online key is worth anything.
    """

    root: timedelta = timedelta(days=5 * 365)
    targets: timedelta = timedelta(days=2 * 365)
    delegations: timedelta = timedelta(days=2 * 365)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)
    # An offline recovery bundle's own snapshot and timestamp: long enough to
    # carry it to a device by hand, short enough to bound a replay of it.
    recovery_bundle: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Validity:
    """Certificate lifetimes per profile."""

    root_ca: timedelta = timedelta(days=20 * 365)
    issuing_ca: timedelta = timedelta(days=10 * 365)
    server: timedelta = timedelta(days=30)
    device: timedelta = timedelta(days=365)
    # Certificates are back-dated a little so a device whose clock lags the
    # server's by minutes does not reject a brand-new certificate.
    backdate: timedelta = field(default=timedelta(minutes=5))
