"""Bounding what a factory station may enroll: manifests, quotas, expiries, blocked ids.

Each change is one transaction with its audit line (``homing.store.allowlist``
keeps the rules; the EST endpoint applies them).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from homing.errors import ConfigError, PolicyError
from homing.pki.profiles import device_uri
from homing.store import Database, allowlist, audit

__all__ = ["add_manifest", "block_device_id", "parse_manifest", "set_station_limits"]

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def parse_manifest(path: Path) -> list[tuple[str, str | None]]:
    """A manifest file: one device id a line, optionally followed by the SHA-256 (hex)
    of the DER public key it must enroll with; ``#`` starts a comment."""
    entries: list[tuple[str, str | None]] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and not _FINGERPRINT.fullmatch(fields[1])):
            raise ConfigError(
                f"{path}:{number}: expected 'DEVICE_ID [KEY_SHA256_HEX]', not {line.strip()!r}"
            )
        try:
            device_uri(fields[0])
        except PolicyError as e:
            raise ConfigError(f"{path}:{number}: {e}") from e
        entries.append((fields[0], fields[1] if len(fields) == 2 else None))
    if not entries:
        raise ConfigError(f"{path} names no device id")
    return entries


def add_manifest(
    db: Database, actor: str, now: datetime, station: str, entries: list[tuple[str, str | None]]
) -> int:
    with db.begin() as conn:
        added = allowlist.add_to_manifest(conn, station, entries, now)
        audit.audit(conn, now, actor, "add_manifest", station, {"device_ids": added})
    return added


def set_station_limits(
    db: Database,
    actor: str,
    now: datetime,
    station: str,
    quota: int | None,
    expires_at: datetime | None,
) -> None:
    if quota is not None and quota < 0:
        raise ConfigError("--quota must be 0 or more")
    with db.begin() as conn:
        allowlist.set_limits(conn, station, quota, expires_at)
        audit.audit(
            conn,
            now,
            actor,
            "limit_factory",
            station,
            {"quota": quota, "expires_at": expires_at.isoformat() if expires_at else None},
        )


def block_device_id(db: Database, actor: str, now: datetime, device_id: str, reason: str) -> None:
    device_uri(device_id)
    with db.begin() as conn:
        allowlist.block(conn, device_id, now, reason)
        audit.audit(conn, now, actor, "block_device_id", device_id, {"reason": reason})
