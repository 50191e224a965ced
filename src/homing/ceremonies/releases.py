"""Firmware releases: an image becomes a signed target of the delegated firmware role.

Versions are compared as versions (PEP 440 via ``packaging``), never as
strings. Anti-rollback rests on the release **sequence number**, monotonic
per hardware class and separate from the version (as in SUIT, RFC 9019 and
RFC 9124): a device never installs a lower sequence number. A deliberate
downgrade is a new release with a higher sequence number, flagged and
recorded.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

from packaging.version import InvalidVersion, Version

from homing.ceremonies.ceremonies import _online_signers, _open, _signer
from homing.ceremonies.datadir import DataDir
from homing.errors import CeremonyError
from homing.store import audit
from homing.store import firmware as store

__all__ = ["parse_version", "release"]

_HARDWARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_IMAGE_BYTES = 4 * 1024**3


def parse_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as e:
        raise CeremonyError(f"{text!r} is not a version (PEP 440, e.g. 2.1.0)") from e


def release(
    data: Path | DataDir,
    image: Path,
    version: str,
    hardware: str,
    now: datetime,
    *,
    sequence: int | None = None,
    notes: str | None = None,
    downgrade: bool = False,
    actor: str = "cli",
) -> store.Release:
    """Sign ``image`` into the firmware role and record the release."""
    if not _HARDWARE.fullmatch(hardware):
        raise CeremonyError(f"invalid hardware class {hardware!r}")
    new_version = parse_version(version)
    try:
        size = image.stat().st_size
    except OSError as e:
        raise CeremonyError(f"cannot read image {image}: {e.strerror}") from e
    if size > MAX_IMAGE_BYTES:
        raise CeremonyError("the image is larger than the limit")
    dd, settings, keys = _open(data)
    db = dd.database()
    with db.engine.connect() as conn:
        latest = store.latest_release(conn, hardware)
    if latest is not None:
        if sequence is None:
            sequence = latest.sequence + 1
        if sequence <= latest.sequence:
            raise CeremonyError(
                f"sequence {sequence} is not above {latest.sequence}, the newest for {hardware}: "
                "devices would refuse it"
            )
        if new_version <= parse_version(latest.version) and not downgrade:
            raise CeremonyError(
                f"version {version} is not newer than {latest.version}: pass --downgrade to "
                "release it deliberately (with a higher sequence number)"
            )
    elif sequence is None:
        sequence = 1
    if sequence < 1:
        raise CeremonyError("the sequence number must be positive")
    payload = image.read_bytes()
    name = f"firmware/{hardware}-{new_version}-{sequence}.img"
    custom = {
        "version": str(new_version),
        "hardware": hardware,
        "sequence": sequence,
        "downgrade": bool(downgrade),
        "notes": notes or "",
    }
    repo = dd.repository(settings)
    snapshot, timestamp = _online_signers(keys, settings)
    rel = store.Release(
        target=name,
        hardware=hardware,
        version=str(new_version),
        sequence=sequence,
        length=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        downgrade=downgrade,
        notes=notes,
        created_at=now,
    )
    with db.engine.begin() as conn:
        store.add_release(conn, rel)
        repo.publish_firmware(
            name, payload, custom, _signer(keys, "firmware"), snapshot, timestamp, now
        )
        audit.audit(
            conn,
            now,
            actor,
            "release",
            name,
            {"version": str(new_version), "sequence": sequence, "downgrade": downgrade},
        )
    return rel
