"""Revocation in bulk: a batch of devices chosen by list, by factory station, or by issuer.

A compromised production batch is tens of thousands of devices; revoking
them one call at a time takes an afternoon. Here a selection becomes set
statements over chunks of ids, in the caller's one transaction, with the
same meaning as ``homing.store.devices.revoke_device``: the device row says
revoked and every certificate it holds is revoked with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select, update

from homing.errors import PolicyError
from homing.store.schema import certificates, devices

__all__ = ["Selection", "revoke_devices", "select_devices"]

# Ids per statement: well under what either database takes in one IN list.
_CHUNK = 1000


@dataclass(frozen=True)
class Selection:
    """Which active devices a batch revocation takes: exactly one way of choosing.

    - ``device_ids``: these devices;
    - ``station``: those a factory station enrolled, optionally only from
      ``since`` and before ``until`` (a production run);
    - ``issuer_pin``: those holding a certificate the CA with this SPKI pin
      issued and that is not revoked (a batch made under one CA).
    """

    device_ids: tuple[str, ...] = ()
    station: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    issuer_pin: str | None = None

    def __post_init__(self) -> None:
        ways = sum((bool(self.device_ids), self.station is not None, self.issuer_pin is not None))
        if ways != 1:
            raise PolicyError(
                "choose devices one way: a list of ids, a factory station (with an optional "
                "time window), or an issuing CA"
            )
        if (self.since or self.until) and self.station is None:
            raise PolicyError("a time window narrows a factory station's devices only")
        if self.since and self.until and self.since >= self.until:
            raise PolicyError("the time window ends before it starts")

    def to_json(self) -> dict[str, Any]:
        """What the audit log keeps of the selection (a list is kept whole)."""
        if self.device_ids:
            return {"device_ids": list(self.device_ids)}
        if self.station is not None:
            return {
                "station": self.station,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
            }
        return {"issuer_pin": self.issuer_pin}


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def select_devices(conn: Connection, selection: Selection) -> list[str]:
    """The active devices the selection names, sorted; ids not enrolled are left out."""
    active = devices.c.status == "active"
    if selection.device_ids:
        wanted = sorted(set(selection.device_ids))
        found: list[str] = []
        for chunk in _chunks(wanted):
            found += conn.execute(
                select(devices.c.device_id).where(active, devices.c.device_id.in_(chunk))
            ).scalars()
        return sorted(found)
    if selection.station is not None:
        conditions = [active, devices.c.enrolled_by == f"factory:{selection.station}"]
        if selection.since is not None:
            conditions.append(devices.c.enrolled_at >= selection.since)
        if selection.until is not None:
            conditions.append(devices.c.enrolled_at < selection.until)
        query = select(devices.c.device_id).where(and_(*conditions))
    else:
        held = (
            select(certificates.c.subject_id)
            .where(
                certificates.c.kind == "device",
                certificates.c.issuer_pin == selection.issuer_pin,
                certificates.c.revoked_at.is_(None),
            )
            .distinct()
        )
        query = select(devices.c.device_id).where(active, devices.c.device_id.in_(held))
    return sorted(conn.execute(query).scalars())


def revoke_devices(
    conn: Connection, device_ids: Sequence[str], when: datetime, reason: str
) -> tuple[int, int]:
    """Revoke these devices and every certificate they hold; (devices, certificates)."""
    revoked = certificates_revoked = 0
    for chunk in _chunks(sorted(device_ids)):
        revoked += conn.execute(
            update(devices)
            .where(devices.c.device_id.in_(chunk), devices.c.status == "active")
            .values(status="revoked", revoked_at=when, revoke_reason=reason)
        ).rowcount
        certificates_revoked += conn.execute(
            update(certificates)
            .where(
                certificates.c.subject_id.in_(chunk),
                certificates.c.kind == "device",
                certificates.c.revoked_at.is_(None),
            )
            .values(revoked_at=when, reason=reason)
        ).rowcount
    return revoked, certificates_revoked
