"""Nothing one device sends can fill the disk: what it stores is bounded, whatever it sends.

A device floods the real server with check-ins carrying the largest health
it may send, over one keep-alive connection, on SQLite and on a real
PostgreSQL; its history stops at the bound and, once full, the database
stops growing. Anyone may ask for recovery challenges; one device's stay
bounded too.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, text

from homing.config import Limits
from homing.store import device_contacts as contacts
from homing.store import devices as device_store
from homing.store.schema import recovery_nonces
from tests.harness import DeviceCredentials, HTTPSConnection, RunningServer

BOUND = Limits.checkin_history_per_device
# The largest health a check-in may carry (4,096 bytes of JSON).
HEALTH = {"log": "x" * 4070}


def _flood(server: RunningServer, device: DeviceCredentials, count: int) -> list[int]:
    """``count`` check-ins on one keep-alive connection; the statuses answered."""
    body = json.dumps({"health": HEALTH, "firmware_version": "1.0"}).encode()
    assert len(json.dumps(HEALTH)) <= 4096
    conn = HTTPSConnection(
        "127.0.0.1", server.port, context=server.client_context(device), timeout=60
    )
    statuses = []
    try:
        for _ in range(count):
            conn.request(
                "POST", "/v1/device/checkin", body, headers={"Content-Type": "application/json"}
            )
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        conn.close()
    return statuses


def _pages_in_use(server: RunningServer) -> int:
    with server.state.db.begin() as conn:
        pages = conn.execute(text("PRAGMA page_count")).scalar_one()
        free = conn.execute(text("PRAGMA freelist_count")).scalar_one()
    return int(pages) - int(free)


def test_a_flooding_device_rewrites_its_own_history_instead_of_growing_it(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    chatty = server.enroll("dev-chatty", factory, tmp_path)
    quiet = server.enroll("dev-quiet", factory, tmp_path)
    assert set(_flood(server, quiet, 3)) == {200}
    assert set(_flood(server, chatty, BOUND + 10)) == {200}
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "dev-chatty") == BOUND
        assert contacts.count_checkins(conn, "dev-quiet") == 3
    sqlite = server.state.db.dialect == "sqlite"
    before = _pages_in_use(server) if sqlite else 0

    assert set(_flood(server, chatty, 3 * BOUND)) == {200}
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "dev-chatty") == BOUND
        # The other device's history is untouched by its neighbour's flood.
        assert contacts.count_checkins(conn, "dev-quiet") == 3
        row = device_store.device(conn, "dev-chatty")
        assert row is not None
        assert row.last_seen is not None
    if sqlite:
        # Three times the history again in 4 KiB bodies (3 MiB sent): the database
        # reuses the rows it had, growing by at most a few pages of index churn.
        assert _pages_in_use(server) - before <= 16, (before, _pages_in_use(server))
    # The newest check-in is in the history: the ring overwrote the oldest.
    quiet_again = _flood(server, chatty, 1)
    assert quiet_again == [200]
    with server.state.db.begin() as conn:
        newest = conn.execute(
            text("SELECT max(at) FROM checkins WHERE device_id = 'dev-chatty'")
        ).scalar_one()
        row = device_store.device(conn, "dev-chatty")
    assert row is not None
    assert str(newest)[:19].replace("T", " ") == str(row.last_seen)[:19].replace("T", " ")


def test_recovery_challenges_for_one_device_stay_bounded(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    server.enroll("dev-1", factory, tmp_path)
    nonces = []
    for _ in range(40):
        server.clock.advance(timedelta(seconds=1))
        answer = server.request("POST", "/v1/recover/challenge", {"device_id": "dev-1"})
        assert answer.status == 200, answer.body
        nonces.append(answer.json()["nonce"])
    with server.state.db.begin() as conn:
        held = conn.execute(
            select(recovery_nonces.c.nonce).where(recovery_nonces.c.device_id == "dev-1")
        ).scalars()
        kept = set(held)
        total = conn.execute(select(func.count()).select_from(recovery_nonces)).scalar_one()
    bound = Limits.open_recovery_nonces_per_device
    assert total == bound
    # The newest challenges stay open; the oldest lapsed.
    assert kept == set(nonces[-bound:])
