"""Admin API roles and audit, trusted proxies, metadata serving, hot renewal, maintenance."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509

from homing import ceremonies
from homing.operations import fleet as operations
from homing.server.maintenance import maintain
from tests.harness import DeviceCredentials, RunningServer

CHECKIN = {"firmware_version": "2.0.0", "trust": {"root": 1, "timestamp": 1, "targets": 1}}


def _token(server: RunningServer, role: str, name: str | None = None) -> dict[str, str]:
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), name or role, role)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def device(server: RunningServer, factory: tuple[str, str], tmp_path: Path) -> DeviceCredentials:
    return server.enroll("dev-1", factory, tmp_path)


def test_admin_needs_a_valid_token(server: RunningServer) -> None:
    response = server.request("GET", "/v1/admin/devices")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    bad = server.request("GET", "/v1/admin/devices", headers={"Authorization": "Bearer hom_nope"})
    assert bad.status == 401


def test_read_only_role_reads_but_cannot_revoke(
    server: RunningServer, device: DeviceCredentials
) -> None:
    reader = _token(server, "read-only")
    listing = server.request("GET", "/v1/admin/devices?search=dev", headers=reader)
    assert listing.status == 200
    assert [d["device_id"] for d in listing.json()["devices"]] == ["dev-1"]
    refused = server.request(
        "POST", "/v1/admin/devices/dev-1/revoke", {"reason": "x"}, headers=reader
    )
    assert refused.status == 403
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200


def test_operator_revokes_and_everything_is_audited(
    server: RunningServer, device: DeviceCredentials
) -> None:
    operator = _token(server, "operator", "alice")
    response = server.request(
        "POST", "/v1/admin/devices/dev-1/revoke", {"reason": "stolen"}, headers=operator
    )
    assert response.status == 200, response.body
    assert response.json()["revoked_certificates"] == 1
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 403
    detail = server.request("GET", "/v1/admin/devices/dev-1", headers=operator).json()
    assert detail["status"] == "revoked"
    assert detail["certificates"][0]["revoked_at"] is not None
    entries = server.request("GET", "/v1/admin/audit", headers=operator).json()["entries"]
    actions = [(e["actor"], e["action"]) for e in entries]
    assert ("token:alice", "revoke_device") in actions
    assert ("token:alice", "show_device") in actions
    # The CRL was re-signed with the revocation.
    crl = x509.load_pem_x509_crl((server.data / "pki" / "device-ca.crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(device.certificate.serial_number)


def test_unknown_device_is_404(server: RunningServer) -> None:
    reader = _token(server, "read-only")
    assert server.request("GET", "/v1/admin/devices/nobody", headers=reader).status == 404
    operator = _token(server, "operator")
    assert (
        server.request("POST", "/v1/admin/devices/nobody/revoke", {}, headers=operator).status
        == 404
    )


def test_status_summarises_the_fleet(server: RunningServer, device: DeviceCredentials) -> None:
    server.request("POST", "/v1/device/checkin", CHECKIN, device=device)
    status = server.request("GET", "/v1/admin/status", headers=_token(server, "read-only")).json()
    assert status["devices_by_status"] == {"active": 1}
    assert status["devices_by_firmware"] == {"2.0.0": 1}
    assert status["devices_by_root_version"] == {"1": 1}
    assert status["metadata_versions"]["root"] == 1
    assert status["warnings"] == []


def test_status_warns_before_offline_roles_expire(server: RunningServer) -> None:
    later = datetime.now(UTC) + timedelta(days=2 * 365 - 30)
    summary = operations.fleet_status(server.state.dd, server.state.db, "test", later)
    assert any(w.startswith("targets metadata expires") for w in summary["warnings"])
    assert any("timestamp metadata EXPIRED" in w for w in summary["warnings"])


def test_factory_creation_over_the_api(server: RunningServer) -> None:
    operator = _token(server, "operator")
    created = server.request("POST", "/v1/admin/factories", {"name": "line-2"}, headers=operator)
    assert created.status == 201
    assert len(created.json()["secret"]) > 30
    again = server.request("POST", "/v1/admin/factories", {"name": "line-2"}, headers=operator)
    assert again.status == 409
    bad = server.request("POST", "/v1/admin/factories", {"name": "../x"}, headers=operator)
    assert bad.status == 400


def test_client_certificate_header_from_an_untrusted_peer_is_ignored(
    server: RunningServer, device: DeviceCredentials
) -> None:
    """Attack: send someone's certificate in the proxy header without being the proxy."""
    header = {"X-Client-Cert": quote(device.cert_pem.decode())}
    response = server.request("POST", "/v1/device/checkin", CHECKIN, headers=header)
    assert response.status == 401
    assert response.json()["error"] == "client_certificate_required"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_trusted_proxy_passes_the_client_certificate(
    server: RunningServer,
    device: DeviceCredentials,
    clock,
    db_url: str,  # type: ignore[no-untyped-def]
) -> None:
    proxied = RunningServer(server.data, db_url, clock, trusted_proxies=("127.0.0.1/32",)).start()
    try:
        header = {"X-Client-Cert": quote(device.cert_pem.decode())}
        response = proxied.request("POST", "/v1/device/checkin", CHECKIN, headers=header)
        assert response.status == 200, response.body
        assert response.json()["device_id"] == "dev-1"
        garbage = proxied.request(
            "POST", "/v1/device/checkin", CHECKIN, headers={"X-Client-Cert": "garbage"}
        )
        assert garbage.status == 401
    finally:
        proxied.stop()


