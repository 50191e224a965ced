"""The site-change lock lets go of a host that went silent, and a waiting change says who
it waits for, then gives up with one clear error.

On a real PostgreSQL. The holder that goes silent is a real process stopped with
SIGSTOP while it holds the lock: its kernel still answers TCP, as a proxy in front of
the database would for a host cut off behind it, so only the session's own bounds
(``homing.store.bounded_session``) can end it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from homing.errors import ConflictError, StoreError
from homing.site import shared
from homing.store import Database
from homing.store.bounded_session import SESSION_TIMEOUT, advisory_holder
from tests.harness import postgres_database, wait_until

HOLDER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO)
from homing.site.shared import site_change
from homing.store import Database
with site_change(Database(sys.argv[1])):
    print("held", flush=True)
    time.sleep(3600)
"""


@pytest.fixture
def db() -> Iterator[Database]:
    with postgres_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


def _holder_name(db: Database) -> str | None:
    with db.engine.connect() as conn:
        holder = advisory_holder(conn.connection.dbapi_connection, shared.SITE_CHANGE_LOCK)
    return holder.application_name if holder else None


def test_a_change_waits_saying_who_holds_the_lock_then_gives_up_naming_it(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shared, "WAIT_NOTICE", 0.5)
    with shared.site_change(db):
        holder = _holder_name(db)
        assert holder is not None
        assert holder.startswith("homing-site-change:")
        assert holder.endswith(f":{os.getpid()}")
        with caplog.at_level(logging.WARNING, "homing.site.shared"):
            started = time.monotonic()
            with pytest.raises(ConflictError) as refused, shared.site_change(db, wait=1.6):
                raise AssertionError("two changes of the site at once")
            waited = time.monotonic() - started
        assert waited >= 1.6
        assert "another change of the site is in progress" in str(refused.value)
        assert holder in str(refused.value)
        notices = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert len(notices) >= 2
        assert all(holder in n for n in notices)
    # Released: the next change takes it at once.
    with shared.site_change(db, wait=5):
        assert _holder_name(db) == holder


def test_thirty_changes_leave_no_session_and_no_heartbeat_behind(db: Database) -> None:
    """Each change opens a session of its own: none may outlive its change."""
    threads = threading.active_count()

    def sessions() -> int:
        with db.engine.connect() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'homing-site-change:%%'"
                ).scalar_one()
            )

    for _ in range(30):
        with shared.site_change(db, wait=5):
            assert sessions() == 1
    wait_until("every change's session to end", lambda: sessions() == 0)
    wait_until("every heartbeat to stop", lambda: threading.active_count() <= threads)


def test_a_holder_that_goes_silent_loses_the_lock_within_the_bound(
    db: Database, tmp_path: Path
) -> None:
    log = tmp_path / "holder.log"
    with open(log, "wb") as out:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, db.url], stdout=subprocess.PIPE, stderr=out
        )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        name = _holder_name(db)
        assert name == f"homing-site-change:{os.uname().nodename}:{holder.pid}"
        holder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        # Without the bounds, the stopped holder keeps the lock for as long as it lives.
        with shared.site_change(db, wait=SESSION_TIMEOUT + 60):
            took = time.monotonic() - started
            assert _holder_name(db) != name
        print(f"site-change lock taken over from a silent holder after {took:.1f} s")
        assert took < SESSION_TIMEOUT + 30, took
        # Woken, the old holder learns it lost the lock and says so.
        holder.send_signal(signal.SIGCONT)
        wait_until(
            "the old holder to log the loss",
            lambda: b"lost the site-change lock mid-change" in log.read_bytes(),
            timeout=SESSION_TIMEOUT * 4,
        )
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_database_that_refuses_is_one_clear_error() -> None:
    unreachable = Database("postgresql://homing@127.0.0.1:1/nothing")
    with pytest.raises(StoreError) as refused, shared.site_change(unreachable, wait=1):
        raise AssertionError("changed the site without the lock")
    assert str(refused.value).startswith("cannot take the site-change lock: the database refused")
