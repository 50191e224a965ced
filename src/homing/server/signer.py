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

A network cut must not leave the lease with a host nobody can reach.
PostgreSQL notices a vanished client only by TCP keepalives, two hours by
default, so the lease session bounds it itself: a heartbeat every
``HEARTBEAT`` seconds from a thread of its own, and on the database's side
``idle_session_timeout`` (``LEASE_TIMEOUT``) ends a session that stops
sending, plus server-side keepalives and TCP user timeouts for a direct
connection. On the signer's side ``tcp_user_timeout`` makes an unanswered
heartbeat fail within ``LEASE_TIMEOUT``; it logs the loss and stops
signing. So a cut signer loses the lease within ``LEASE_TIMEOUT`` seconds
and another replica takes it at its next maintenance pass.

On SQLite there is one host by construction: its one maintaining process
signs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import make_url

from homing.store import Database

__all__ = ["SIGNER_LOCK", "SignerLease", "current_signer"]

log = logging.getLogger(__name__)

# pg_advisory_lock key: 'homing' in ASCII, then 02 (01 is the site-change lock).
SIGNER_LOCK = 0x686F6D696E67_02
# Seconds between heartbeats on the lease session.
HEARTBEAT = 3.0
# Seconds after which a silent lease session ends, on either side.
LEASE_TIMEOUT = 15
# libpq keepalives and user timeout: the signer notices a cut within LEASE_TIMEOUT.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": LEASE_TIMEOUT * 1000,
}
# The same bounds on the database's side of the lease session (PostgreSQL 14+).
_SESSION_BOUNDS = (
    f"SET idle_session_timeout = '{LEASE_TIMEOUT}s'",
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    f"SET tcp_user_timeout = {LEASE_TIMEOUT * 1000}",
)


class SignerLease:
    """Try to be the signer; ``held()`` says whether this process is it right now."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

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
            for statement in _SESSION_BOUNDS:
                conn.execute(statement)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SIGNER_LOCK,)).fetchone()
            if row and row[0]:
                with self._lock:
                    self._conn = conn
                log.warning("this replica (%s) is now the signer", self.name)
                self._start_heartbeat()
                return True
            conn.close()
            return False
        except psycopg.Error as e:
            if self._conn is not None:
                log.warning("lost the signer lease (%s): stopping signing", e)
            self.release()
            return False

    def _start_heartbeat(self) -> None:
        self._stop_beating = threading.Event()
        self._beater = threading.Thread(
            target=self._beat, args=(self._stop_beating,), name="homing-lease", daemon=True
        )
        self._beater.start()

    def _beat(self, stop: threading.Event) -> None:
        """Keep the lease session from idling out; let go of it the moment it fails."""
        import psycopg

        while not stop.wait(HEARTBEAT):
            conn = self._conn
            if conn is None:
                return
            try:
                conn.execute("SELECT 1")
            except psycopg.Error as e:
                if not stop.is_set():
                    log.warning(
                        "lost the signer lease: the database did not answer (%s); "
                        "stopping signing, another replica takes over",
                        str(e).strip() or type(e).__name__,
                    )
                    self.release()
                return

    def release(self) -> None:
        self._stop_beating.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the signer session failed", exc_info=True)


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
