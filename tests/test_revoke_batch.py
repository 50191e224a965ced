"""Revocation in bulk, from outside: by a list, by a factory station's run, by issuing CA.

A compromised production batch is revoked in one call through the admin
API and through the installed ``homing`` command, on SQLite and PostgreSQL:
the devices chosen stop at their next request (a real check-in over mutual
TLS), every other device goes on, the device CRL is re-signed once and
lists them, and one audit entry keeps the selection.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.operations import fleet as operations
from homing.store.audit import audit_entries
from tests.harness import (
    DeviceCredentials,
    RunningServer,
    assert_one_error,
    run_homing,
)

CHECKIN = {"firmware_version": "1.0"}


def _checks_in(server: RunningServer, device: DeviceCredentials) -> int:
    return server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status


def _crl_serials(server: RunningServer) -> set[int]:
    crl = x509.load_pem_x509_crl((server.data / "pki" / "device-ca.crl.pem").read_bytes())
    return {r.serial_number for r in crl}


def test_a_stations_production_run_is_revoked_in_one_call(
    server: RunningServer, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    line_a = ("line-a", operations.add_factory(server.state.db, "test", now, "line-a"))
    line_b = ("line-b", operations.add_factory(server.state.db, "test", now, "line-b"))
    early = [server.enroll(f"a-early-{n}", line_a, tmp_path) for n in range(3)]
    server.clock.advance(timedelta(days=10))
    run_start = server.clock()
    bad = [server.enroll(f"a-bad-{n}", line_a, tmp_path) for n in range(4)]
    server.clock.advance(timedelta(days=10))
    run_end = server.clock()
    late = [server.enroll(f"a-late-{n}", line_a, tmp_path) for n in range(2)]
    other = [server.enroll(f"b-{n}", line_b, tmp_path) for n in range(2)]
    token = operations.add_token(server.state.db, "test", now, "ops", "operator")
    admin = {"Authorization": f"Bearer {token}"}
    window = {"station": "line-a", "since": run_start.isoformat(), "until": run_end.isoformat()}

    counted = server.request(
        "POST", "/v1/admin/revocations", {**window, "dry_run": True}, headers=admin
    )
    assert counted.status == 200, counted.body
    assert counted.json()["devices"] == 4
    assert all(_checks_in(server, d) == 200 for d in bad)  # a dry run changes nothing

    answer = server.request(
        "POST", "/v1/admin/revocations", {**window, "reason": "key leak"}, headers=admin
    )
    assert answer.status == 200, answer.body
    assert answer.json()["devices"] == 4
    assert answer.json()["revoked_certificates"] == 4
    assert [_checks_in(server, d) for d in bad] == [403] * 4
    assert all(_checks_in(server, d) == 200 for d in early + late + other)
    assert {d.certificate.serial_number for d in bad} <= _crl_serials(server)
    with server.state.db.begin() as conn:
        entries = [e for e in audit_entries(conn, 50) if e["action"] == "revoke_batch"]
    assert len(entries) == 1
    assert entries[0]["actor"] == "token:ops"
    assert entries[0]["detail"]["selection"]["station"] == "line-a"
    assert entries[0]["detail"]["devices"] == 4

    # Nothing left to take: said so, not a silent success.
    again = server.request("POST", "/v1/admin/revocations", window, headers=admin)
    assert again.status == 404
    for wrong in (
        {},
        {"station": "line-a", "device_ids": ["x"]},
        {"device_ids": ["a-late-0"], "since": run_start.isoformat()},
        {"station": "line-a", "since": "yesterday"},
        {"station": "line-a", "colour": "red"},
    ):
        refused = server.request("POST", "/v1/admin/revocations", wrong, headers=admin)
        assert refused.status == 400, (wrong, refused.body)


def test_the_cli_revokes_a_list_and_an_issuing_cas_devices(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    old = [server.enroll(f"old-{n}", factory, tmp_path) for n in range(3)]
    ids = tmp_path / "ids.txt"
    ids.write_text("# the returned units\nold-0\nold-2  # cracked case\nnobody\n")
    data = ["--data", str(server.data), "--db", str(server.config.db_url)]
    result = run_homing("revoke-batch", "--ids", str(ids), "--reason", "returned", *data)
    assert result.returncode == 0, result.stderr
    assert "revoked 2 device(s)" in result.stdout
    assert [_checks_in(server, d) for d in old] == [403, 200, 403]

    # Every device still holding a certificate from the current device CA.
    ceremonies.rotate_issuing_ca(server.state.dd, "device", datetime.now(UTC))
    server.settle()
    newer = server.enroll("new-0", factory, tmp_path)
    issuer = tmp_path / "old-ca.pem"
    issuer_cert = old[1].certificate.issuer
    cas = x509.load_pem_x509_certificates((server.data / "pki" / "device-cas.pem").read_bytes())
    issuer.write_bytes(
        next(c for c in cas if c.subject == issuer_cert).public_bytes(serialization.Encoding.PEM)
    )
    result = run_homing("revoke-batch", "--issuer", str(issuer), *data)
    assert result.returncode == 0, result.stderr
    assert "revoked 1 device(s)" in result.stdout
    assert _checks_in(server, old[1]) == 403
    assert _checks_in(server, newer) == 200

    # Bad input: one clear line each.
    assert_one_error(run_homing("revoke-batch", *data), "choose devices one way")
    assert_one_error(
        run_homing("revoke-batch", "--station", "line-1", "--since", "soon", *data),
        "--since must be an ISO 8601 time",
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(base64.b64encode(b"not a certificate"))
    assert_one_error(
        run_homing("revoke-batch", "--issuer", str(garbage), *data), "is not a PEM certificate"
    )
