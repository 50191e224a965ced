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
    def __init__(self, dd: DataDir, checkin_retention: timedelta | None) -> None:
        self.dd = dd
        self.checkin_retention = checkin_retention
        self.db = dd.database()
        self.shared = self.db.dialect == "postgresql"
        self.lease = SignerLease(self.db, replica_name(dd))

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

    def maintain(self, now: datetime) -> list[str]:
        if not self.shared:
            return maintain(self.dd, now, checkin_retention=self.checkin_retention)
        if not self.lease.held():
            self.follow()
            return maintain(self.dd, now, signer=False)
        with shared.site_change(self.db):
            shared.pull(self.dd, self.db)
            done = maintain(self.dd, now, checkin_retention=self.checkin_retention)
            generation = shared.publish(self.dd, now, f"{ACTOR}:{self.lease.name}")
        if generation is not None:
            done.append(f"publication {generation}")
        return done

    def close(self) -> None:
        self.lease.release()
