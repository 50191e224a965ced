"""The database goes away and comes back: the server degrades, never cascades.

A real PostgreSQL behind a TCP path the test cuts (as a database host that
went away). While it is cut: TUF metadata is still served from disk (it
authenticates itself), a check-in answers 503 with a Retry-After in the
spread window, the log says once that the database is unreachable and
holds no traceback. Mended: check-ins answer 200 again and the log says
once that it is back.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.server.availability import RETRY_AFTER
from tests.harness import Clock, RunningServer, postgres_database, wait_until
from tests.tcp_cut import tcp_cut

CHECKIN = {"firmware_version": "1.0.0", "trust": {}}


def test_a_database_outage_degrades_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import urlsplit

    from homing.operations import fleet as operations

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    caplog.set_level(logging.INFO, logger="homing.server")
    with postgres_database() as url, tcp_cut(("127.0.0.1", 5432)) as path:
        parts = urlsplit(url)
        through = url.replace(f"@{parts.hostname}:{parts.port}", f"@127.0.0.1:{path.port}")
        data = tmp_path / "site"
        ceremonies.init(data, datetime.now(UTC))
        with RunningServer(data, through, Clock()).start() as server:
            factory = operations.add_factory(server.state.db, "t", datetime.now(UTC), "s1")
            device = server.enroll("dev-1", ("s1", factory), tmp_path)
            assert (
                server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200
            )

            path.cut()
            for _ in range(10):
                metadata = server.request("GET", "/tuf/metadata/timestamp.json")
                assert metadata.status == 200, metadata.body
                answer = server.request("POST", "/v1/device/checkin", CHECKIN, device=device)
                assert answer.status == 503, answer.body
                assert answer.json()["error"] == "database_unavailable"
                assert RETRY_AFTER[0] <= int(answer.headers["retry-after"]) <= RETRY_AFTER[1]
            # Alive, not ready: the load balancer sends devices to another replica.
            assert server.request("GET", "/healthz").status == 200
            ready = server.request("GET", "/readyz")
            assert ready.status == 503
            assert "the database is unreachable" in ready.json()["message"]
            messages = [r.getMessage() for r in caplog.records if r.name == "homing.server"]
            assert sum("database is unreachable" in m for m in messages) == 1, messages
            assert [r for r in caplog.records if r.exc_info is not None] == []

            path.mend()
            # The pool reconnects on its own: the next check-ins are answered again.
            wait_until(
                "a check-in answered after the outage",
                lambda: (
                    server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status
                    == 200
                ),
            )
            assert server.request("GET", "/readyz").status == 200
            messages = [r.getMessage() for r in caplog.records if r.name == "homing.server"]
            assert sum("database answers again" in m for m in messages) == 1, messages


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_replica_whose_timestamp_expired_is_not_ready(server: RunningServer) -> None:
    from datetime import timedelta

    assert server.request("GET", "/readyz").json()["status"] == "ready"
    server.clock.advance(timedelta(days=2))  # the signer stopped: nothing re-signed it
    ready = server.request("GET", "/readyz")
    assert ready.status == 503
    assert "the signer has stopped" in ready.json()["message"]
    assert server.request("GET", "/healthz").status == 200
