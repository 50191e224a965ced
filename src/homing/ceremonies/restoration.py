"""After a restore: publish past every version a device may hold.

A backup is always older than the devices' last contact. Since it was
taken, the live site kept publishing (a timestamp every few hours, a
snapshot and targets at each ceremony or release), and each device that
checked in holds those versions. TUF's rollback checks make a device refuse
any timestamp, snapshot or role version lower than the one it holds, so a
restored site serving the backup's versions would strand every device
that checked in after the backup was taken.

So the restored site re-signs timestamp, snapshot, targets and the firmware
role (same content) at versions past both what the restored database says
devices reported and a margin for what happened after the backup: one
publication a minute since the backup was taken, plus ``BASE_MARGIN``.
Releases made after the backup are unknown too, and a device refuses a
release whose sequence number is not above the one it runs, so the next
release's sequence starts above the newest known plus ``RELEASE_MARGIN``
and one a day since the backup.
Versions are plain integers; a jump costs nothing. A root the devices hold
that is newer than the backup's cannot be re-made here (it needs the root
holders' keys), and is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _online_signers,
    _open,
    _signer,
    firmware_key_name,
    serialized,
)
from homing.ceremonies.pin_publication import targets_signed_here
from homing.errors import KeyStoreError
from homing.site import DataDir
from homing.store.schema import devices, releases

__all__ = ["BASE_MARGIN", "RestoredVersions", "publish_past_restore"]

# Versions added on top of what is known, whatever the backup's age.
BASE_MARGIN = 1000
# Release sequence numbers added on top of the newest known, plus one a day
# since the backup: releases made after it are unknown to the restored site,
# and a device refuses any sequence not above the one it runs.
RELEASE_MARGIN = 100


@dataclass(frozen=True)
class RestoredVersions:
    """What a restored site now publishes, and what it could not move."""

    floor: int
    reported: dict[str, int]
    published: dict[str, int]
    release_sequence_floor: int
    warnings: list[str] = field(default_factory=list)


def _newest_sequence(dd: DataDir) -> int:
    with dd.database().begin() as conn:
        return int(conn.execute(select(func.max(releases.c.sequence))).scalar() or 0)


def _reported(dd: DataDir) -> dict[str, int]:
    """The highest versions any device reported, as far as the restored database knows."""
    with dd.database().begin() as conn:
        row = conn.execute(
            select(
                func.max(devices.c.root_version),
                func.max(devices.c.timestamp_version),
                func.max(devices.c.targets_version),
            )
        ).one()
    return {
        role: int(value or 0)
        for role, value in zip(("root", "timestamp", "targets"), row, strict=True)
    }


@serialized
def publish_past_restore(
    data: Path | DataDir, now: datetime, backup_taken_at: datetime, *, actor: str = OPERATOR
) -> RestoredVersions:
    """Re-sign the online roles, and targets and firmware where their keys are, past any device."""
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    reported = _reported(dd)
    minutes = max(int((now - backup_taken_at).total_seconds() // 60), 0)
    known = max(
        reported["timestamp"],
        reported["targets"],
        repo.timestamp().signed.version,
        repo.snapshot().signed.version,
        repo.targets().signed.version,
    )
    floor = known + BASE_MARGIN + minutes
    days = minutes // (24 * 60)
    sequence_floor = (
        max(settings.release_sequence_floor, _newest_sequence(dd)) + RELEASE_MARGIN + days
    )
    settings.release_sequence_floor = sequence_floor
    dd.save_settings(settings)
    warnings: list[str] = []
    try:
        here = targets_signed_here(dd, settings, store)
    except KeyStoreError:
        here = False  # kept offline, its media not mounted
    targets_signer = _signer(store, "targets") if here else None
    if targets_signer is None:
        warnings.append(
            "targets is signed by its holders: devices that saw a newer targets version refuse "
            f"until a targets ceremony publishes version {floor} or later"
        )
    firmware_name = firmware_key_name(settings.firmware_key_generation)
    try:
        firmware_signer = _signer(store, firmware_name) if store.exists(firmware_name) else None
    except KeyStoreError:
        firmware_signer = None
    if firmware_signer is None:
        warnings.append(
            "the firmware key is offline: sign the next release's firmware role at version "
            f"{floor} or later, with --sequence above {sequence_floor}"
        )
    if reported["root"] > repo.root_version():
        warnings.append(
            f"devices report root v{reported['root']}, newer than this backup's "
            f"v{repo.root_version()}: restore a newer backup, or the root holders must "
            "publish that root again"
        )
    snapshot, timestamp = _online_signers(store, settings)
    published = repo.republish_from(
        floor,
        snapshot,
        timestamp,
        now,
        targets_signer=targets_signer,
        firmware_signer=firmware_signer,
    )
    _audit(
        dd,
        now,
        actor,
        "publish_past_restore",
        f"versions from {floor}",
        {
            "reported": reported,
            "published": published,
            "backup_taken_at": backup_taken_at.isoformat(),
            "release_sequence_floor": sequence_floor,
        },
    )
    return RestoredVersions(floor, reported, published, sequence_floor, warnings)
