"""Every pin policy ever published, and which live devices hold which pins.

A device reports the SHA-256 of the pin policy it holds; this history turns
that digest back into pins, a version and a server-CA generation, so the
operator sees the spread of trust in the fleet and a rotation can ask, before
it retires a key, who still depends on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.exc import IntegrityError

from homing.store.schema import devices, pin_policies

__all__ = [
    "HeldTrust",
    "PublishedPolicy",
    "live_device_trust",
    "policies",
    "record_policy",
]


@dataclass(frozen=True)
class PublishedPolicy:
    sha256: str
    version: int
    pins: tuple[str, ...]
    server_ca_generation: int
    published_at: datetime


@dataclass(frozen=True)
class HeldTrust:
    """What one live device last said it trusts."""

    device_id: str
    last_seen: datetime
    pin_policy_sha256: str | None
    pins_matched: tuple[str, ...]


def record_policy(
    conn: Connection, policy_bytes: bytes, pins: tuple[str, ...], generation: int, when: datetime
) -> PublishedPolicy:
    """Record a published pin policy (idempotent: the same bytes keep their version)."""
    digest = hashlib.sha256(policy_bytes).hexdigest()
    known = policies(conn).get(digest)
    if known is not None:
        return known
    version = (
        int(conn.execute(select(func.coalesce(func.max(pin_policies.c.version), 0))).scalar_one())
        + 1
    )
    try:
        # Several server processes start at once and record the same policy.
        with conn.begin_nested():
            conn.execute(
                insert(pin_policies).values(
                    sha256=digest,
                    version=version,
                    pins=json.dumps(list(pins)),
                    server_ca_generation=generation,
                    published_at=when,
                )
            )
    except IntegrityError:
        again = policies(conn).get(digest)
        if again is None:
            raise
        return again
    return PublishedPolicy(digest, version, pins, generation, when)


def policies(conn: Connection) -> dict[str, PublishedPolicy]:
    """Every published pin policy by SHA-256."""
    return {
        r.sha256: PublishedPolicy(
            r.sha256,
            r.version,
            tuple(json.loads(r.pins)),
            r.server_ca_generation,
            r.published_at,
        )
        for r in conn.execute(select(pin_policies))
    }


def live_device_trust(conn: Connection, seen_since: datetime) -> list[HeldTrust]:
    """Active devices seen since ``seen_since``, with the trust they reported."""
    rows = conn.execute(
        select(
            devices.c.device_id,
            devices.c.last_seen,
            devices.c.pin_policy_sha256,
            devices.c.pins_matched,
        )
        .where(devices.c.status == "active", devices.c.last_seen >= seen_since)
        .order_by(devices.c.device_id)
    )
    return [
        HeldTrust(
            r.device_id,
            r.last_seen,
            r.pin_policy_sha256,
            tuple(json.loads(r.pins_matched)) if r.pins_matched else (),
        )
        for r in rows
    ]
