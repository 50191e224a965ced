"""What is wrong in the fleet, by its records: shared keys, silent devices, old or
distrusted certificates.

Each finding is a kind and the active devices it names. The rules read only
the database (and the CA pins the caller says are distrusted), so the CLI,
the admin API and the metrics agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, func, select

from homing.store.schema import certificates, devices

__all__ = ["KINDS", "findings"]

KINDS = ("shared_key", "never_seen", "old_certificate", "distrusted_ca", "clone_suspected")

# How long a clone suspicion stays a finding after the last time it was seen.
_CLONE_MEMORY = timedelta(days=30)


def findings(
    conn: Connection,
    now: datetime,
    *,
    never_seen_after: timedelta = timedelta(days=30),
    max_certificate_age: timedelta = timedelta(days=365),
    distrusted_pins: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Active devices by finding (each list sorted; an empty list is a clean bill).

    - ``shared_key``: its key is another device's too (enrolled before one
      key, one device held, or a clone);
    - ``never_seen``: enrolled longer than ``never_seen_after`` ago and never
      checked in (lost at the factory, or an enrollment nobody shipped);
    - ``old_certificate``: holds a live certificate issued longer than
      ``max_certificate_age`` ago (it is not renewing);
    - ``distrusted_ca``: holds a live certificate of a distrusted CA;
    - ``clone_suspected``: its certificate checked in from two addresses
      within minutes, in the last 30 days (one identity in two devices).
    """
    active = devices.c.status == "active"
    shared = (
        select(devices.c.key_spki)
        .where(active, func.length(devices.c.key_spki) > 0)
        .group_by(devices.c.key_spki)
        .having(func.count() > 1)
    )
    live_device_certificate = and_(
        certificates.c.kind == "device", certificates.c.revoked_at.is_(None)
    )
    holders = select(certificates.c.subject_id).where(live_device_certificate)
    pins = sorted(set(distrusted_pins))
    queries = {
        "shared_key": select(devices.c.device_id).where(active, devices.c.key_spki.in_(shared)),
        "never_seen": select(devices.c.device_id).where(
            active, devices.c.last_seen.is_(None), devices.c.enrolled_at < now - never_seen_after
        ),
        # By the newest live certificate: a device that renewed is not flagged.
        "old_certificate": select(devices.c.device_id).where(
            active,
            devices.c.device_id.in_(
                holders.group_by(certificates.c.subject_id).having(
                    func.max(certificates.c.issued_at) < now - max_certificate_age
                )
            ),
        ),
        "distrusted_ca": select(devices.c.device_id).where(
            active, devices.c.device_id.in_(holders.where(certificates.c.issuer_pin.in_(pins)))
        ),
        "clone_suspected": select(devices.c.device_id).where(
            active, devices.c.clone_suspected_at >= now - _CLONE_MEMORY
        ),
    }
    return {kind: sorted(conn.execute(query).scalars()) for kind, query in queries.items()}
