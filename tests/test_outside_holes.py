"""Holes found from outside, by an operator and by an attacker: each one closed.

Every test here failed on the code before the fix: a revoked device that
recovered, a re-keyed device whose old key still worked, an RSA certificate
accepted behind a proxy, tokens that could not be revoked, ceremonies that
left no audit line, a SHA-1 CSR reported as a failed proof of possession,
a rollout that ignored its deadline, a half-written CA rotation served.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from homing import ceremonies
from homing.errors import PolicyError
from homing.operations import fleet as operations
from homing.pki.profiles import ApprovedRequest, approve_csr, device_profile, device_uri
from homing.server.config import ServerConfig
from homing.server.state import ServerState
from homing.site import DataDir
from homing.site.ledger import DatabaseLedger
from homing.store import audit
from homing.store import device_contacts as contacts
from homing.store import devices as device_store
from tests.harness import (
    DeviceCredentials,
    Response,
    RunningServer,
    certs_from_pkcs7,
    est_csr,
    recover_with_key,
    run_homing,
    save_device,
)

CHECKIN = {"firmware_version": "1.0.0", "trust": {"root": 1, "timestamp": 1, "targets": 1}}


def _token(server: RunningServer, role: str, name: str) -> dict[str, str]:
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), name, role)
    return {"Authorization": f"Bearer {token}"}


def _reenroll(
    server: RunningServer, device: DeviceCredentials, key: ec.EllipticCurvePrivateKey
) -> tuple[int, bytes]:
    response = server.request(
        "POST",
        "/.well-known/est/simplereenroll",
        base64.b64encode(est_csr(key, device.device_id)),
        headers={"Content-Type": "application/pkcs10"},
        device=device,
    )
    return response.status, response.body


def _simpleenroll(server: RunningServer, factory: tuple[str, str], csr: bytes) -> Response:
    """EST enrollment by a factory station (RFC 7030 4.2.1, Basic credentials)."""
    token = base64.b64encode(f"{factory[0]}:{factory[1]}".encode()).decode()
    return server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.b64encode(csr),
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
    )


# -- 2. one meaning of revocation ----------------------------------------------


def test_pki_revoke_of_a_device_stops_recovery_like_homing_revoke(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path, db_url: str
) -> None:
    """Attack: a stolen device, revoked with `homing pki revoke`, recovers by key proof."""
    device = server.enroll("dev-a2", factory, tmp_path)
    result = run_homing(
        "pki",
        "revoke",
        "--data",
        str(server.data),
        "--device",
        "dev-a2",
        "--reason",
        "stolen",
        env={"HOMING_DB": db_url},
    )
    assert result.returncode == 0, result.stderr
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-a2")
    assert row is not None
    assert row.status == "revoked"
    assert recover_with_key(server, "dev-a2", device.key)[0] == 403
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 403
    assert _reenroll(server, device, device.key)[0] == 403
    # A factory cannot enroll the revoked id afresh either.
    again = _simpleenroll(
        server, factory, est_csr(ec.generate_private_key(ec.SECP256R1()), "dev-a2")
    )
    assert again.status == 409


def test_revoking_a_device_certificate_by_serial_revokes_the_device(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-s", factory, tmp_path)
    count = ceremonies.revoke(
        server.state.dd, datetime.now(UTC), serial=device.certificate.serial_number
    )
    assert count == 1
    assert recover_with_key(server, "dev-s", device.key)[0] == 403


def test_revoking_a_device_that_only_had_offline_certificates_keeps_a_tombstone(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    ceremonies.issue_certificate(
        server.state.dd, est_csr(key, "dev-off"), "device", datetime.now(UTC)
    )
    ceremonies.revoke(server.state.dd, datetime.now(UTC), device_id="dev-off")
    enroll = _simpleenroll(server, factory, est_csr(key, "dev-off"))
    assert enroll.status == 409


# -- 3. a re-key supersedes ---------------------------------------------------


def test_a_rekey_supersedes_the_old_certificate_and_key(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """Attack: the old key and certificate, copied before a re-key, keep working."""
    old = server.enroll("dev-rk", factory, tmp_path)
    new_key = ec.generate_private_key(ec.SECP256R1())
    status, body = _reenroll(server, old, new_key)
    assert status == 200, body
    new = save_device(tmp_path, "dev-rk", new_key, certs_from_pkcs7(body)[0])
    refused = server.request("POST", "/v1/device/checkin", CHECKIN, device=old)
    assert refused.status == 403
    assert "superseded" in refused.json()["message"]
    assert _reenroll(server, old, old.key)[0] == 403
    status, answer = recover_with_key(server, "dev-rk", old.key)
    assert (status, answer["error"]) == (403, "recovery_refused")
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=new).status == 200
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-rk")
        entries = audit.audit_entries(conn, 20)
    assert row is not None
    assert row.key_spki == new_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert any(e["action"] == "reenroll" and e["target"] == "dev-rk" for e in entries)
    crl = x509.load_pem_x509_crl(
        ceremonies.write_crl(server.state.dd, "device", datetime.now(UTC)).read_bytes()
    )
    assert crl.get_revoked_certificate_by_serial_number(old.certificate.serial_number)


def test_a_certificate_for_another_key_of_an_enrolled_device_is_refused(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """Attack: a certificate for the device's name but not its key (the device CA used by hand)."""
    server.enroll("dev-k", factory, tmp_path)
    other_key = ec.generate_private_key(ec.SECP256R1())
    chain = ceremonies.issue_certificate(
        server.state.dd, est_csr(other_key, "dev-k"), "device", datetime.now(UTC)
    )
    impostor = save_device(tmp_path, "dev-k", other_key, chain[0])
    refused = server.request("POST", "/v1/device/checkin", CHECKIN, device=impostor)
    assert refused.status == 403
    assert refused.json()["message"] == "certificate is not for the device's registered key"
    with server.state.db.engine.connect() as conn:
        assert contacts.count_checkins(conn, "dev-k") == 0


