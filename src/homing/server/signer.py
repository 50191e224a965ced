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

A network cut must not leave the lease with a host nobody can reach: the
lease session is a bounded one (``homing.store.bounded_session``: a
heartbeat, and timeouts on both sides), so a cut signer loses the lease
within ``LEASE_TIMEOUT`` seconds, logs the loss and stops signing, and
another replica takes it at its next maintenance pass.

On SQLite there is one host by construction: its one maintaining process
signs.
"""

from __future__ import annotations

import functools
import logging

from homing.store import Database
from homing.store.bounded_session import SESSION_TIMEOUT, BoundedSession, advisory_holder

__all__ = ["LEASE_TIMEOUT", "SIGNER_LOCK", "SignerLease", "current_signer"]

log = logging.getLogger(__name__)

# pg_advisory_lock key: 'homing' in ASCII, then 02 (01 is the site-change lock).
SIGNER_LOCK = 0x686F6D696E67_02
# Seconds after which a cut signer's lease session ends, on either side.
LEASE_TIMEOUT = SESSION_TIMEOUT


class SignerLease:
    """Try to be the signer; ``held()`` says whether this process is it right now."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self._session: BoundedSession | None = None

    def held(self) -> bool:
        """Whether this process signs now: keeps the lease, or takes it if it is free."""
        if self.db.dialect != "postgresql":
            return True
        import psycopg

        session = self._session
        try:
            if session is not None and session.connection is not None:
                session.connection.execute("SELECT 1")
                return True
            session = BoundedSession(self.db.url, f"homing-signer:{self.name}")
            conn = session.connect()
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (SIGNER_LOCK,)).fetchone()
            if row and row[0]:
                self._session = session
                log.warning("this replica (%s) is now the signer", self.name)
                session.start_heartbeat(functools.partial(self._lost, session))
                return True
            session.close()
            return False
        except psycopg.Error as e:
            if self._session is not None:
                log.warning("lost the signer lease (%s): stopping signing", e)
            if session is not None:
                session.close()
            self.release()
            return False

    def _lost(self, lost: BoundedSession, error: Exception) -> None:
        log.warning(
            "lost the signer lease: the database did not answer (%s); "
            "stopping signing, another replica takes over",
            str(error).strip() or type(error).__name__,
        )
        # Only that session: a newer one that holds the lease again stays.
        if self._session is lost:
            self._session = None

    def release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def current_signer(db: Database) -> str | None:
    """The name of the replica holding the signer lease now (None: nobody, or SQLite)."""
    if db.dialect != "postgresql":
        return None
    with db.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        holder = advisory_holder(raw, SIGNER_LOCK)
    if holder is None or not holder.application_name:
        return None
    return holder.application_name.removeprefix("homing-signer:")
