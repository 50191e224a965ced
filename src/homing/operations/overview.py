"""The operator's view of the fleet: one read for the dashboard, the gauges and status.

``fleet_overview`` gathers, at one ``now``: devices by the trust they hold
(root, pin policy, server-CA generation reached, device-CA that issued their
certificate), firmware, who has gone quiet or was last refused, the device
certificate expiry histogram, and the expiry timeline of every metadata role
and certificate with its warning. Nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from homing.pki.keys import spki_pin
from homing.site import DataDir
from homing.store import Database, firmware, fleet_view
from homing.trust.repository import FIRMWARE_ROLE

__all__ = [
    "CERTIFICATE_WARNING",
    "OFFLINE_ROLE_WARNING",
    "ONLINE_ROLE_WARNING",
    "Expiry",
    "FleetOverview",
    "expiry_timeline",
    "fleet_overview",
]

# Offline-signed roles need a ceremony to renew: warn this far ahead.
OFFLINE_ROLE_WARNING = timedelta(days=90)
ONLINE_ROLE_WARNING = timedelta(hours=6)
CERTIFICATE_WARNING = timedelta(days=30)
CA_WARNING = timedelta(days=180)


@dataclass(frozen=True)
class Expiry:
    """One thing that expires: a metadata role or a certificate."""

    name: str
    kind: str  # "metadata" | "certificate"
    expires: datetime
    seconds_left: float
    warning: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "expires": self.expires.isoformat(),
            "seconds_left": self.seconds_left,
            "warning": self.warning,
        }


@dataclass(frozen=True)
class FleetOverview:
    now: datetime
    counts: fleet_view.FleetCounts
    by_device_ca: dict[str, int]
    certificate_expiry: list[tuple[str, int]]
    timeline: list[Expiry]
    rollouts: list[firmware.Rollout]
    not_seen_days: float

    @property
    def warnings(self) -> list[str]:
        found = [e.warning for e in self.timeline if e.warning]
        found += [
            f"rollout {r.id} halted: {r.halt_reason}" for r in self.rollouts if r.status == "halted"
        ]
        if self.counts.last_contact_failed:
            found.append(
                f"{self.counts.last_contact_failed} devices were refused at their last contact"
            )
        return found


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _warning(name: str, expires: datetime, now: datetime, window: timedelta) -> str | None:
    if expires <= now:
        return f"{name} EXPIRED at {expires.isoformat()}"
    if expires - now <= window:
        return f"{name} expires {expires.isoformat()}: plan its renewal"
    return None


def expiry_timeline(dd: DataDir, now: datetime) -> list[Expiry]:
    """Every metadata role and site certificate, soonest first, each with its warning."""
    settings = dd.settings()
    repo = dd.repository(settings)
    roles = {
        "root": repo.root().signed.expires,
        "targets": repo.targets().signed.expires,
        FIRMWARE_ROLE: repo.targets(FIRMWARE_ROLE).signed.expires,
        "snapshot": repo.snapshot().signed.expires,
        "timestamp": repo.timestamp().signed.expires,
    }
    items: list[Expiry] = []
    for role, expires in roles.items():
        window = ONLINE_ROLE_WARNING if role in ("snapshot", "timestamp") else OFFLINE_ROLE_WARNING
        items.append(
            Expiry(
                f"{role} metadata",
                "metadata",
                expires,
                (expires - now).total_seconds(),
                _warning(f"{role} metadata", expires, now, window),
            )
        )
    leaf = dd.certificates("server-chain.pem")[0]
    # The server renews its certificate at two thirds of its lifetime; a
    # quarter left means renewal has been failing.
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    server_warning = None
    if leaf.not_valid_after_utc - now <= lifetime / 4:
        server_warning = (
            f"server certificate expires {leaf.not_valid_after_utc.isoformat()} "
            "and was not renewed: is the server running?"
        )
    items.append(
        Expiry(
            "server certificate",
            "certificate",
            leaf.not_valid_after_utc,
            (leaf.not_valid_after_utc - now).total_seconds(),
            server_warning,
        )
    )
    cas = [*dd.certificates("root-ca.pem"), dd.certificate("server-ca.pem")]
    cas += dd.certificates("device-cas.pem")
    for ca in cas:
        name = _cn(ca)
        expires = ca.not_valid_after_utc
        items.append(
            Expiry(
                name,
                "certificate",
                expires,
                (expires - now).total_seconds(),
                _warning(name, expires, now, CA_WARNING),
            )
        )
    return sorted(items, key=lambda e: e.expires)


def fleet_overview(
    dd: DataDir, db: Database, now: datetime, *, not_seen_days: float = 7
) -> FleetOverview:
    """The whole fleet at ``now``; devices quiet for ``not_seen_days`` are counted as such."""
    device_cas = {spki_pin(c): _cn(c) for c in dd.certificates("device-cas.pem")}
    retired = dd.pki_path("retired")
    if retired.is_dir():
        for path in sorted(retired.glob("device-ca-g*.pem")):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            device_cas.setdefault(spki_pin(cert), _cn(cert))
    with db.engine.connect() as conn:
        counts = fleet_view.fleet_counts(conn, now, timedelta(days=not_seen_days))
        histogram = fleet_view.certificate_expiry_histogram(conn, now)
        issuers = fleet_view.generation_by_issuer(conn)
        rollouts = firmware.list_rollouts(conn)
    by_device_ca: dict[str, int] = {}
    for pin, count in issuers.items():
        name = device_cas.get(pin, "unknown CA")
        by_device_ca[name] = by_device_ca.get(name, 0) + count
    return FleetOverview(
        now=now,
        counts=counts,
        by_device_ca=by_device_ca,
        certificate_expiry=histogram,
        timeline=expiry_timeline(dd, now),
        rollouts=rollouts,
        not_seen_days=not_seen_days,
    )