def test_a_renewal_with_the_same_key_keeps_the_device_whole(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-same", factory, tmp_path)
    status, body = _reenroll(server, device, device.key)
    assert status == 200
    renewed = save_device(tmp_path, "dev-same", device.key, certs_from_pkcs7(body)[0])
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=renewed).status == 200
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200


# -- 4. the same leaf profile on every validation path --------------------------


def _rsa_device(server: RunningServer, tmp_path: Path, bits: int) -> DeviceCredentials:
    """A device certificate the profile forbids, signed by the real device CA anyway.

    This is what a policy change leaves behind, or a CA key used outside
    homing: everything else about it is in order (enrolled, recorded, key
    registered), so only the leaf profile can refuse it.
    """
    key = rsa.generate_private_key(65537, bits)
    device_id = f"dev-rsa{bits}"
    now = datetime.now(UTC)
    approved = ApprovedRequest(
        profile=device_profile(),
        public_key=key.public_key(),
        subject_id=device_id,
        san=(x509.UniformResourceIdentifier(device_uri(device_id)),),
    )
    with server.state.db.begin() as conn:
        cert = server.state.device_authority(DatabaseLedger(server.state.db, conn, now)).issue(
            approved, now
        )
        device_store.enroll_device(
            conn,
            device_id,
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            now,
            "test",
        )
    return save_device(tmp_path, device_id, key, cert)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [1024, 2048])
def test_an_rsa_device_certificate_is_refused_over_tls(
    server: RunningServer, tmp_path: Path, bits: int
) -> None:
    device = _rsa_device(server, tmp_path, bits)
    # The attacker's own TLS stack allows any key size.
    context = ssl.create_default_context(cafile=str(server.data / "pki" / "root-ca.pem"))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(device.cert_file, device.key_file)
    response = server.request("POST", "/v1/device/checkin", CHECKIN, context=context)
    assert response.status == 401
    assert "RSA keys are not allowed" in response.json()["message"]
    with server.state.db.engine.connect() as conn:
        assert contacts.count_checkins(conn, device.device_id) == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("bits", [1024, 2048])
def test_an_rsa_device_certificate_is_refused_behind_a_trusted_proxy(
    server: RunningServer,
    tmp_path: Path,
    clock,
    db_url: str,
    bits: int,  # type: ignore[no-untyped-def]
) -> None:
    device = _rsa_device(server, tmp_path, bits)
    proxied = RunningServer(server.data, db_url, clock, trusted_proxies=("127.0.0.1/32",)).start()
    try:
        header = {"X-Client-Cert": quote(device.cert_pem.decode())}
        response = proxied.request("POST", "/v1/device/checkin", CHECKIN, headers=header)
    finally:
        proxied.stop()
    assert response.status == 401
    assert "RSA keys are not allowed" in response.json()["message"]


# -- 6. a SHA-1 CSR is named as such ----------------------------------------------


def _sha1_csr(device_id: str, tmp_path: Path) -> bytes:
    """A CSR signed with ECDSA-SHA1, made by openssl (cryptography refuses to sign one)."""
    key = tmp_path / "sha1.key"
    out = tmp_path / "sha1.csr"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-key",
            str(key),
            "-sha1",
            "-subj",
            f"/CN={device_id}",
            "-addext",
            f"subjectAltName=URI:{device_uri(device_id)}",
            "-outform",
            "DER",
            "-out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def test_a_sha1_csr_is_refused_for_its_hash_not_as_a_failed_proof(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="signed with SHA1"):
        approve_csr(_sha1_csr("dev-sha1", tmp_path), device_profile())


