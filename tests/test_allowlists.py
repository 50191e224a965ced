"""A stolen station secret enrolls nothing outside the station's manifest.

Attack on the real server over EST (SQLite and PostgreSQL): the operator
limits a station, through the installed ``homing`` command, to a manifest
(one id pre-registered with its key), a quota and an expiry, and blocks one
id of the run. Whoever holds the station's secret then tries ids off the
manifest, a listed id with another key, the blocked id, another station's
id, more than the quota and enrollments after the expiry: each is answered
403 ``not_allowed`` and audited, and nothing is issued for it.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from homing.operations import fleet as operations
from homing.store.audit import audit_entries
from homing.store.schema import certificates, devices
from tests.harness import RunningServer, assert_one_error, est_csr, run_homing


def _enroll(
    server: RunningServer, station: tuple[str, str], device_id: str, key: ec.EllipticCurvePrivateKey
) -> tuple[int, str]:
    token = base64.b64encode(f"{station[0]}:{station[1]}".encode()).decode()
    answer = server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.b64encode(est_csr(key, device_id)),
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
    )
    code = answer.json()["error"] if answer.status != 200 else ""
    return answer.status, code


def _fingerprint(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def test_a_stolen_station_secret_enrolls_nothing_off_its_manifest(
    server: RunningServer, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    line = ("line-a", operations.add_factory(server.state.db, "test", now, "line-a"))
    other = ("line-b", operations.add_factory(server.state.db, "test", now, "line-b"))
    preregistered = ec.generate_private_key(ec.SECP256R1())
    manifest = tmp_path / "run-42.txt"
    manifest.write_text(
        "# production run 42\n"
        f"unit-1 {_fingerprint(preregistered)}\n"
        "unit-2\nunit-3\nunit-4   # dropped on the floor\nunit-5\n"
    )
    site = ["--data", str(server.data), "--db", str(server.config.db_url)]
    for args in (
        ("factory", "manifest", "line-a", str(manifest)),
        ("factory", "block", "unit-4", "--reason", "lost on the line"),
        ("factory", "limit", "line-a", "--quota", "3"),
    ):
        result = run_homing(*args, *site)
        assert result.returncode == 0, result.stderr

    key = lambda: ec.generate_private_key(ec.SECP256R1())  # noqa: E731
    # Whoever holds the secret: ids off the manifest, a listed id with another key,
    # the blocked id, and line-a's id through another station.
    for device_id, with_key, station in (
        ("intruder-1", key(), line),
        ("unit-1", key(), line),
        ("unit-4", key(), line),
        ("unit-2", key(), other),
    ):
        assert _enroll(server, station, device_id, with_key) == (403, "not_allowed"), device_id
    # The run enrolls as planned, up to its quota.
    assert _enroll(server, line, "unit-1", preregistered) == (200, "")
    assert _enroll(server, line, "unit-2", key()) == (200, "")
    assert _enroll(server, line, "unit-3", key()) == (200, "")
    assert _enroll(server, line, "unit-5", key()) == (403, "not_allowed")  # past the quota
    with server.state.db.begin() as conn:
        enrolled = set(
            conn.execute(
                select(devices.c.device_id).where(devices.c.enrolled_by == "factory:line-a")
            ).scalars()
        )
        issued = conn.execute(
            select(func.count()).select_from(certificates).where(certificates.c.kind == "device")
        ).scalar_one()
        refused = [e for e in audit_entries(conn, 100) if e["action"] == "enroll_refused"]
    assert enrolled == {"unit-1", "unit-2", "unit-3"}
    assert issued == 3
    assert len(refused) == 5
    assert {e["target"] for e in refused} == {"intruder-1", "unit-1", "unit-4", "unit-2", "unit-5"}

    # An expiry ends the station's allowance; another station is not bound by it.
    result = run_homing(
        "factory", "limit", "line-b", "--expires", (now + timedelta(days=1)).isoformat(), *site
    )
    assert result.returncode == 0, result.stderr
    assert _enroll(server, other, "b-1", key()) == (200, "")
    server.clock.advance(timedelta(days=2))
    assert _enroll(server, other, "b-2", key()) == (403, "not_allowed")


def test_the_factory_bounds_refuse_bad_input_in_one_line(
    server: RunningServer, tmp_path: Path
) -> None:
    operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-a")
    site = ["--data", str(server.data), "--db", str(server.config.db_url)]
    broken = tmp_path / "broken.txt"
    broken.write_text("unit-1 not-a-fingerprint\n")
    assert_one_error(
        run_homing("factory", "manifest", "line-a", str(broken), *site),
        "expected 'DEVICE_ID [KEY_SHA256_HEX]'",
    )
    listed = tmp_path / "listed.txt"
    listed.write_text("unit-1\n")
    assert_one_error(
        run_homing("factory", "manifest", "nobody", str(listed), *site), "no factory station"
    )
    assert_one_error(
        run_homing("factory", "limit", "line-a", "--expires", "someday", *site),
        "--expires must be an ISO 8601 time",
    )
    assert run_homing("factory", "block", "unit-9", *site).returncode == 0
    assert_one_error(run_homing("factory", "block", "unit-9", *site), "blocked already")
