"""Hostile bodies and numbers from outside: refused with 400 or 404, never a 5xx.

On SQLite and on a real PostgreSQL: a JSON body nested 20,000 deep (Python's
parser would exhaust its stack), ids past what either database can store,
digits that are not ASCII, and durations too large for any clock.
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing.operations import fleet as operations
from tests.harness import RunningServer, raw_tls, wait_until

DEEP = b'{"device_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
JSON = {"Content-Type": "application/json"}


def test_deeply_nested_json_is_refused_before_parsing(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-1", factory, tmp_path)
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), "ops", "operator")
    admin = {**JSON, "Authorization": f"Bearer {token}"}
    for path, headers, credentials in (
        ("/v1/recover/challenge", JSON, None),  # no certificate needed to send it
        ("/v1/device/checkin", JSON, device),
        ("/v1/admin/rollouts", admin, None),
    ):
        answer = server.request("POST", path, DEEP, headers=headers, device=credentials)
        assert answer.status == 400, (path, answer.status, answer.body)
        assert "nests deeper than 32 levels" in answer.json()["message"]
    # Thirty-two levels are still a body (refused for its content, not its shape).
    shallow = b'{"device_id": ' + b"[" * 31 + b"]" * 31 + b"}"
    answer = server.request("POST", "/v1/recover/challenge", shallow, headers=JSON)
    assert answer.status == 400
    assert "nests deeper" not in answer.json()["message"]


def test_numbers_no_database_can_hold_are_refused(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-1", factory, tmp_path)
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), "ops", "operator")
    bearer = {"Authorization": f"Bearer {token}"}
    for rollout in ("9223372036854775808", "2147483648", "0", "%C2%B2", "-1", "1" * 400):
        answer = server.request("GET", f"/v1/admin/rollouts/{rollout}", headers=bearer)
        assert answer.status == 404, (rollout, answer.status, answer.body)
    for rollout in (2147483648, 9223372036854775808, -1, True, 1e300):
        answer = server.request(
            "POST",
            "/v1/device/update",
            {"rollout": rollout, "state": "installing"},
            device=device,
        )
        assert answer.status == 400, (rollout, answer.status, answer.body)
    admin = {**JSON, **bearer}
    for field, value in (
        ("soak_minutes", 1e300),
        ("deadline_hours", 10**400),
        ("stages", [10**30]),
    ):
        body = {"version": "2.0.0", "hardware": "board-a", field: value}
        answer = server.request("POST", "/v1/admin/rollouts", body, headers=admin)
        assert answer.status == 400, (field, answer.status, answer.body)
    limit = server.request("GET", "/v1/admin/devices?limit=%C2%B2", headers=bearer)
    assert limit.status == 400


def _partial_body(tls: ssl.SSLSocket, framing: bytes, body_start: bytes) -> None:
    """Headers and a first piece of a body the client will not finish."""
    tls.sendall(
        b"POST /v1/recover/challenge HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\n" + framing + b"\r\n" + body_start
    )


PARTIAL = (
    (b"Content-Length: 1000\r\n", b'{"device_id": "d'),
    (b"Transfer-Encoding: chunked\r\n", b'5\r\n{"dev\r\n'),
)


def test_a_client_that_gives_up_mid_body_is_logged_as_such(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: thousands of abandoned bodies must not flood the log with tracebacks."""
    import logging

    caplog.set_level(logging.INFO, logger="homing.server")
    rounds = 20
    for _ in range(rounds):
        for framing, start in PARTIAL:
            with raw_tls(server) as tls:  # the client goes away: reset, not a body
                _partial_body(tls, framing, start)
                tls.shutdown(socket.SHUT_RDWR)

    def closed() -> int:
        return sum("closed the connection" in r.getMessage() for r in caplog.records)

    wait_until("every abort logged", lambda: closed() >= 2 * rounds)
    assert closed() == 2 * rounds
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records if r.name == "homing.server")
    # And the server answers the next honest request.
    answer = server.request("POST", "/v1/recover/challenge", {"device_id": "nobody"})
    assert answer.status in (200, 404)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_body_that_never_finishes_is_answered_408(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a slow or unfinished body must not hold a connection as long as it likes."""
    from homing import ceremonies
    from tests.harness import Clock

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    with RunningServer(data, db_url, Clock(), body_timeout=1.0).start() as server:
        for framing, start in PARTIAL:
            with raw_tls(server) as tls:  # the server answers in about a second
                _partial_body(tls, framing, start)
                head = tls.recv(4096)
            assert head.startswith(b"HTTP/1.1 408"), head[:100]
            assert b"body_timeout" in head
        # Honest requests are unaffected.
        answer = server.request("POST", "/v1/recover/challenge", {"device_id": "nobody"})
        assert answer.status in (200, 404)
