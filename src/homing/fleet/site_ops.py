"""The simulated operator's hands on a real data directory: sign a role, release, copy."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.ceremonies import releases
from homing.fleet.world_state import FIRMWARE_HARDWARE, FirmwareRelease
from homing.site import DataDir

__all__ = ["copy_repository", "pem_of", "sign_release", "sign_role"]


def copy_repository(repository: Path, target: Path) -> None:
    """A copy of the published repository as it is now, by hard links.

    The repository never changes a file in place (every write is a new file
    renamed over the old), so a linked copy keeps exactly what was
    published while costing no data copy.
    """
    shutil.copytree(repository, target, copy_function=os.link)


def sign_role(dd: DataDir, role: str, now: datetime, until: datetime | None = None) -> None:
    """Re-sign ``role`` of the site ``dd``, to expire at ``until`` (default: as usual)."""
    settings = dd.settings()
    usual = settings.expiry_days.get(role)
    if until is not None:
        settings.expiry_days[role] = (until - now).total_seconds() / 86400
        dd.save_settings(settings)
    try:
        if role == "timestamp":
            # A fresh snapshot first: the timestamp is the role left to expire.
            ceremonies.refresh_snapshot(dd, now)
            ceremonies.refresh_timestamp(dd, now)
        elif role == "snapshot":
            ceremonies.refresh_snapshot(dd, now)
        elif role == "targets":
            ceremonies.refresh_targets(dd, now)
        else:
            ceremonies.rotate_root(dd, now)
    finally:
        if until is not None:
            # The ceremony saved settings of its own (a root rotation writes its new
            # keys there): restore the one expiry on what it saved, not the copy
            # read before, which would revert its keys.
            after = dd.settings()
            if usual is None:
                after.expiry_days.pop(role, None)
            else:
                after.expiry_days[role] = usual
            dd.save_settings(after)


def sign_release(
    dd: DataDir, workdir: Path, last: FirmwareRelease | None, now: datetime
) -> FirmwareRelease:
    """The next firmware image, signed into the site's firmware role (``homing release``)."""
    sequence = 1 + (last.sequence if last is not None else 0)
    image = workdir / "firmware" / f"{dd.root.name}-{sequence}.img"
    image.parent.mkdir(exist_ok=True)
    image.write_bytes(b"simulated firmware image %d\n" % sequence * 256)
    made = releases.release(dd, image, f"1.{sequence}.0", FIRMWARE_HARDWARE, now)
    return FirmwareRelease(made.target, made.version, made.sequence)


def pem_of(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
