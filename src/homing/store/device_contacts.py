"""Each contact of a device: whether its certificate may act, and what it reported.

The standing of a presented certificate (its serial *and* its key against the
device's registered key) is looked up on every request; check-ins are recorded
in batches, each device keeping a bounded history.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select, update

from homing.config import Limits
from homing.store.devices import SUPERSEDED, Presented
from homing.store.schema import checkins, devices
from homing.store.sql import db_time as _db_time
from homing.store.sql import driver_executemany, driver_rows

__all__ = [
    "CLONE_WINDOW",
    "UNKNOWN_CERTIFICATE",
    "CheckIn",
    "Standing",
    "authorise_certificate",
    "count_checkins",
    "prune_checkins",
    "record_checkins",
    "record_failure",
    "refusal",
]


@dataclass(frozen=True)
class CheckIn:
    device_id: str
    at: datetime
    firmware_version: str | None
    root_version: int | None
    timestamp_version: int | None
    targets_version: int | None
    health: dict[str, Any] | None
    hardware: str | None = None
    pin_policy_sha256: str | None = None
    pins_matched: tuple[str, ...] = ()
    # Where the check-in came from (the peer address), to notice a clone.
    address: str | None = None


# A certificate used from two addresses this close together is suspected of
# being in two devices at once (a roaming device rarely moves this fast).
CLONE_WINDOW = timedelta(minutes=5)


# A certificate that chains to a CA of the site but has no record here: one
# issued after the backup this site was restored from (or forged with a
# stolen CA key). Answered with key-proof recovery, which only the device's
# registered key passes.
UNKNOWN_CERTIFICATE = "certificate is not known to this server"


def refusal(row: Standing | None, presented: Presented, device_id: str) -> str | None:
    """Why a certificate of this standing may not act for ``device_id``; None when it may."""
    if row is None:
        return UNKNOWN_CERTIFICATE
    if row.subject_id != device_id:
        return "certificate does not belong to this device"
    if row.status is None:
        return "device is not enrolled"
    if row.status != "active":
        return "device is revoked"
    if row.reason == SUPERSEDED:
        return "certificate superseded: the device has registered a newer key"
    if row.revoked_at is not None:
        return "device is revoked"
    if row.key_spki != presented.key_spki:
        return "certificate is not for the device's registered key"
    return None


class Standing(NamedTuple):
    """A certificate as the server knows it, with its device's status and registered key."""

    serial: str
    revoked_at: Any
    reason: str | None
    subject_id: str
    status: str | None
    key_spki: bytes | None


def _standing(conn: Connection, presented: Sequence[Presented]) -> dict[str, Standing]:
    keys = sorted({format(p.serial, "x") for p in presented})
    # Only generated placeholder names are put into the text; values are bound.
    marks = ", ".join(f":s{i}" for i in range(len(keys)))
    rows = driver_rows(
        conn,
        "SELECT c.serial, c.revoked_at, c.reason, c.subject_id, d.status, d.key_spki "  # noqa: S608
        "FROM certificates AS c LEFT OUTER JOIN devices AS d ON d.device_id = c.subject_id "
        f"WHERE c.serial IN ({marks})",
        {f"s{i}": key for i, key in enumerate(keys)},
    )
    return {
        r[0]: Standing(r[0], r[1], r[2], r[3], r[4], bytes(r[5]) if r[5] else None) for r in rows
    }


def _checkin_params(conn: Connection, c: CheckIn) -> dict[str, Any]:
    return {
        "device_id": c.device_id,
        "at": _db_time(conn, c.at),
        "firmware_version": c.firmware_version,
        "root_version": c.root_version,
        "timestamp_version": c.timestamp_version,
        "targets_version": c.targets_version,
        "health": json.dumps(c.health) if c.health is not None else None,
    }


def authorise_certificate(conn: Connection, presented: Presented, device_id: str) -> str | None:
    """Why a verified client certificate may not act, or None when it may.

    Standing is the certificate's serial *and* its key: the device must be
    active, the certificate not revoked, and its key the device's registered
    key. One indexed query per request, so a revocation or re-key takes
    effect on the next request in every server process.
    """
    standing = _standing(conn, [presented]).get(format(presented.serial, "x"))
    return refusal(standing, presented, device_id)