def test_a_sha1_csr_over_est_is_answered_with_the_reason(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    response = _simpleenroll(server, factory, _sha1_csr("dev-sha1", tmp_path))
    assert response.status == 400
    assert "SHA1" in response.json()["message"]
    assert "proof of possession" not in response.json()["message"]


# -- 5. tokens and factory stations have a lifecycle; every ceremony is audited ------


def test_a_revoked_operator_token_is_refused_at_its_next_request(server: RunningServer) -> None:
    admin = _token(server, "operator", "admin")
    created = server.request(
        "POST", "/v1/admin/tokens", {"name": "temp", "role": "read-only"}, headers=admin
    )
    assert created.status == 201
    temp = {"Authorization": f"Bearer {created.json()['token']}"}
    assert server.request("GET", "/v1/admin/devices", headers=temp).status == 200
    listed = server.request("GET", "/v1/admin/tokens", headers=admin).json()["tokens"]
    assert {t["name"] for t in listed} == {"admin", "temp"}
    assert all("token" not in t and "hash" not in str(t) for t in listed)
    # A read-only token cannot manage tokens.
    assert server.request("POST", "/v1/admin/tokens/admin/revoke", headers=temp).status == 403
    assert server.request("POST", "/v1/admin/tokens/temp/revoke", headers=admin).status == 200
    assert server.request("GET", "/v1/admin/devices", headers=temp).status == 401
    assert server.request("POST", "/v1/admin/tokens/temp/revoke", headers=admin).status == 409
    assert server.request("POST", "/v1/admin/tokens/ghost/revoke", headers=admin).status == 404
    actions = [
        e["action"]
        for e in server.request("GET", "/v1/admin/audit", headers=admin).json()["entries"]
    ]
    assert "revoke_token" in actions
    assert "add_token" in actions


def test_a_disabled_factory_station_enrolls_nothing(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    admin = _token(server, "operator", "admin")
    server.enroll("dev-f1", factory, tmp_path)
    stations = server.request("GET", "/v1/admin/factories", headers=admin).json()["factories"]
    assert stations == [
        {
            "name": "station-1",
            "created_at": stations[0]["created_at"],
            "disabled_at": None,
            "kind": "secret",
        }
    ]
    disabled = server.request("POST", "/v1/admin/factories/station-1/disable", headers=admin)
    assert disabled.status == 200
    refused = _simpleenroll(
        server, factory, est_csr(ec.generate_private_key(ec.SECP256R1()), "dev-f2")
    )
    assert refused.status == 401
    assert "disabled" in refused.json()["message"]
    with server.state.db.engine.connect() as conn:
        assert device_store.device(conn, "dev-f2") is None
        assert "disable_factory" in [e["action"] for e in audit.audit_entries(conn, 10)]


def test_every_ceremony_leaves_an_audit_line(data_dir: Path, tmp_path: Path) -> None:
    from homing.ceremonies.releases import release

    now = datetime.now(UTC)
    dd = DataDir(data_dir)
    ceremonies.rotate_root(dd, now, actor="cli:alice")
    ceremonies.rotate_online_keys(dd, now, actor="cli:alice")
    ceremonies.rotate_issuing_ca(dd, "server", now, actor="cli:alice")
    ceremonies.rotate_issuing_ca(dd, "device", now, actor="cli:alice")
    ceremonies.rotate_server_cert(dd, now, actor="cli:alice")
    ceremonies.refresh_timestamp(dd, now, actor="cli:alice")
    ceremonies.refresh_targets(dd, now, actor="cli:alice")
    key = ec.generate_private_key(ec.SECP256R1())
    ceremonies.issue_certificate(dd, est_csr(key, "dev-x"), "device", now, actor="cli:alice")
    ceremonies.revoke(dd, now, device_id="dev-x", actor="cli:alice")
    image = tmp_path / "fw.bin"
    image.write_bytes(b"firmware")
    release(dd, image, "2.0.0", "board-a", now, actor="cli:alice")
    ceremonies.recovery_bundle(dd, tmp_path / "b.tar", now, actor="cli:alice")
    with dd.database().engine.connect() as conn:
        entries = audit.audit_entries(conn, 100)
    actions = {e["action"] for e in entries if e["actor"] == "cli:alice"}
    assert actions >= {
        "rotate_root",
        "rotate_online_keys",
        "rotate_server_ca",
        "rotate_device_ca",
        "rotate_server_cert",
        "refresh_timestamp",
        "refresh_targets",
        "issue_device_certificate",
        "revoke_device",
        "release",
        "recovery_bundle",
    }


# -- 1. rollouts keep every field they are given ------------------------------------


def test_the_admin_api_keeps_every_rollout_field(server: RunningServer, tmp_path: Path) -> None:
    from homing.ceremonies.releases import release

    image = tmp_path / "fw.bin"
    image.write_bytes(b"firmware")
    release(server.state.dd, image, "2.0.0", "board-a", datetime.now(UTC))
    admin = _token(server, "operator", "admin")
    body = {
        "version": "2.0.0",
        "hardware": "board-a",
        "stages": [5, 100],
        "max_failure_ratio": 0.2,
        "success_ratio": 0.75,
        "soak_minutes": 30,
        "deadline_hours": 6,
    }
    for bad, field in (
        ({**body, "deadline_hours": "soon"}, "deadline_hours"),
        ({**body, "soak_minutes": -1}, "soak_minutes"),
        ({**body, "success_ratio": True}, "success_ratio"),
        ({**body, "deadline": 6}, "unknown field"),
    ):
        refused = server.request("POST", "/v1/admin/rollouts", bad, headers=admin)
        assert refused.status == 400, refused.body
        assert field in refused.json()["message"]
    created = server.request("POST", "/v1/admin/rollouts", body, headers=admin)
    assert created.status == 201, created.body
    ro = created.json()
    assert (ro["stages"], ro["max_failure_ratio"], ro["success_ratio"]) == ([5, 100], 0.2, 0.75)
    assert (ro["soak_minutes"], ro["deadline_hours"]) == (30, 6)


# -- 9. a device CA rotation is taken up as one unit ----------------------------------


def test_a_half_written_device_ca_rotation_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ceremony writes trust, certificate, then settings; the server waits for all three."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    state = ServerState(ServerConfig(data=data, port=0, db_url=f"sqlite:///{tmp_path / 'db'}"))
    try:
        before = state.device_ca
        settings_file = DataDir(data).settings_path
        old_settings = settings_file.read_bytes()
        ceremonies.rotate_issuing_ca(data, "device", datetime.now(UTC))
        new_settings = settings_file.read_bytes()
        # The moment between the certificate and the settings being written.
        shutil.copy(settings_file, tmp_path / "settings.new")
        settings_file.write_bytes(old_settings)
        assert state.reload_if_changed() is False
        assert state.device_ca == before
        settings_file.write_bytes(new_settings)
        assert state.reload_if_changed() is True
        assert state.device_ca != before
        assert state.device_ca in state.device_cas
        assert before in state.device_cas
    finally:
        state.close()


# -- 10. the OpenAPI document describes what the server answers ------------------------


def test_openapi_lists_every_route_and_every_json_body(server: RunningServer) -> None:
    document = server.request("GET", "/openapi.json").json()
    routes = set()
    for resource in server.app.router.resources():
        path = resource.canonical.replace("{path:.+}", "{path}")
        for route in resource:
            if route.method not in ("HEAD", "OPTIONS"):
                routes.add((path, route.method.lower()))
    described = {(p, m) for p, ops in document["paths"].items() for m in ops}
    assert routes == described
    assert "/tuf/targets/{path}" in document["paths"]
    for path in (
        "/v1/device/checkin",
        "/v1/device/update",
        "/v1/recover/challenge",
        "/v1/recover",
        "/v1/admin/rollouts",
        "/v1/admin/tokens",
        "/v1/admin/factories",
        "/v1/admin/devices/{device_id}/revoke",
    ):
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        name = ref["schema"]["$ref"].rsplit("/", 1)[-1]
        assert name in document["components"]["schemas"]
    (target,) = (server.data / "repository" / "targets").glob("*.pins.json")
    assert server.request("GET", f"/tuf/targets/{target.name}").status == 200


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_certificate_from_a_device_ca_rotated_by_another_process_is_taken_at_once(
    server: RunningServer,
    tmp_path: Path,
    clock,
    db_url: str,  # type: ignore[no-untyped-def]
) -> None:
    """Another worker issues from the new device CA long before this one's reload watch fires."""
    slow = RunningServer(server.data, db_url, clock, reload_interval=3600).start()
    try:
        ceremonies.rotate_issuing_ca(server.data, "device", datetime.now(UTC))
        key = ec.generate_private_key(ec.SECP256R1())
        chain = ceremonies.issue_certificate(
            server.data, est_csr(key, "dev-new-ca"), "device", datetime.now(UTC)
        )
        newer = save_device(tmp_path, "dev-new-ca", key, chain[0])
        response = slow.request("POST", "/v1/device/checkin", CHECKIN, device=newer)
    finally:
        slow.stop()
    # The chain is accepted at once; the device is then judged on its standing
    # (issued outside this server's database, so unknown here).
    assert response.status == 401, response.body
    assert response.json()["error"] == "certificate_unknown"
    assert response.json()["message"].startswith("certificate is not known to this server")
