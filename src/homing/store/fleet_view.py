"""Read-only queries behind the operator's fleet view and its gauges.

Each answers one question about the whole fleet in one grouped query, so the
dashboard and a Prometheus scrape cost a handful of indexed reads whatever
the fleet's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, case, func, or_, select

from homing.store.schema import certificates, devices, pin_policies

__all__ = [
    "FleetCounts",
    "certificate_expiry_histogram",
    "fleet_counts",
    "generation_by_issuer",
]

# Histogram buckets of device certificate lifetime left, in days (upper bounds).
EXPIRY_BUCKET_DAYS = (1, 7, 14, 30, 60, 90, 180, 365)


@dataclass(frozen=True)
class FleetCounts:
    active: int
    revoked: int
    by_root_version: dict[str, int]
    by_pin_policy_version: dict[str, int]
    by_server_ca_generation: dict[str, int]
    by_firmware: dict[str, int]
    not_seen: int
    never_seen: int
    last_contact_failed: int
    current_pin_policy_version: int | None

    @property
    def behind_pin_policy(self) -> int:
        """Active devices not (known to be) on the newest published pin policy."""
        current = str(self.current_pin_policy_version)
        return sum(n for v, n in self.by_pin_policy_version.items() if v != current)


def _grouped(conn: Connection, column: object) -> dict[str, int]:
    rows = conn.execute(
        select(column, func.count())  # type: ignore[call-overload]
        .where(devices.c.status == "active")
        .group_by(column)
    ).all()
    return {("unknown" if k is None else str(k)): int(v) for k, v in rows}


def fleet_counts(conn: Connection, now: datetime, not_seen_for: timedelta) -> FleetCounts:
    """Active devices by the trust they hold and the firmware they run."""
    by_status: dict[str, int] = dict(
        conn.execute(select(devices.c.status, func.count()).group_by(devices.c.status)).all()
    )
    policy_join = devices.outerjoin(
        pin_policies, devices.c.pin_policy_sha256 == pin_policies.c.sha256
    )
    by_policy: dict[str, int] = {}
    by_generation: dict[str, int] = {}
    rows = conn.execute(
        select(
            pin_policies.c.version,
            pin_policies.c.server_ca_generation,
            pin_policies.c.pins,
            devices.c.pins_matched,
            func.count(),
        )
        .select_from(policy_join)
        .where(devices.c.status == "active")
        .group_by(
            pin_policies.c.version,
            pin_policies.c.server_ca_generation,
            pin_policies.c.pins,
            devices.c.pins_matched,
        )
    ).all()

    for version, generation, pins, matched, count in rows:
        key = "unknown" if version is None else str(version)
        by_policy[key] = by_policy.get(key, 0) + int(count)
        # The generation reached: the first pin of a policy is its active
        # server CA, the second its backup (one generation on).
        gen = "unknown"
        if version is not None and matched:
            listed = json.loads(pins)
            found = [listed.index(p) for p in json.loads(matched) if p in listed]
            if found:
                gen = str(int(generation) + min(found))
        by_generation[gen] = by_generation.get(gen, 0) + int(count)
    active = devices.c.status == "active"
    not_seen = conn.execute(
        select(func.count())
        .select_from(devices)
        .where(
            active,
            or_(devices.c.last_seen.is_(None), devices.c.last_seen < now - not_seen_for),
        )
    ).scalar_one()
    never_seen = conn.execute(
        select(func.count()).select_from(devices).where(active, devices.c.last_seen.is_(None))
    ).scalar_one()
    failed = conn.execute(
        select(func.count())
        .select_from(devices)
        .where(
            active,
            devices.c.last_failure_at.is_not(None),
            or_(devices.c.last_seen.is_(None), devices.c.last_failure_at > devices.c.last_seen),
        )
    ).scalar_one()
    return FleetCounts(
        active=int(by_status.get("active", 0)),
        revoked=int(by_status.get("revoked", 0)),
        by_root_version=_grouped(conn, devices.c.root_version),
        by_pin_policy_version=by_policy,
        by_server_ca_generation=by_generation,
        by_firmware=_grouped(conn, devices.c.firmware_version),
        not_seen=int(not_seen),
        never_seen=int(never_seen),
        last_contact_failed=int(failed),
        current_pin_policy_version=conn.execute(
            select(func.max(pin_policies.c.version))
        ).scalar_one(),
    )


def certificate_expiry_histogram(conn: Connection, now: datetime) -> list[tuple[str, int]]:
    """Valid, unrevoked device certificates by time left, in ``EXPIRY_BUCKET_DAYS`` buckets."""
    left = certificates.c.not_after
    whens = []
    lower = now
    for days in EXPIRY_BUCKET_DAYS:
        upper = now + timedelta(days=days)
        whens.append((and_(left > lower, left <= upper), f"<= {days} d"))
        lower = upper
    bucket = case(*whens, else_=f"> {EXPIRY_BUCKET_DAYS[-1]} d")
    rows: dict[str, int] = dict(
        conn.execute(
            select(bucket, func.count())
            .where(
                certificates.c.kind == "device",
                certificates.c.revoked_at.is_(None),
                certificates.c.not_after > now,
            )
            .group_by(bucket)
        ).all()
    )
    labels = [f"<= {d} d" for d in EXPIRY_BUCKET_DAYS] + [f"> {EXPIRY_BUCKET_DAYS[-1]} d"]
    return [(label, int(rows.get(label, 0))) for label in labels]


def generation_by_issuer(conn: Connection) -> dict[str, int]:
    """Unrevoked device certificates by the SPKI pin of the CA that issued them."""
    rows = conn.execute(
        select(certificates.c.issuer_pin, func.count())
        .where(certificates.c.kind == "device", certificates.c.revoked_at.is_(None))
        .group_by(certificates.c.issuer_pin)
    ).all()
    return {str(k): int(v) for k, v in rows}
