"""Devices: enrollment, keys, revocation, listing and the fleet summary.

Each contact of a device (its certificate's standing, its check-ins) is
homing.store.device_contacts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import ConflictError, NotFoundError, PolicyError
from homing.store.certificates import certificate as certificate_row
from homing.store.certificates import revoke_certificate
from homing.store.schema import certificates, devices

__all__ = [
    "SUPERSEDED",
    "DeviceRow",
    "KeyTaken",
    "Presented",
    "device",
    "enroll_device",
    "key_fingerprint",
    "key_holder",
    "list_devices",
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


# Statements of every enrollment, built once: building and keying an expression
# costs more than SQLite's work, inside a transaction every writer waits for.
_ID_OR_KEY_HOLDERS = select(devices.c.device_id).where(
    or_(
        devices.c.device_id == bindparam("device_id"),
        devices.c.key_sha256 == bindparam("key_sha256"),
    )
)
_INSERT_DEVICE = insert(devices)


def require_new(conn: Connection, device_id: str, key_spki: bytes) -> None:
    """ConflictError if ``device_id`` is enrolled, KeyTaken if the key is another device's.

    One query for both: it runs inside every enrollment's write transaction,
    where each statement is time every other writer waits.
    """
    holders = list(
        conn.execute(
            _ID_OR_KEY_HOLDERS, {"device_id": device_id, "key_sha256": key_fingerprint(key_spki)}
        ).scalars()
    )
    if device_id in holders:
        raise ConflictError(f"device {device_id!r} is already enrolled")
    if holders:
        raise KeyTaken(holders[0], device_id)


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
    require_new(conn, device_id, key_spki)
    insert_new_device(conn, device_id, key_spki, when, enrolled_by, hardware)


def insert_new_device(
    conn: Connection,
    device_id: str,
    key_spki: bytes,
    when: datetime,
    enrolled_by: str,
    hardware: str | None = None,
) -> None:
    """``enroll_device`` for a caller that ran ``require_new`` in this same transaction.

    A concurrent enrollment (PostgreSQL lets two run at once) still ends in
    ConflictError or KeyTaken, from the table's unique keys.
    """
    try:
        with conn.begin_nested():
            conn.execute(
                _INSERT_DEVICE,
                {
                    "device_id": device_id,
                    "status": "active",
                    "hardware": hardware,
                    "key_spki": key_spki,
                    "key_sha256": key_fingerprint(key_spki),
                    "enrolled_at": when,
                    "enrolled_by": enrolled_by,
                },
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
