"""The home guards its own clock: it signs and issues only at a time it can believe.

Devices whose clocks are in doubt take the home's time (ADR 0009), and every
timestamp, certificate and CRL the home makes is dated by its clock. A clock
accident (NTP or RTC gone wrong, a year ahead for a minute) would otherwise
be written into what the fleet trusts: a server certificate valid only from
next year, a timestamp that lives a year. So before the server's own
maintenance signs anything it compares its clock with:

- the last time it (or an operator's confirmation) signed, from the audit
  log: not more than ``MAX_BACKWARDS`` before it, and not more than
  ``MAX_SILENCE`` after it (a site that has not signed for a month asks an
  operator to confirm the time, ``homing clock confirm``);
- its peer, the PostgreSQL server of a shared site: within ``MAX_PEER_SKEW``.

In doubt it signs nothing, logs why, and ``homing_clock_in_doubt`` is 1 (an
alert fires). What was made while the clock was wrong is replaced by the
maintenance pass once the clock is right (homing.server.maintenance). An
operator who has checked the time says so with ``confirm_clock``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, text

from homing.store import Database, audit
from homing.store.schema import audit_log

__all__ = [
    "CONFIRM_ACTION",
    "MAX_BACKWARDS",
    "MAX_PEER_SKEW",
    "MAX_SILENCE",
    "clock_doubt",
    "clock_status",
    "confirm_clock",
    "last_signing",
    "moved_back",
]

MAX_BACKWARDS = timedelta(minutes=5)
MAX_SILENCE = timedelta(days=30)
MAX_PEER_SKEW = timedelta(minutes=5)
CONFIRM_ACTION = "confirm_clock"
_MAINTENANCE = "server:maintenance"


def last_signing(db: Database) -> datetime | None:
    """When the server's maintenance last signed, or an operator last confirmed the time.

    The last such entry *written*, not the latest time: after an operator
    confirms a corrected clock, an earlier mistake dated in the future no
    longer counts.
    """
    with db.engine.connect() as conn:
        row = conn.execute(
            select(audit_log.c.at)
            .where(
                or_(
                    audit_log.c.actor.like(f"{_MAINTENANCE}%"),
                    audit_log.c.action == CONFIRM_ACTION,
                )
            )
            .order_by(audit_log.c.id.desc())
            .limit(1)
        ).first()
    return row.at if row is not None else None


def _peer_time(db: Database) -> datetime | None:
    """The database server's clock, for a shared site (SQLite has no peer)."""
    if db.dialect != "postgresql":
        return None
    with db.engine.connect() as conn:
        value = conn.execute(text("SELECT now()")).scalar()
    return value if isinstance(value, datetime) else None


def clock_doubt(db: Database, now: datetime) -> str | None:
    """Why ``now`` must not be signed at, or None when it may."""
    last = last_signing(db)
    if last is not None and now < last - MAX_BACKWARDS:
        return (
            f"the clock reads {now.isoformat()}, before the last signing at {last.isoformat()}: "
            "fix the clock, or confirm this time with `homing clock confirm`"
        )
    if last is not None and now > last + MAX_SILENCE:
        return (
            f"the clock reads {now.isoformat()}, {(now - last).days} days after the last "
            f"signing at {last.isoformat()}: confirm this time with `homing clock confirm`"
        )
    peer = _peer_time(db)
    if peer is not None and abs(now - peer) > MAX_PEER_SKEW:
        return (
            f"the clock reads {now.isoformat()} but the database server's reads "
            f"{peer.isoformat()}: fix whichever is wrong"
        )
    return None


def moved_back(db: Database, now: datetime) -> str | None:
    """Why ``now`` must not be issued or told at: it is before the last signing.

    What a worker checks before it issues a certificate or answers the time
    (the supervisor's signing has ``clock_doubt``'s whole rule): a clock set
    back would date certificates, and the fleet's time, in the past.
    """
    last = last_signing(db)
    if last is not None and now < last - MAX_BACKWARDS:
        return (
            f"this server's clock reads {now.isoformat()}, before its last signing at "
            f"{last.isoformat()}"
        )
    return None


def clock_status(db: Database, now: datetime) -> dict[str, str | None]:
    last = last_signing(db)
    return {
        "now": now.isoformat(),
        "last_signing": last.isoformat() if last else None,
        "doubt": clock_doubt(db, now),
    }


def confirm_clock(db: Database, actor: str, now: datetime, reason: str) -> str | None:
    """Record that ``now`` is the true time; returns the doubt it overrides (None: none)."""
    doubt = clock_doubt(db, now)
    with db.begin() as conn:
        audit.audit(conn, now, actor, CONFIRM_ACTION, None, {"reason": reason, "doubt": doubt})
    return doubt
