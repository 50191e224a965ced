"""The fleet audit as operators ask for it: the CLI, the admin API and the metrics."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from homing.pki.keys import spki_pin
from homing.site import DataDir
from homing.site.datadir import DISTRUSTED_DEVICE_CAS
from homing.store import Database, audit
from homing.store import fleet_audit as rules

__all__ = ["distrusted_pins", "fleet_audit"]


def distrusted_pins(dd: DataDir) -> set[str]:
    """The SPKI pins of the device CAs this site distrusts (after a compromise)."""
    path = dd.pki_path(DISTRUSTED_DEVICE_CAS)
    if not path.exists():
        return set()
    return {spki_pin(c) for c in x509.load_pem_x509_certificates(path.read_bytes())}


def fleet_audit(
    dd: DataDir,
    db: Database,
    actor: str,
    now: datetime,
    *,
    never_seen_days: float = 30,
    max_certificate_age_days: float = 365,
) -> dict[str, Any]:
    """Each finding with the devices it names, and the thresholds used; audited."""
    dd.settings()  # a data directory, or the one error that says there is none
    with db.begin() as conn:
        found = rules.findings(
            conn,
            now,
            never_seen_after=timedelta(days=never_seen_days),
            max_certificate_age=timedelta(days=max_certificate_age_days),
            distrusted_pins=distrusted_pins(dd),
        )
        audit.audit(conn, now, actor, "fleet_audit", None, {k: len(v) for k, v in found.items()})
    return {
        "at": now.isoformat(),
        "thresholds": {
            "never_seen_days": never_seen_days,
            "max_certificate_age_days": max_certificate_age_days,
        },
        "findings": found,
    }
