"""Devices, their check-ins and the per-request authorisation lookup."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from homing.config import Limits
from homing.errors import ConflictError, NotFoundError, PolicyError
from homing.store.certificates import certificate as certificate_row
from homing.store.certificates import revoke_certificate
from homing.store.schema import certificates, checkins, devices
from homing.store.sql import db_time as _db_time
from homing.store.sql import driver_executemany, driver_rows

__all__ = [
    "SUPERSEDED",
    "CheckIn",
    "DeviceRow",
    "KeyTaken",
    "Presented",
    "Standing",
    "authorise_certificate",
    "device",
    "enroll_device",
    "key_fingerprint",
    "key_holder",
    "list_devices",
    "prune_checkins",
    "record_checkins",
    "record_failure",
    "refusal",
    "revoke",
    "revoke_device",
    "set_device_key",
]

# RFC 5280 §5.3.1 reason for a certificate whose key the device replaced.
SUPERSEDED = "superseded"


class Presented(NamedTuple):
    """What a client presented: its certificate's serial and public key (DER SPKI)."""

    serial: int
    key_spki: bytes


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    status: str
    hardware: str | None
    key_spki: bytes
    enrolled_at: datetime
    enrolled_by: str
    last_seen: datetime | None
    firmware_version: str | None
    root_version: int | None
    timestamp_version: int | None
    targets_version: int | None
    health: dict[str, Any] | None
    revoked_at: datetime | None
    revoke_reason: str | None
    pin_policy_sha256: str | None = None
    pins_matched: tuple[str, ...] = ()
    last_failure_at: datetime | None = None
    last_failure: str | None = None
    # Check-ins recorded over the device's life (its history keeps the newest).
    checkin_seq: int = 0
    key_sha256: str | None = None
    last_address: str | None = None
    clone_suspected_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "hardware": self.hardware,
            "enrolled_at": self.enrolled_at.isoformat(),
            "enrolled_by": self.enrolled_by,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "firmware_version": self.firmware_version,
            "trust": {
                "root": self.root_version,
                "timestamp": self.timestamp_version,
                "targets": self.targets_version,
                "pin_policy": self.pin_policy_sha256,
                "pins_matched": list(self.pins_matched),
            },
            "health": self.health,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoke_reason": self.revoke_reason,
            "last_failure_at": self.last_failure_at.isoformat() if self.last_failure_at else None,
            "last_failure": self.last_failure,
        }


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


def _device(r: Any) -> DeviceRow:
    m = dict(r._mapping)
    m["health"] = json.loads(m["health"]) if m["health"] else None
    m["pins_matched"] = tuple(json.loads(m["pins_matched"])) if m["pins_matched"] else ()
    return DeviceRow(**m)


def key_fingerprint(key_spki: bytes) -> str:
    """The SHA-256 (hex) of a DER SubjectPublicKeyInfo: what makes a key one device's."""
    return hashlib.sha256(key_spki).hexdigest()


def key_holder(conn: Connection, key_spki: bytes) -> str | None:
    """The device this key is registered to, if any."""
    fingerprint = key_fingerprint(key_spki)
    return conn.execute(
        select(devices.c.device_id).where(devices.c.key_sha256 == fingerprint)
    ).scalar_one_or_none()


class KeyTaken(ConflictError):
    """A key registered to another device: one key, one device."""

    def __init__(self, holder: str, wanted: str | None = None) -> None:
        # Whoever sent the key is not told which device holds it.
        super().__init__("this public key is registered to another device: one key, one device")
        self.holder = holder
        self.wanted = wanted


def enroll_device(
    conn: Connection,
    device_id: str,
    key_spki: bytes,
    when: datetime,
    enrolled_by: str,
    hardware: str | None = None,
) -> None:
    """A new device with its key; ConflictError if the id is taken, KeyTaken if the key is."""
    holder = key_holder(conn, key_spki)
    if holder is not None:
        raise KeyTaken(holder, device_id)
    try:
        with conn.begin_nested():
            conn.execute(
                insert(devices).values(
                    device_id=device_id,
                    status="active",
                    hardware=hardware,
                    key_spki=key_spki,
                    key_sha256=key_fingerprint(key_spki),
                    enrolled_at=when,
                    enrolled_by=enrolled_by,
                )
            )
    except IntegrityError as e:
        if device(conn, device_id) is None:
            # The key was taken by a concurrent enrollment since it was looked up.
            raise KeyTaken(key_holder(conn, key_spki) or "another device") from e
        raise ConflictError(f"device {device_id!r} is already enrolled") from e


def device(conn: Connection, device_id: str) -> DeviceRow | None:
    r = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
    return _device(r) if r else None


