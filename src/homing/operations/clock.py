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
alert fires). Workers issue no certificate and tell no time meanwhile: they
apply the last-signing rules themselves at each request (a jump is judged at
once) and take the peer verdict from their supervisor (``record_doubt``).
What was made while the clock was wrong is replaced by the maintenance pass
once the clock is right (homing.server.maintenance). An operator who has
checked the time says so with ``confirm_clock``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import or_, select, text

from homing.fsutil import atomic_write
from homing.store import Database, audit
from homing.store.schema import audit_log

__all__ = [
    "CONFIRM_ACTION",
    "DOUBT_FILE",
    "MAX_BACKWARDS",
    "MAX_PEER_SKEW",
    "MAX_SILENCE",
    "clock_doubt",
    "clock_status",
    "confirm_clock",
    "last_signing",
    "peer_doubt",
    "record_doubt",
    "recorded_doubt",
    "signing_doubt",
]

MAX_BACKWARDS = timedelta(minutes=5)
MAX_SILENCE = timedelta(days=30)
MAX_PEER_SKEW = timedelta(minutes=5)
CONFIRM_ACTION = "confirm_clock"
# In the data directory: why the supervisor signs nothing now (absent: it may).
DOUBT_FILE = "clock-in-doubt"
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
    """Why ``now`` must not be signed at, or None when it may (the supervisor's rule)."""
    return signing_doubt(db, now) or peer_doubt(db, now)


def signing_doubt(db: Database, now: datetime) -> str | None:
    """Why ``now`` is too far before or after the site's last signing, or None."""
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
    return None


def peer_doubt(db: Database, now: datetime) -> str | None:
    """Why ``now`` is too far from the database server's clock (a shared site), or None."""
    peer = _peer_time(db)
    if peer is not None and abs(now - peer) > MAX_PEER_SKEW:
        return (
            f"the clock reads {now.isoformat()} but the database server's reads "
            f"{peer.isoformat()}: fix whichever is wrong"
        )
    return None


def record_doubt(data: Path, why: str | None) -> None:
    """The supervisor's verdict, for the host's workers: ``why``, or none (file removed).

    Workers share their host's clock with the supervisor, so its peer check
    (one query every pass) answers for them; they read the verdict here
    before they issue or tell the time (``recorded_doubt``).
    """
    path = data / DOUBT_FILE
    if why is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, why.encode() + b"\n")


def recorded_doubt(data: Path) -> str | None:
    """The supervisor's last verdict on this host's clock (None: it may sign)."""
    try:
        return (data / DOUBT_FILE).read_text().strip() or None
    except FileNotFoundError:
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
