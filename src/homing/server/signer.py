"""Which replica signs: one at a time, chosen through PostgreSQL.

The online roles (timestamp, snapshot), the device CRL, rollout evaluation
and pruning must have exactly one author, or two replicas would each sign
their own timestamp version N+1 and devices would refuse one as a rollback.
The signer holds a session-level advisory lock (``pg_try_advisory_lock``)
on a connection of its own: PostgreSQL releases it the moment that session
ends, so when the signing host dies (its TCP connection reset by the
kernel, or cut by keepalives after a network loss) another replica's next
attempt takes over. Before each pass the signer checks its session still
answers; a signer that cannot tell stops signing (fencing by doubt).

On SQLite there is one host by construction: its one maintaining process
signs.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import make_url

from homing.store import Database

__all__ = ["SIGNER_LOCK", "SignerLease", "current_signer"]

log = logging.getLogger(__name__)

# pg_advisory_lock key: 'homing' in ASCII, then 02 (01 is the site-change lock).
SIGNER_LOCK = 0x686F6D696E67_02
# libpq keepalives: a silently vanished signer's session ends within ~15 s.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class SignerLease:
    """Try to be the signer; ``held()`` says whether this process is it right now."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn: Any = None

    def _conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        url = make_url(self.db.url).set(drivername="postgresql")
        return make_conninfo(
            url.render_as_string(hide_password=False),
            application_name=f"homing-signer:{self.name}"[:63],
            **_KEEPALIVES,
        )

    def held(self) -> bool:
        """Whether this process signs now: keeps the lease, or takes it if it is free."""
        if self.db.dialect != "postgresql":
            return True
        import psycopg

        try:
            if self._conn is not None:
                self._conn.execute("SELECT 1")
                return True
            conn = psycopg.connect(self._conninfo(), autocommit=True, connect_timeout=5)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SIGNER_LOCK,)).fetchone()
            if row and row[0]:
                self._conn = conn
                log.warning("this replica (%s) is now the signer", self.name)
                return True
            conn.close()
            return False
        except psycopg.Error as e:
            if self._conn is not None:
                log.warning("lost the signer lease (%s): stopping signing", e)
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the signer session failed", exc_info=True)
            self._conn = None


def current_signer(db: Database) -> str | None:
    """The name of the replica holding the signer lease now (None: nobody, or SQLite)."""
    if db.dialect != "postgresql":
        return None
    from sqlalchemy import text

    # pg_locks splits a bigint advisory key into classid (high) and objid (low).
    query = text(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with db.engine.connect() as conn:
        name = conn.execute(
            query, {"high": SIGNER_LOCK >> 32, "low": SIGNER_LOCK & 0xFFFFFFFF}
        ).scalar()
    return str(name).removeprefix("homing-signer:") if name else None