def test_metadata_is_served_with_cache_headers(server: RunningServer) -> None:
    root = server.request("GET", "/tuf/metadata/1.root.json")
    assert root.status == 200
    assert root.body == (server.data / "repository" / "metadata" / "1.root.json").read_bytes()
    assert "immutable" in root.headers["cache-control"]
    timestamp = server.request("GET", "/tuf/metadata/timestamp.json")
    assert "must-revalidate" in timestamp.headers["cache-control"]
    (target,) = (server.data / "repository" / "targets").glob("*.pins.json")
    assert server.request("GET", f"/tuf/targets/{target.name}").body == target.read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/tuf/metadata/..%2Fhoming.json",
        "/tuf/metadata/../homing.json",
        "/tuf/targets/../keys/targets.key.pem",
        "/tuf/targets/..%2F..%2Fkeys%2Froot-ca.key.pem",
        "/tuf/metadata/root.json.bak",
        "/tuf/targets/%2Fetc%2Fpasswd",
    ],
)
def test_path_traversal_is_refused(server: RunningServer, path: str) -> None:
    response = server.request("GET", path)
    assert response.status == 404
    assert b"PRIVATE KEY" not in response.body


def test_openapi_metrics_and_health(server: RunningServer) -> None:
    document = server.request("GET", "/openapi.json").json()
    assert "/v1/device/checkin" in document["paths"]
    assert server.request("GET", "/healthz").json()["status"] == "ok"
    metrics = server.request("GET", "/metrics").body.decode()
    assert 'homing_http_requests_total{route="/healthz",status="200"}' in metrics


def _served_serial(server: RunningServer) -> int:
    # Only the serial is read: the renewed certificate is dated in the test's future.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_certificate_renews_without_restart(server: RunningServer) -> None:
    before = _served_serial(server)
    done = maintain(server.state.dd, datetime.now(UTC) + timedelta(days=21))
    assert any(item.startswith("server certificate") for item in done)
    new_serial = int(done[-2 if done[-1] == "device CRL" else -1].split()[-1], 16)
    server.settle()
    assert _served_serial(server) == new_serial
    assert new_serial != before


def test_maintenance_re_signs_the_timestamp_before_it_expires(server: RunningServer) -> None:
    assert not [
        d for d in maintain(server.state.dd, datetime.now(UTC)) if d.startswith("timestamp")
    ]
    done = maintain(server.state.dd, datetime.now(UTC) + timedelta(hours=13))
    assert [d for d in done if d.startswith("timestamp")] == ["timestamp v2"]
    assert server.request("GET", "/healthz").json()["metadata"]["timestamp"] == 2


def test_device_ca_rotation_keeps_old_devices_and_enrolls_new_ones(
    server: RunningServer, device: DeviceCredentials, factory: tuple[str, str], tmp_path: Path
) -> None:
    ceremonies.rotate_issuing_ca(server.data, "device", datetime.now(UTC))
    server.settle()
    assert len(server.state.device_cas) == 2
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200
    newer = server.enroll("dev-2", factory, tmp_path)
    assert newer.certificate.issuer != device.certificate.issuer
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=newer).status == 200


def test_maintenance_prunes_old_check_ins_and_keeps_the_device_state(
    server: RunningServer, device: DeviceCredentials
) -> None:
    from homing.store import device_contacts as contacts
    from homing.store import devices as device_store

    now = datetime.now(UTC)
    with server.state.db.begin() as conn:
        contacts.record_checkins(
            conn,
            [
                contacts.CheckIn("dev-1", now - timedelta(days=200), "0.9", 1, 1, 1, None),
                contacts.CheckIn("dev-1", now - timedelta(days=100), "1.0", 1, 1, 1, None),
                contacts.CheckIn("dev-1", now - timedelta(days=10), "2.0", 1, 1, 1, None),
            ],
        )
    done = maintain(server.state.dd, now, checkin_retention=timedelta(days=90))
    assert "2 check-ins older than 90 days pruned" in done
    with server.state.db.engine.connect() as conn:
        assert contacts.count_checkins(conn, "dev-1") == 1
        row = device_store.device(conn, "dev-1")
    assert row is not None
    assert row.firmware_version == "2.0"
    # Without a retention nothing is pruned.
    assert not any("pruned" in item for item in maintain(server.state.dd, now))