def record_checkins(
    conn: Connection,
    batch: Sequence[CheckIn],
    presented: Sequence[Presented] | None = None,
    history: int = Limits.checkin_history_per_device,
) -> list[str | None]:
    """Record check-ins and update each device's last known state, in one transaction.

    With ``presented`` (the client certificate of each check-in), each is first
    authorised exactly as ``authorise_certificate`` would, in one query for
    the batch; refused check-ins are not recorded. Returns, per check-in,
    None when recorded or the reason it was refused.

    Each device keeps at most ``history`` history rows: its check-in count
    picks a slot, and a new check-in overwrites that slot's row, so a device
    that checks in without pause rewrites its own history instead of filling
    the disk. The count is raised before it is read, under the device row's
    lock, so concurrent batches never take the same slot.
    """
    if not batch:
        return []
    refusals: list[str | None] = [None] * len(batch)
    if presented is not None:
        standing = _standing(conn, presented)
        refusals = [
            refusal(standing.get(format(p.serial, "x")), p, c.device_id)
            for c, p in zip(batch, presented, strict=True)
        ]
    accepted = [c for c, why in zip(batch, refusals, strict=True) if why is None]
    if not accepted:
        return refusals
    by_device: dict[str, list[CheckIn]] = {}
    for c in accepted:
        by_device.setdefault(c.device_id, []).append(c)
    # One lock order for every writer: concurrent batches never deadlock.
    order = sorted(by_device)
    driver_executemany(
        conn,
        "UPDATE devices SET checkin_seq = checkin_seq + :n WHERE device_id = :device_id",
        [{"device_id": d, "n": len(by_device[d])} for d in order],
    )
    marks = ", ".join(f":d{i}" for i in range(len(order)))
    counted = dict(
        driver_rows(
            conn,
            f"SELECT device_id, checkin_seq FROM devices WHERE device_id IN ({marks})",  # noqa: S608
            {f"d{i}": d for i, d in enumerate(order)},
        )
    )
    rows = []
    for device_id in order:
        mine = by_device[device_id]
        first = int(counted[device_id]) - len(mine)
        # More check-ins in one batch than slots: only the newest can be kept.
        for i, c in list(enumerate(mine))[-history:]:
            rows.append({**_checkin_params(conn, c), "slot": (first + i) % history})
    driver_executemany(
        conn,
        "INSERT INTO checkins (device_id, slot, at, firmware_version, root_version, "
        "timestamp_version, targets_version, health) VALUES (:device_id, :slot, :at, "
        ":firmware_version, :root_version, :timestamp_version, :targets_version, :health) "
        "ON CONFLICT (device_id, slot) DO UPDATE SET at = excluded.at, "
        "firmware_version = excluded.firmware_version, root_version = excluded.root_version, "
        "timestamp_version = excluded.timestamp_version, "
        "targets_version = excluded.targets_version, health = excluded.health",
        rows,
    )
    latest = {d: max(reversed(by_device[d]), key=lambda c: c.at) for d in order}
    driver_executemany(
        conn,
        "UPDATE devices SET last_seen = :at, firmware_version = :firmware_version, "
        "root_version = :root_version, timestamp_version = :timestamp_version, "
        "targets_version = :targets_version, health = :health, "
        "hardware = COALESCE(:hardware, hardware), "
        "pin_policy_sha256 = :pin_policy_sha256, pins_matched = :pins_matched, "
        # The same certificate from another address within CLONE_WINDOW (or from
        # two addresses in this batch): a clone is suspected.
        "clone_suspected_at = CASE WHEN :two_places = 1 "
        "OR (CAST(:address AS VARCHAR(64)) IS NOT NULL AND last_address IS NOT NULL "
        "AND last_address <> :address AND last_seen >= :window_start) "
        "THEN :at ELSE clone_suspected_at END, "
        "last_address = COALESCE(:address, last_address) "
        "WHERE device_id = :device_id AND (last_seen IS NULL OR last_seen <= :at)",
        [
            {
                **_checkin_params(conn, c),
                "hardware": c.hardware,
                "pin_policy_sha256": c.pin_policy_sha256,
                "pins_matched": json.dumps(list(c.pins_matched)) if c.pins_matched else None,
                "address": c.address,
                "window_start": _db_time(conn, c.at - CLONE_WINDOW),
                "two_places": int(
                    len({x.address for x in by_device[c.device_id] if x.address}) > 1
                ),
            }
            for c in (latest[d] for d in order)
        ],
    )
    return refusals


def record_failure(conn: Connection, device_id: str, when: datetime, reason: str) -> None:
    """Remember that the server refused this device's contact (a gauge and the fleet view)."""
    conn.execute(
        update(devices)
        .where(devices.c.device_id == device_id)
        .values(last_failure_at=when, last_failure=reason[:256])
    )


def prune_checkins(conn: Connection, before: datetime, limit: int) -> int:
    """Delete at most ``limit`` check-in rows older than ``before``; returns how many.

    Bounded so one maintenance pass never holds a long write lock; the
    device's last known state stays in its own row.
    """
    from sqlalchemy import delete

    oldest = select(checkins.c.id).where(checkins.c.at < before).limit(limit).scalar_subquery()
    result = conn.execute(delete(checkins).where(checkins.c.id.in_(oldest)))
    return int(result.rowcount)


def count_checkins(conn: Connection, device_id: str | None = None) -> int:
    query = select(func.count()).select_from(checkins)
    if device_id is not None:
        query = query.where(checkins.c.device_id == device_id)
    return int(conn.execute(query).scalar_one())