def set_device_key(conn: Connection, device_id: str, key_spki: bytes, when: datetime) -> int:
    """Register a device's new key; every certificate of the old key is superseded.

    A re-key replaces the device's identity: the old certificate and key can
    neither check in, nor re-enroll, nor recover. Returns how many
    certificates were revoked as superseded.
    """
    row = device(conn, device_id)
    if row is None:
        raise NotFoundError(f"no device {device_id!r}")
    if row.key_spki == key_spki:
        return 0
    holder = key_holder(conn, key_spki)
    if holder is not None and holder != device_id:
        raise KeyTaken(holder)
    try:
        with conn.begin_nested():
            conn.execute(
                update(devices)
                .where(devices.c.device_id == device_id)
                .values(key_spki=key_spki, key_sha256=key_fingerprint(key_spki))
            )
    except IntegrityError as e:
        raise KeyTaken(key_holder(conn, key_spki) or "another device") from e
    return _revoke_certificates_of(conn, device_id, when, SUPERSEDED)


def _revoke_certificates_of(conn: Connection, device_id: str, when: datetime, reason: str) -> int:
    result = conn.execute(
        update(certificates)
        .where(
            certificates.c.subject_id == device_id,
            certificates.c.kind == "device",
            certificates.c.revoked_at.is_(None),
        )
        .values(revoked_at=when, reason=reason)
    )
    return int(result.rowcount)


def list_devices(
    conn: Connection,
    *,
    search: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[DeviceRow]:
    query = select(devices).order_by(devices.c.device_id).limit(limit).offset(offset)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                devices.c.device_id.like(pattern, escape="\\"),
                devices.c.firmware_version.like(pattern, escape="\\"),
                devices.c.hardware.like(pattern, escape="\\"),
            )
        )
    if status:
        query = query.where(devices.c.status == status)
    return [_device(r) for r in conn.execute(query)]


def revoke_device(conn: Connection, device_id: str, when: datetime, reason: str) -> int:
    """Revoke a device and every certificate it holds; returns certificates revoked.

    This is the one meaning of revocation for a device, whichever command or
    endpoint asks: the device row says revoked, so it can neither check in,
    re-enroll, recover by key proof nor be enrolled again. A device that
    only ever had certificates from ``homing pki issue`` (no device row) has
    those revoked; the device id is then kept as a revoked tombstone so no
    factory can enroll it afresh.
    """
    row = device(conn, device_id)
    if row is None:
        found = conn.execute(
            select(func.count())
            .select_from(certificates)
            .where(certificates.c.subject_id == device_id, certificates.c.kind == "device")
        ).scalar_one()
        if not found:
            raise NotFoundError(f"no device {device_id!r} and no certificate issued to it")
        conn.execute(
            insert(devices).values(
                device_id=device_id,
                status="revoked",
                key_spki=b"",
                enrolled_at=when,
                enrolled_by="revocation",
                revoked_at=when,
                revoke_reason=reason,
            )
        )
    else:
        conn.execute(
            update(devices)
            .where(devices.c.device_id == device_id)
            .values(status="revoked", revoked_at=when, revoke_reason=reason)
        )
    return _revoke_certificates_of(conn, device_id, when, reason)


def revoke(
    conn: Connection,
    when: datetime,
    reason: str,
    *,
    device_id: str | None = None,
    serial: int | None = None,
) -> tuple[int, str | None]:
    """Revoke by device id or by certificate serial; returns (count, device id revoked).

    A device certificate names its device's key, and "a device is its key":
    revoking one by serial revokes its device (every certificate of an older
    key was already superseded at the re-key). A server certificate is
    revoked alone.
    """
    if (device_id is None) == (serial is None):
        raise PolicyError("name exactly one of a device id or a serial")
    if serial is not None:
        cert = certificate_row(conn, serial)
        if cert is None:
            raise NotFoundError(f"no certificate with serial {serial:x} was issued here")
        if cert.kind != "device":
            revoke_certificate(conn, serial, when, reason)
            return 1, None
        device_id = cert.subject_id
    assert device_id is not None
    return revoke_device(conn, device_id, when, reason), device_id


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


def fleet_summary(conn: Connection, now: datetime, expiring_within: Any) -> dict[str, Any]:
    """Devices by status, trust version and firmware; expiring device certificates."""
    by_status: dict[str, int] = dict(
        conn.execute(select(devices.c.status, func.count()).group_by(devices.c.status)).all()
    )
    by_root = {
        str(k): v
        for k, v in conn.execute(
            select(devices.c.root_version, func.count()).group_by(devices.c.root_version)
        ).all()
    }
    by_firmware = {
        str(k): v
        for k, v in conn.execute(
            select(devices.c.firmware_version, func.count()).group_by(devices.c.firmware_version)
        ).all()
    }
    expiring = conn.execute(
        select(func.count())
        .select_from(certificates)
        .where(
            and_(
                certificates.c.kind == "device",
                certificates.c.revoked_at.is_(None),
                certificates.c.not_after > now,
                certificates.c.not_after <= now + expiring_within,
            )
        )
    ).scalar_one()
    never_seen = conn.execute(
        select(func.count()).select_from(devices).where(devices.c.last_seen.is_(None))
    ).scalar_one()
    last_seen = conn.execute(select(func.max(devices.c.last_seen))).scalar_one()
    return {
        "devices_by_status": by_status,
        "devices_by_root_version": by_root,
        "devices_by_firmware": by_firmware,
        "device_certificates_expiring": int(expiring),
        "devices_never_seen": int(never_seen),
        "last_check_in": last_seen.isoformat() if last_seen else None,
    }
