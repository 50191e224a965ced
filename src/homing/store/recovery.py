"""Single-use, short-lived nonces for key-proof recovery."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from homing.config import Limits
from homing.errors import AuthError
from homing.store.schema import recovery_nonces

__all__ = ["consume_nonce", "issue_nonce"]


def issue_nonce(
    conn: Connection,
    device_id: str,
    now: datetime,
    ttl: timedelta,
    open_per_device: int = Limits.open_recovery_nonces_per_device,
) -> str:
    """A new challenge; the device's oldest open ones lapse beyond ``open_per_device``.

    Asking for challenges costs no credential, so without the bound anyone
    could add rows for a known device as fast as they can ask.
    """
    nonce = secrets.token_hex(32)
    conn.execute(delete(recovery_nonces).where(recovery_nonces.c.expires_at < now))
    newest = (
        select(recovery_nonces.c.nonce)
        .where(recovery_nonces.c.device_id == device_id)
        .order_by(recovery_nonces.c.expires_at.desc())
        .limit(open_per_device - 1)
    )
    conn.execute(
        delete(recovery_nonces).where(
            recovery_nonces.c.device_id == device_id,
            recovery_nonces.c.nonce.not_in(newest.scalar_subquery()),
        )
    )
    conn.execute(
        insert(recovery_nonces).values(nonce=nonce, device_id=device_id, expires_at=now + ttl)
    )
    return nonce


def consume_nonce(conn: Connection, nonce: str, device_id: str, now: datetime) -> None:
    """Use a nonce exactly once; a second use, another device or a late use is refused."""
    result = conn.execute(
        update(recovery_nonces)
        .where(
            recovery_nonces.c.nonce == nonce,
            recovery_nonces.c.device_id == device_id,
            recovery_nonces.c.used_at.is_(None),
            recovery_nonces.c.expires_at >= now,
        )
        .values(used_at=now)
    )
    if result.rowcount != 1:
        raise AuthError("recovery nonce is unknown, expired or already used")
