"""Opening the database: embedded SQLite (WAL) by default, PostgreSQL at scale."""

from __future__ import annotations

import fcntl
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from homing.errors import ConfigError, StoreError

__all__ = ["Database", "database_reason", "normalize_url"]

# What a driver says when the disk under the database has no room left.
_DISK_FULL = ("disk is full", "disk i/o error", "no space left")


def database_reason(error: Exception) -> str:
    """The driver's own words, first line only (the rest is SQLAlchemy's help link).

    A full disk gets said plainly: SQLite reports it as "database or disk is
    full", or as "disk I/O error" when not even its journal fits.
    """
    cause = getattr(error, "orig", None) or error
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if any(words in reason.lower() for words in _DISK_FULL):
        return f"{reason} (is the database's disk full? free space, then retry)"
    return reason


log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def redacted(url: str) -> str:
    """``url`` fit for an error line: a password in it becomes ``***`` (even in a URL that
    does not parse)."""
    return re.sub(r"(://[^:/@\s]*:)\S*@", r"\1***@", url)


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` (as operators write it) and pick the psycopg 3 driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """One engine, configured for durability on either backend."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = normalize_url(url)
        try:
            parsed = make_url(self.url)
        except (ArgumentError, ValueError) as e:  # ValueError: a port that is not a number
            raise ConfigError(f"invalid database URL {redacted(url)!r}") from e
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"unsupported database {self.dialect!r}: use sqlite or postgresql")
        kwargs: dict[str, Any] = {"future": True}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        else:
            kwargs.update(connect_args={"timeout": 30, "check_same_thread": False})
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (ArgumentError, SQLAlchemyError, ImportError) as e:
            raise ConfigError(f"cannot open database {redacted(url)!r}: {redacted(str(e))}") from e
        self._thread_lock = threading.Lock()
        self._lock_path: str | None = None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
            database = parsed.database
            if database and database != ":memory:":
                self._lock_path = database + ".write-lock"

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise hot write transactions across processes on SQLite.

        SQLite allows one writer; a process that finds the database locked
        sleeps in growing steps (1, 2, 5, 10 ms ...) before it retries, which
        dominates latency when several server processes write often. A
        kernel file lock wakes the next writer the moment the lock is free.
        PostgreSQL needs nothing of the kind.
        """
        if self._lock_path is None:
            yield
            return
        with self._thread_lock, open(self._lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def write_lock_if_free(self) -> Iterator[bool]:
        """The SQLite write lock if no one holds it right now; yields whether it is held.

        For a caller that must not wait (the event loop): it never blocks.
        """
        if self._lock_path is None:
            yield False
            return
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            with open(self._lock_path, "a+b") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def impatient_writer(self, wait_ms: int) -> Connection:
        """A dedicated SQLite write connection that gives up after ``wait_ms`` on a busy database.

        It is detached from the pool, so its short busy timeout never
        reaches another caller; close it when done.
        """
        if self.dialect != "sqlite":
            raise StoreError("an impatient writer is for SQLite only")
        conn = self.engine.connect().execution_options(homing_write=True)
        conn.connection.detach()
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
        return conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: atomic on both backends, the write lock taken up front on SQLite.

        Reads go through ``engine.connect()`` and begin deferred; a write
        transaction that read first and then found another process had
        written meanwhile would fail on SQLite, so writes begin IMMEDIATE.
        """
        with self.engine.connect().execution_options(homing_write=True) as conn, conn.begin():
            yield conn

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as e:
            shown = make_url(self.url).render_as_string(hide_password=True)
            raise StoreError(
                f"cannot reach or migrate the database {shown!r}: {database_reason(e)}"
            ) from e

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling issues BEGIN only before DML and lets
    # a SAVEPOINT commit on release; homing emits BEGIN itself (the recipe in
    # SQLAlchemy's SQLite dialect documentation) so every transaction is one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during writes; synchronous=FULL makes every
    # commit durable across a power cut; foreign keys are off by default.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("homing_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")
