"""The fleet audit finds each defect seeded into a real fleet, and nothing in a clean one.

Devices are enrolled over EST on the real server (SQLite and PostgreSQL);
one defect each is then made the way it happens: two devices sharing a key
from before one key held (rows as an old database keeps them), one enrolled
and never seen, one whose certificate is a year old, one holding a
certificate of a device CA distrusted after a theft. The CLI (the installed
``homing audit``), the admin API and the Prometheus gauge all say the same.
"""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from homing import ceremonies
from homing.operations import fleet as operations
from homing.store.schema import certificates, devices
from tests.harness import DeviceCredentials, RunningServer, assert_one_error, run_homing, wait_until

CHECKIN = {"firmware_version": "1.0"}


def _audit_api(server: RunningServer, token: str) -> dict[str, list[str]]:
    answer = server.request(
        "GET", "/v1/admin/fleet-audit", headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status == 200, answer.body
    return dict(answer.json()["findings"])


def _gauge(server: RunningServer) -> dict[str, float]:
    body = server.request("GET", "/metrics").body.decode()
    return {
        s.labels["finding"]: s.value
        for f in text_string_to_metric_families(body)
        if f.name == "homing_fleet_audit_devices"
        for s in f.samples
    }


def test_each_seeded_defect_is_flagged_and_a_clean_fleet_flags_nothing(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    fleet = {d: server.enroll(d, factory, tmp_path) for d in ("a", "b", "c", "d", "e", "f")}
    for device in fleet.values():
        assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), "ops", "read-only")
    assert _audit_api(server, token) == {
        "shared_key": [],
        "never_seen": [],
        "old_certificate": [],
        "distrusted_ca": [],
        "clone_suspected": [],
    }
    assert set(_gauge(server).values()) == {0.0}

    now = server.clock()
    with server.state.db.begin() as conn:
        # b and c share a key, as rows from before one key, one device keep them.
        shared = conn.execute(devices.select().where(devices.c.device_id == "b")).one()
        conn.execute(
            update(devices)
            .where(devices.c.device_id == "c")
            .values(key_spki=shared.key_spki, key_sha256=None)
        )
        # d was enrolled two months ago and never checked in.
        conn.execute(
            update(devices)
            .where(devices.c.device_id == "d")
            .values(last_seen=None, enrolled_at=now - timedelta(days=60))
        )
        # e's newest certificate is more than a year old.
        conn.execute(
            update(certificates)
            .where(certificates.c.subject_id == "e")
            .values(issued_at=now - timedelta(days=400))
        )
    # f's certificate is from a device CA stolen and distrusted.
    ceremonies.rotate_issuing_ca(server.state.dd, "device", datetime.now(UTC), compromised=True)
    server.settle()
    expected = {
        "shared_key": ["b", "c"],
        "never_seen": ["d"],
        "old_certificate": ["e"],
        "distrusted_ca": ["a", "b", "c", "d", "e", "f"],  # every one held that CA's
        "clone_suspected": [],
    }
    assert _audit_api(server, token) == expected
    site = ["--data", str(server.data), "--db", str(server.config.db_url)]
    result = run_homing("audit", "--json", *site)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"] == expected
    result = run_homing("audit", *site)
    assert "never_seen: 1 (d)" in result.stdout
    # The gauges are read at most every five seconds: the next reading says it too.
    wait_until("the gauge updated", lambda: _gauge(server).get("never_seen") == 1)
    assert _gauge(server) == {k: float(len(v)) for k, v in expected.items()}
    assert_one_error(run_homing("audit", "--never-seen-days", "-3", *site), "Invalid value for")


def test_one_certificate_from_two_places_at_once_is_flagged_as_a_clone(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """The same device certificate checks in from 127.0.0.1 and, a minute later, from
    127.0.0.2 (another host, as far as the server can tell): suspected. A device
    that moves after ten minutes is not."""
    cloned = server.enroll("cloned", factory, tmp_path)
    roaming = server.enroll("roaming", factory, tmp_path)
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), "ops", "read-only")

    def check_in_from(device: DeviceCredentials, address: str) -> None:
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            server.port,
            context=server.client_context(device),
            timeout=60,
            source_address=(address, 0),
        )
        try:
            conn.request(
                "POST",
                "/v1/device/checkin",
                json.dumps(CHECKIN),
                {"Content-Type": "application/json"},
            )
            assert conn.getresponse().status == 200
        finally:
            conn.close()

    check_in_from(cloned, "127.0.0.1")
    check_in_from(roaming, "127.0.0.1")
    server.clock.advance(timedelta(minutes=1))
    check_in_from(cloned, "127.0.0.2")
    server.clock.advance(timedelta(minutes=10))
    check_in_from(roaming, "127.0.0.3")
    assert _audit_api(server, token)["clone_suspected"] == ["cloned"]
