"""Hostile bodies and numbers from outside: refused with 400 or 404, never a 5xx.

On SQLite and on a real PostgreSQL: a JSON body nested 20,000 deep (Python's
parser would exhaust its stack), ids past what either database can store,
digits that are not ASCII, and durations too large for any clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from homing.operations import fleet as operations
from tests.harness import RunningServer

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
