"""One replica's periodic work: follow the shared site, and sign when it is the signer.

On SQLite (one host) this is plain maintenance. On PostgreSQL the published
site lives in the database (homing.site.shared): at start a replica either
makes its data directory the site (the first host) or takes the site's
files; then it follows every new publication within ``sync_interval``, and
whichever replica holds the signer lease (homing.server.signer) pulls,
re-signs what is due and publishes, under the site-change lock, so a
device never sees a version go backwards whichever replica answers.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timedelta

from homing.ceremonies.replicas import missing_online_keys
from homing.operations.clock import clock_doubt, record_doubt
from homing.server.maintenance import ACTOR, maintain
from homing.server.signer import SignerLease
from homing.site import DataDir, shared

__all__ = ["Upkeep", "replica_name"]

log = logging.getLogger(__name__)


def replica_name(dd: DataDir) -> str:
    """The replica's name (replica.json), else this host's name."""
    import json

    try:
        doc = json.loads(dd.replica_path().read_bytes())
        name = doc.get("name") if isinstance(doc, dict) else None
        if isinstance(name, str) and name:
            return name
    except (FileNotFoundError, ValueError):
        pass
    return socket.gethostname()


class Upkeep:
    def __init__(
        self, dd: DataDir, checkin_retention: timedelta | None, *, guard_clock: bool = True
    ) -> None:
        """``guard_clock``: sign only at a believable time (homing.operations.clock);
        off only for tests that move time by hand."""
        self.dd = dd
        self.guard_clock = guard_clock
        self._recorded = False
        self._doubt: str | None = None
        self.checkin_retention = checkin_retention
        self.db = dd.database()
        self.shared = self.db.dialect == "postgresql"
        self.lease = SignerLease(self.db, replica_name(dd))
        self._missing: list[str] = []

    def join(self, now: datetime) -> None:
        """At start: publish this site if the database holds none, else take the published one."""
        if not self.shared:
            return
        with shared.site_change(self.db):
            if shared.is_shared(self.db):
                shared.pull(self.dd, self.db)
            else:
                generation = shared.publish(self.dd, now, f"{ACTOR}:{self.lease.name}")
                log.warning("published this data directory as the shared site (%s)", generation)

    def follow(self) -> int | None:
        """Take a newer publication, if any (cheap when there is none)."""
        return shared.pull(self.dd, self.db) if self.shared else None

    def _can_sign(self) -> bool:
        """Whether this replica holds the keys a signer needs; says loudly what it lacks."""
        missing = missing_online_keys(self.dd)
        if missing != self._missing:
            self._missing = missing
            if missing:
                log.warning(
                    "this replica lacks online keys %s: run `homing keystore export-online` "
                    "on the operator's host and `homing replica import-keys` here",
                    ", ".join(missing),
                )
        return not any(n.startswith(("timestamp-", "snapshot-")) for n in missing)

    def clock_doubt(self, now: datetime) -> str | None:
        """Why nothing may be signed at ``now`` (logged once when it starts and ends)."""
        why = clock_doubt(self.db, now) if self.guard_clock else None
        if why != self._doubt or not self._recorded:
            # For this host's workers; the first pass also clears a verdict an
            # earlier run left behind.
            record_doubt(self.dd.root, why)
            self._recorded = True
        if why is not None and self._doubt is None:
            log.error("signing nothing: %s", why)
        elif why is None and self._doubt is not None:
            log.warning("the clock is believable again: signing resumes")
        self._doubt = why
        return why

    def maintain(self, now: datetime) -> list[str]:
        if self.clock_doubt(now) is not None:
            self.follow()
            self.lease.release()
            return []
        if not self.shared:
            return maintain(self.dd, now, checkin_retention=self.checkin_retention)
        self.follow()
        if not self._can_sign():
            # A signer that cannot sign would hold the lease while the timestamp expires.
            self.lease.release()
            return maintain(self.dd, now, signer=False)
        if not self.lease.held():
            return maintain(self.dd, now, signer=False)
        try:
            with shared.site_change(self.db):
                shared.pull(self.dd, self.db)
                done = maintain(self.dd, now, checkin_retention=self.checkin_retention)
                generation = shared.publish(self.dd, now, f"{ACTOR}:{self.lease.name}")
        except Exception:
            # Let another replica sign while this one cannot.
            self.lease.release()
            raise
        if generation is not None:
            done.append(f"publication {generation}")
        return done

    def close(self) -> None:
        self.lease.release()
