"""What a factory station may enroll: its manifest, its quota and expiry; blocked ids.

A station's secret is a bearer credential on a factory line: if it leaks,
whoever holds it enrolls what the station may. These bounds make that
little: a station with a manifest enrolls only the ids on it (and, where the
manifest names a key, only with that key); no station enrolls an id on
another station's manifest or a blocked id; a quota and an expiry bound the
rest. Checked in the enrollment's own transaction, before anything is issued.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import AuthError, ConflictError, NotFoundError
from homing.store.schema import (
    blocked_device_ids,
    devices,
    enrollment_manifest,
    factory_credentials,
)

__all__ = ["NotAllowed", "add_to_manifest", "block", "check_enrollment", "set_limits"]


class NotAllowed(AuthError):
    """The station proved itself, but may not enroll this device (now)."""


def _station(conn: Connection, station: str) -> None:
    found = conn.execute(
        select(factory_credentials.c.name).where(factory_credentials.c.name == station)
    ).first()
    if found is None:
        raise NotFoundError(f"no factory station {station!r}")


def add_to_manifest(
    conn: Connection,
    station: str,
    entries: Sequence[tuple[str, str | None]],
    when: datetime,
) -> int:
    """Put ``(device_id, key SHA-256 hex or None)`` on the station's manifest; how many.

    An id already on a manifest (this station's or another's) is refused, so
    a manifest can never quietly move a device to another line.
    """
    _station(conn, station)
    ids = [device_id for device_id, _ in entries]
    if len(set(ids)) != len(ids):
        raise ConflictError("the manifest names a device id twice")
    taken = conn.execute(
        select(enrollment_manifest.c.device_id, enrollment_manifest.c.station).where(
            enrollment_manifest.c.device_id.in_(ids[:1000])
        )
    ).first()
    if taken is not None:
        raise ConflictError(f"device id {taken[0]!r} is on station {taken[1]!r}'s manifest already")
    try:
        with conn.begin_nested():
            conn.execute(
                insert(enrollment_manifest),
                [
                    {"device_id": d, "station": station, "key_sha256": k, "added_at": when}
                    for d, k in entries
                ],
            )
    except IntegrityError as e:
        raise ConflictError("a device id of the manifest is on a manifest already") from e
    return len(entries)


def set_limits(
    conn: Connection, station: str, quota: int | None, expires_at: datetime | None
) -> None:
    """How many devices in all the station may enroll, and until when (None: unbounded)."""
    _station(conn, station)
    conn.execute(
        update(factory_credentials)
        .where(factory_credentials.c.name == station)
        .values(quota=quota, expires_at=expires_at)
    )


def block(conn: Connection, device_id: str, when: datetime, reason: str) -> None:
    """No station may enroll this id from now on (an enrolled device is revoked instead)."""
    enrolled = conn.execute(
        select(devices.c.device_id).where(devices.c.device_id == device_id)
    ).first()
    if enrolled is not None:
        raise ConflictError(f"device {device_id!r} is enrolled: revoke it instead")
    try:
        with conn.begin_nested():
            conn.execute(
                insert(blocked_device_ids).values(
                    device_id=device_id, blocked_at=when, reason=reason[:256]
                )
            )
    except IntegrityError as e:
        raise ConflictError(f"device id {device_id!r} is blocked already") from e


# The checks of every enrollment, built once: building and keying an expression
# costs more than SQLite's work, inside a transaction every writer waits for.
_BLOCKED = select(blocked_device_ids.c.device_id).where(
    blocked_device_ids.c.device_id == bindparam("device_id")
)
_LIMITS = select(factory_credentials.c.quota, factory_credentials.c.expires_at).where(
    factory_credentials.c.name == bindparam("station")
)
_LISTED = select(enrollment_manifest.c.station, enrollment_manifest.c.key_sha256).where(
    enrollment_manifest.c.device_id == bindparam("device_id")
)
_HAS_MANIFEST = (
    select(enrollment_manifest.c.device_id)
    .where(enrollment_manifest.c.station == bindparam("station"))
    .limit(1)
)
_ENROLLED_BY = (
    select(func.count()).select_from(devices).where(devices.c.enrolled_by == bindparam("actor"))
)


def check_enrollment(
    conn: Connection, station: str, device_id: str, key_sha256: str, now: datetime
) -> None:
    """None when ``station`` may enroll ``device_id`` with this key now; else NotAllowed."""
    blocked = conn.execute(_BLOCKED, {"device_id": device_id}).first()
    if blocked is not None:
        raise NotAllowed(f"device id {device_id!r} is blocked")
    limits = conn.execute(_LIMITS, {"station": station}).one()
    if limits.expires_at is not None and now >= limits.expires_at:
        raise NotAllowed(
            f"factory station {station!r} may enroll nothing since {limits.expires_at.isoformat()}"
        )
    listed = conn.execute(_LISTED, {"device_id": device_id}).first()
    if listed is not None and listed.station != station:
        raise NotAllowed(f"device id {device_id!r} is on another station's manifest")
    if listed is None:
        has_manifest = conn.execute(_HAS_MANIFEST, {"station": station}).first()
        if has_manifest is not None:
            raise NotAllowed(f"device id {device_id!r} is not on station {station!r}'s manifest")
    elif listed.key_sha256 is not None and listed.key_sha256 != key_sha256:
        raise NotAllowed(f"device {device_id!r} must enroll with the key its manifest names")
    if limits.quota is not None:
        enrolled = conn.execute(_ENROLLED_BY, {"actor": f"factory:{station}"}).scalar_one()
        if enrolled >= limits.quota:
            raise NotAllowed(
                f"factory station {station!r} has enrolled its quota of {limits.quota} devices"
            )
