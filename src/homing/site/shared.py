"""The published site, shared by every replica through PostgreSQL.

Several home servers on separate hosts must serve one repository byte for
byte: a device that fetched timestamp version 7 from one replica and then
version 6 from another refuses the second as a rollback (TUF spec 5.4.3).
So the site's published files (settings, public PKI files, TUF metadata and
targets, firmware images included) live in the database, versioned as a
whole by one *generation* number:

- ``publish`` copies what changed in a data directory into the database in
  one transaction and bumps the generation. It refuses when the database
  moved on since this host last synced (compare-and-set on the generation),
  and refuses a database that holds another site (its first root differs).
- ``pull`` brings a data directory to the database's generation, reading
  the publication at one snapshot (REPEATABLE READ), writing each file
  atomically and ``repository/metadata/timestamp.json`` last, so a reader
  never sees a timestamp whose snapshot is not there yet.
- ``site_change`` is the PostgreSQL advisory lock held from pull to publish
  by whoever changes the site (the signing replica's maintenance, an
  operator's ceremony), so two changes never race.

Each host keeps what is its own: its key store (``keys/``), its TLS chain
(``pki/server-chain.pem``) and its replica settings (``replica.json``).
The local manifest (``run/shared.json``) records the generation and the
file digests last synced, so a pull with nothing new costs one query.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from homing.errors import ConfigError, ConflictError, StoreError
from homing.fsutil import atomic_write
from homing.site.datadir import DataDir
from homing.store import Database
from homing.store.bounded_session import BoundedSession, advisory_holder
from homing.store.schema import site_files, site_publication

__all__ = [
    "LOCAL_FILES",
    "SITE_CHANGE_WAIT",
    "Manifest",
    "is_shared",
    "publish",
    "published_generation",
    "pull",
    "site_change",
    "site_id",
]

log = logging.getLogger(__name__)

# What is published: the settings and everything under these directories.
SHARED_FILES = ("homing.json",)
SHARED_DIRS = ("pki", "repository")
# Each replica's own, never published nor overwritten.
LOCAL_FILES = frozenset({"pki/server-chain.pem"})
# Written last on pull: it names the snapshot, which must already be there.
LAST = ("homing.json", "repository/metadata/timestamp.json")
# pg_advisory_lock keys: 'homing' in ASCII, then one per purpose.
SITE_CHANGE_LOCK = 0x686F6D696E67_01
# Seconds a change waits for another host's change to finish, and between its notices.
SITE_CHANGE_WAIT = 300.0
WAIT_NOTICE = 10.0
# Rows read per query when pulling, so large firmware images stream in batches.
PULL_BATCH = 16


@dataclass
class Manifest:
    """What a data directory last synced: the generation and each file's digest."""

    site_id: str
    generation: int
    files: dict[str, dict[str, Any]]  # path -> {"sha256", "size", "mtime_ns"}

    @staticmethod
    def path(dd: DataDir) -> Path:
        return dd.root / "run" / "shared.json"

    @classmethod
    def load(cls, dd: DataDir) -> Manifest | None:
        try:
            doc = json.loads(cls.path(dd).read_bytes())
            return cls(doc["site_id"], int(doc["generation"]), dict(doc["files"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{cls.path(dd)} is damaged ({e}): delete it and pull again") from e

    def save(self, dd: DataDir) -> None:
        doc = {"site_id": self.site_id, "generation": self.generation, "files": self.files}
        atomic_write(self.path(dd), json.dumps(doc, sort_keys=True).encode(), 0o600)


def site_id(dd: DataDir) -> str:
    """A site is named by its first root metadata, which never changes."""
    try:
        first_root = (dd.metadata_dir / "1.root.json").read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{dd.root} has no repository/metadata/1.root.json") from e
    return hashlib.sha256(first_root).hexdigest()


def _shared_paths(dd: DataDir) -> Iterator[str]:
    for name in SHARED_FILES:
        if (dd.root / name).is_file():
            yield name
    for top in SHARED_DIRS:
        base = dd.root / top
        for path in sorted(base.rglob("*")) if base.is_dir() else ():
            relative = path.relative_to(dd.root).as_posix()
            # Temporary files of an atomic write in progress start with a dot.
            if path.is_file() and not path.name.startswith(".") and relative not in LOCAL_FILES:
                yield relative


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _scan(dd: DataDir, known: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each shared file's digest; a file whose size and mtime match ``known`` is not re-read."""
    found: dict[str, dict[str, Any]] = {}
    for relative in _shared_paths(dd):
        stat = (dd.root / relative).stat()
        before = known.get(relative)
        if before and before["size"] == stat.st_size and before["mtime_ns"] == stat.st_mtime_ns:
            found[relative] = before
            continue
        found[relative] = {
            "sha256": _digest(dd.root / relative),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }
    return found


def _require_postgres(db: Database) -> None:
    if db.dialect != "postgresql":
        raise ConfigError("a site shared by several hosts needs PostgreSQL (--db postgresql://...)")


def published_generation(conn: Connection) -> tuple[str, int] | None:
    row = conn.execute(
        select(site_publication.c.site_id, site_publication.c.generation).where(
            site_publication.c.id == 1
        )
    ).first()
    return None if row is None else (row.site_id, int(row.generation))


def is_shared(db: Database) -> bool:
    """True when this database holds a published site (PostgreSQL only)."""
    if db.dialect != "postgresql":
        return False
    with db.engine.connect() as conn:
        return published_generation(conn) is not None


@contextmanager
def site_change(db: Database, wait: float = SITE_CHANGE_WAIT) -> Iterator[None]:
    """Hold the site-change lock for a pull-change-publish.

    The lock is a PostgreSQL advisory lock on a bounded session of its own
    (``homing.store.bounded_session``): a host cut off while holding it
    loses it within ``SESSION_TIMEOUT`` seconds instead of stopping every
    other host's changes until the database notices (hours). A change that
    finds the lock taken says who holds it every ``WAIT_NOTICE`` seconds and
    gives up after ``wait`` seconds (ConflictError naming the holder). Losing
    the lock mid-change is safe: ``publish`` refuses when another host
    published in the meantime.
    """
    if db.dialect != "postgresql":
        yield
        return
    import psycopg

    session = BoundedSession(db.url, f"homing-site-change:{socket.gethostname()}:{os.getpid()}")
    try:
        _take_site_change(session.connect(), wait)
        session.start_heartbeat(_lost_site_change)
    except psycopg.Error as e:
        session.close()
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(f"cannot take the site-change lock: the database refused: {reason}") from e
    except BaseException:
        session.close()
        raise
    try:
        yield
    finally:
        session.close()


def _take_site_change(conn: Any, wait: float) -> None:
    """Wait for the site-change lock at most ``wait`` seconds, saying who holds it."""
    from psycopg.errors import LockNotAvailable

    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        conn.execute(f"SET lock_timeout = {max(1, int(min(left, WAIT_NOTICE) * 1000))}")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (SITE_CHANGE_LOCK,))
        except LockNotAvailable:
            holder = advisory_holder(conn, SITE_CHANGE_LOCK)
            who = holder.describe() if holder else "another session"
            if time.monotonic() >= deadline:
                raise ConflictError(
                    f"another change of the site is in progress ({who}); "
                    f"waited {wait:g} s for it: retry when it has finished"
                ) from None
            log.warning("waiting for the site-change lock, held by %s", who)
            continue
        conn.execute("SET lock_timeout = 0")
        return


def _lost_site_change(error: Exception) -> None:
    log.error(
        "lost the site-change lock mid-change: the database did not answer (%s); "
        "this change's publication is refused if another host published meanwhile",
        str(error).strip() or type(error).__name__,
    )


@contextmanager
def _local_lock(dd: DataDir) -> Iterator[None]:
    """Several worker processes of one replica pull into one directory: one at a time."""
    lock_path = dd.root / "run" / "shared.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish(dd: DataDir, now: datetime, actor: str) -> int | None:
    """Publish what changed in ``dd``; returns the new generation, or None if nothing changed.

    The first publication makes this data directory the site every replica
    serves. Later ones refuse (ConflictError) when another host published
    since this one last synced, and (ConfigError) a database of another site.
    """
    db = dd.database()
    _require_postgres(db)
    local_id = site_id(dd)
    with _local_lock(dd):
        manifest = Manifest.load(dd)
        files = _scan(dd, manifest.files if manifest else {})
        with db.engine.begin() as conn:
            row = conn.execute(
                select(site_publication).where(site_publication.c.id == 1).with_for_update()
            ).first()
            if row is not None and row.site_id != local_id:
                raise ConfigError(
                    f"the database holds another site's publication (first root {row.site_id[:12]}"
                    f"), not {dd.root}'s ({local_id[:12]}): use its own database"
                )
            if row is not None and (manifest is None or manifest.generation != row.generation):
                synced = manifest.generation if manifest else "never"
                raise ConflictError(
                    f"generation {row.generation} was published since {dd.root} last synced "
                    f"({synced}): pull first (every homing command on a shared site does)"
                )
            published = {
                r.path: r.sha256
                for r in conn.execute(select(site_files.c.path, site_files.c.sha256))
            }
            changed = [p for p, f in files.items() if published.get(p) != f["sha256"]]
            removed = [p for p in published if p not in files]
            if row is not None and not changed and not removed:
                return None
            generation = 1 if row is None else int(row.generation) + 1
            for relative in changed:
                content = (dd.root / relative).read_bytes()
                if hashlib.sha256(content).hexdigest() != files[relative]["sha256"]:
                    raise ConflictError(f"{relative} changed while it was being published: retry")
                values = {
                    "sha256": files[relative]["sha256"],
                    "size": len(content),
                    "generation": generation,
                    "content": content,
                }
                if relative in published:
                    conn.execute(
                        update(site_files).where(site_files.c.path == relative).values(**values)
                    )
                else:
                    conn.execute(insert(site_files).values(path=relative, **values))
            if removed:
                conn.execute(delete(site_files).where(site_files.c.path.in_(removed)))
            stamp = {"generation": generation, "published_at": now, "published_by": actor[:128]}
            if row is None:
                conn.execute(insert(site_publication).values(id=1, site_id=local_id, **stamp))
            else:
                conn.execute(
                    update(site_publication).where(site_publication.c.id == 1).values(**stamp)
                )
        Manifest(local_id, generation, files).save(dd)
        return generation


def pull(dd: DataDir, db: Database | None = None, *, exact: bool = False) -> int | None:
    """Bring ``dd`` to the published generation; returns it, or None if already there.

    ``exact`` re-reads every local file instead of trusting the manifest, so
    whatever was changed here and not published (a failed command) is put
    back as published. Refuses (ConfigError) to overwrite another site.
    """
    db = db or dd.database()
    _require_postgres(db)
    manifest = Manifest.load(dd)
    with db.engine.connect() as probe:
        current = published_generation(probe)
    if current is None:
        raise ConfigError("this database holds no published site: run `homing site publish` first")
    if not exact and manifest is not None and manifest.generation == current[1]:
        return None
    with _local_lock(dd):
        manifest = Manifest.load(dd)
        known = manifest.files if manifest and not exact else {}
        if not known and (dd.metadata_dir / "1.root.json").exists():
            known = _scan(dd, {})
        local_id = manifest.site_id if manifest else None
        if (dd.metadata_dir / "1.root.json").exists():
            local_id = site_id(dd)
        snapshot = db.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        with snapshot as conn, conn.begin():
            published = published_generation(conn)
            assert published is not None
            remote_id, generation = published
            if local_id is not None and local_id != remote_id:
                raise ConfigError(
                    f"{dd.root} is another site than the database's (first root "
                    f"{remote_id[:12]}): refusing to overwrite it"
                )
            if not exact and manifest is not None and manifest.generation == generation:
                return None
            remote = {
                r.path: r.sha256
                for r in conn.execute(select(site_files.c.path, site_files.c.sha256))
            }
            for relative in remote:
                _safe_relative(relative)
            needed = [p for p, sha in remote.items() if known.get(p, {}).get("sha256") != sha]
            ordered = [p for p in needed if p not in LAST] + [p for p in LAST if p in needed]
            for start in range(0, len(ordered), PULL_BATCH):
                batch = ordered[start : start + PULL_BATCH]
                rows = {
                    r.path: bytes(r.content)
                    for r in conn.execute(
                        select(site_files.c.path, site_files.c.content).where(
                            site_files.c.path.in_(batch)
                        )
                    )
                }
                for relative in batch:
                    content = rows[relative]
                    if hashlib.sha256(content).hexdigest() != remote[relative]:
                        raise ConflictError(f"{relative} in the database does not match its digest")
                    atomic_write(dd.root / relative, content)
        for relative in known:
            if relative not in remote:
                (dd.root / relative).unlink(missing_ok=True)
        files = _scan(dd, {p: v for p, v in known.items() if p in remote and p not in needed})
        Manifest(remote_id, generation, files).save(dd)
        return generation


def _safe_relative(relative: str) -> str:
    """A published path stays inside the data directory and inside what is shared."""
    parts = relative.split("/")
    top_ok = relative in SHARED_FILES or parts[0] in SHARED_DIRS
    if not top_ok or relative in LOCAL_FILES or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"the database publishes an unsafe path {relative!r}: refused")
    if os.sep != "/" and os.sep in relative:
        raise ConfigError(f"the database publishes an unsafe path {relative!r}: refused")
    return relative
