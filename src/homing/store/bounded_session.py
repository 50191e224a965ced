"""A PostgreSQL session that lets go of its advisory locks soon after its host vanishes.

Replicas of a shared site serialise with session-level advisory locks (the
signer lease, the site-change lock). PostgreSQL releases such a lock only
when the session ends, and it notices a client that vanished (a cut cable,
a lost cloud route: no reset is ever sent) only by TCP keepalives, two hours
by default; behind a TCP proxy it never notices, because the proxy still
answers. A host cut while holding a lock would stop every other host's
changes for that long.

So a session made here bounds itself, on both sides:

- it says something every ``HEARTBEAT`` seconds, from a thread of its own,
  and the database ends a session silent for ``SESSION_TIMEOUT`` seconds
  (``idle_session_timeout``, PostgreSQL 14+): this holds through a proxy;
- server-side TCP keepalives and user timeout end it sooner on a direct
  connection;
- client-side keepalives and ``tcp_user_timeout`` make the holder's own
  heartbeat fail within ``SESSION_TIMEOUT``, so it learns it lost the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["HEARTBEAT", "SESSION_TIMEOUT", "BoundedSession", "Holder", "advisory_holder"]

log = logging.getLogger(__name__)

# Seconds between heartbeats on a bounded session.
HEARTBEAT = 3.0
# Seconds after which a silent bounded session ends, on either side.
SESSION_TIMEOUT = 15
# libpq keepalives and user timeout: the holder notices a cut within SESSION_TIMEOUT.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": SESSION_TIMEOUT * 1000,
}
# The same bounds on the database's side of the session (PostgreSQL 14+).
_SESSION_BOUNDS = (
    f"SET idle_session_timeout = '{SESSION_TIMEOUT}s'",
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 3",
    f"SET tcp_user_timeout = {SESSION_TIMEOUT * 1000}",
)


class BoundedSession:
    """One autocommit psycopg connection with the bounds above, and its heartbeat."""

    def __init__(self, db_url: str, application_name: str) -> None:
        from psycopg.conninfo import make_conninfo

        url = make_url(db_url).set(drivername="postgresql")
        self._conninfo = make_conninfo(
            url.render_as_string(hide_password=False),
            application_name=application_name[:63],
            **_KEEPALIVES,
        )
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def connect(self) -> Any:
        """Open the session (psycopg.Error when the database does not answer)."""
        import psycopg

        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
        try:
            for statement in _SESSION_BOUNDS:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conn = conn
        return conn

    @property
    def connection(self) -> Any:
        """The open psycopg connection, or None once closed or lost."""
        return self._conn

    def start_heartbeat(self, on_loss: Callable[[Exception], None]) -> None:
        """Keep the session from idling out; on a failed beat, close it and call ``on_loss``."""
        self._stop = threading.Event()
        threading.Thread(
            target=self._beat, args=(self._stop, on_loss), name="homing-session", daemon=True
        ).start()

    def _beat(self, stop: threading.Event, on_loss: Callable[[Exception], None]) -> None:
        import psycopg

        while not stop.wait(HEARTBEAT):
            conn = self._conn
            if conn is None:
                return
            try:
                conn.execute("SELECT 1")  # psycopg serialises it with the owner's use
            except psycopg.Error as e:
                if not stop.is_set():
                    self.close()
                    on_loss(e)
                return

    def close(self) -> None:
        """End the session: every advisory lock it holds is released with it."""
        self._stop.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing a bounded session failed", exc_info=True)


@dataclass(frozen=True)
class Holder:
    """The session holding an advisory lock, as PostgreSQL reports it."""

    application_name: str
    address: str | None
    connected: datetime | None

    def describe(self) -> str:
        where = f" at {self.address}" if self.address else ""
        when = f", connected since {self.connected:%Y-%m-%d %H:%M:%S %Z}" if self.connected else ""
        return f"{self.application_name or 'an unnamed session'}{where}{when}"


def advisory_holder(conn: Any, key: int) -> Holder | None:
    """Who holds advisory lock ``key`` in this database (``conn``: a psycopg connection)."""
    # pg_locks splits a bigint advisory key into classid (high) and objid (low).
    row = conn.execute(
        "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    if row is None:
        return None
    name, address, since = row
    return Holder(str(name or ""), str(address) if address else None, since)
