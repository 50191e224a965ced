"""Device check-in over mutual TLS, revocation without restart, and key-proof recovery."""

from __future__ import annotations

import base64
import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from homing import ceremonies
from homing.operations import fleet as operations
from homing.pki.proof import sign_recovery_proof
from homing.store.schema import certificates, checkins, devices
from tests.harness import (
    Clock,
    DeviceCredentials,
    RunningServer,
    est_csr,
    recover_with_key,
    save_device,
    wait_until,
)

CHECKIN = {
    "firmware_version": "1.0.0",
    "trust": {"root": 1, "timestamp": 1, "targets": 1},
    "health": {"uptime": 5},
}


def _checkin_count(server: RunningServer) -> int:
    with server.state.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(checkins)).scalar_one()


# Check-in batches the server wrote on a thread.
_THREAD_BATCHES = 'homing_checkin_batches_total{path="thread"}'


@pytest.fixture
def device(server: RunningServer, factory: tuple[str, str], tmp_path: Path) -> DeviceCredentials:
    return server.enroll("dev-1", factory, tmp_path)


def test_checkin_is_recorded_and_answered(server: RunningServer, device: DeviceCredentials) -> None:
    response = server.request("POST", "/v1/device/checkin", CHECKIN, device=device)
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["device_id"] == "dev-1"
    assert answer["refresh_metadata"] is False
    assert answer["update"] is None
    assert _checkin_count(server) == 1
    with server.state.db.engine.connect() as conn:
        row = conn.execute(select(devices)).one()
    assert row.firmware_version == "1.0.0"
    assert row.last_seen is not None


def test_checkin_says_when_metadata_is_newer(
    server: RunningServer, device: DeviceCredentials
) -> None:
    ceremonies.rotate_root(server.data, datetime.now(UTC))
    answer = server.request("POST", "/v1/device/checkin", CHECKIN, device=device).json()
    assert answer["refresh_metadata"] is True
    assert answer["metadata"]["root"] == 2


def test_no_client_certificate_is_refused(server: RunningServer) -> None:
    response = server.request("POST", "/v1/device/checkin", CHECKIN)
    assert response.status == 401
    assert response.json()["error"] == "client_certificate_required"
    assert _checkin_count(server) == 0


def test_client_certificate_from_another_ca_is_refused(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: a device identity minted by someone else's CA, same device id."""
    other = tmp_path / "other"
    ceremonies.init(other, datetime.now(UTC))
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ceremonies.issue_certificate(other, est_csr(key, "dev-1"), "device", datetime.now(UTC))
    forged = save_device(tmp_path, "dev-1", key, chain[0])
    with caplog.at_level(logging.WARNING, logger="homing.server.auth"):
        response = server.request("POST", "/v1/device/checkin", CHECKIN, device=forged)
    # Refused with a reason the client can read, and a line the operator can find.
    assert response.status == 401
    assert response.json()["error"] == "bad_client_certificate"
    assert "refused a client certificate" in caplog.text
    assert _checkin_count(server) == 0


def test_certificate_of_an_unenrolled_device_is_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    """A certificate from the right CA that the server never enrolled (offline issuance)."""
    key = ec.generate_private_key(ec.SECP256R1())
    chain = ceremonies.issue_certificate(
        server.data, est_csr(key, "ghost"), "device", datetime.now(UTC)
    )
    ghost = save_device(tmp_path, "ghost", key, chain[0])
    response = server.request("POST", "/v1/device/checkin", CHECKIN, device=ghost)
    assert response.status == 401
    assert response.json()["error"] == "certificate_unknown"
    assert response.json()["message"].startswith("certificate is not known to this server")
    # Sent to key-proof recovery, it is refused there (as a spent nonce would be:
    # the server does not tell who is enrolled).
    status, answer = recover_with_key(server, "ghost", key)
    assert status == 403
    assert answer["error"] == "recovery_refused"


def test_revocation_takes_effect_on_the_next_request(
    server: RunningServer, device: DeviceCredentials
) -> None:
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200
    operations.revoke_device(
        server.state.dd, server.state.db, "test", datetime.now(UTC), "dev-1", "stolen"
    )
    response = server.request("POST", "/v1/device/checkin", CHECKIN, device=device)
    assert response.status == 403
    assert response.json()["error"] == "revoked"
    assert _checkin_count(server) == 1


def test_expired_certificate_is_pointed_to_recovery(
    server: RunningServer, device: DeviceCredentials
) -> None:
    server.clock.advance(timedelta(days=366))
    response = server.request("POST", "/v1/device/checkin", CHECKIN, device=device)
    assert response.status == 401
    assert response.json()["error"] == "certificate_expired"
    assert "/v1/recover" in response.json()["message"]
    assert _checkin_count(server) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"trust": {"root": -1}}', "application/json", 400),
        (b'{"trust": {"root": true}}', "application/json", 400),
        (b'{"firmware_version": ""}', "application/json", 400),
        (b'{"health": "fine"}', "application/json", 400),
        (b"{}", "text/plain", 415),
        (b'{"x": "' + b"a" * 70000 + b'"}', "application/json", 413),
    ],
)
def test_malformed_checkins_change_nothing(
    server: RunningServer, device: DeviceCredentials, body: bytes, content_type: str, status: int
) -> None:
    response = server.request(
        "POST", "/v1/device/checkin", body, headers={"Content-Type": content_type}, device=device
    )
    assert response.status == status, response.body
    assert set(response.json()) == {"error", "message"}
    assert _checkin_count(server) == 0


def _recover(
    server: RunningServer,
    device_id: str,
    key: ec.EllipticCurvePrivateKey,
    csr_key: ec.EllipticCurvePrivateKey | None = None,
    nonce: str | None = None,
):  # type: ignore[no-untyped-def]
    if nonce is None:
        challenge = server.request("POST", "/v1/recover/challenge", {"device_id": device_id})
        assert challenge.status == 200, challenge.body
        nonce = challenge.json()["nonce"]
    csr = est_csr(csr_key or key, device_id)
    proof = sign_recovery_proof(key, nonce, csr)
    return nonce, server.request(
        "POST",
        "/v1/recover",
        {
            "device_id": device_id,
            "nonce": nonce,
            "csr": base64.b64encode(csr).decode(),
            "signature": base64.b64encode(proof).decode(),
        },
    )


def test_expired_device_recovers_by_key_proof(
    server: RunningServer, device: DeviceCredentials, tmp_path: Path
) -> None:
    server.clock.advance(timedelta(days=400))
    _, response = _recover(server, "dev-1", device.key)
    assert response.status == 200, response.body
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    assert cert.public_key() == device.key.public_key()
    renewed = save_device(tmp_path, "dev-1", device.key, cert)
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=renewed).status == 200


def test_recovery_with_another_key_is_refused(
    server: RunningServer, device: DeviceCredentials
) -> None:
    """Attack: someone who knows the device id but not its key asks for a certificate."""
    thief = ec.generate_private_key(ec.SECP256R1())
    _, response = _recover(server, "dev-1", thief)
    assert response.status == 403
    assert response.json()["error"] == "recovery_refused"
    with server.state.db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(certificates)).scalar_one() == 1


def test_recovery_must_keep_the_registered_key(
    server: RunningServer, device: DeviceCredentials
) -> None:
    _, response = _recover(
        server, "dev-1", device.key, csr_key=ec.generate_private_key(ec.SECP256R1())
    )
    assert response.status == 400
    assert "registered key" in response.json()["message"]


def test_recovery_nonce_is_single_use(server: RunningServer, device: DeviceCredentials) -> None:
    """Attack: replay a captured recovery exchange."""
    nonce, first = _recover(server, "dev-1", device.key)
    assert first.status == 200
    _, replay = _recover(server, "dev-1", device.key, nonce=nonce)
    assert replay.status == 403
    assert replay.json()["error"] == "recovery_refused"


def test_recovery_nonce_expires(server: RunningServer, device: DeviceCredentials) -> None:
    challenge = server.request("POST", "/v1/recover/challenge", {"device_id": "dev-1"}).json()
    server.clock.advance(timedelta(minutes=6))
    _, response = _recover(server, "dev-1", device.key, nonce=challenge["nonce"])
    assert response.status == 403


def test_revoked_device_never_recovers(server: RunningServer, device: DeviceCredentials) -> None:
    operations.revoke_device(
        server.state.dd, server.state.db, "test", datetime.now(UTC), "dev-1", "stolen"
    )
    # Told so once it proved its key, not before.
    status, answer = recover_with_key(server, "dev-1", device.key)
    assert status == 403
    assert answer["error"] == "revoked"


def test_an_unknown_device_gets_a_nonce_that_recovers_nothing(server: RunningServer) -> None:
    response = server.request("POST", "/v1/recover/challenge", {"device_id": "nobody"})
    assert response.status == 200
    status, answer = recover_with_key(server, "nobody", ec.generate_private_key(ec.SECP256R1()))
    assert status == 403
    assert answer["error"] == "recovery_refused"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_max_offline_policy(
    tmp_path: Path,
    db_url: str,
    clock,
    factory_free_server_data: Path,  # type: ignore[no-untyped-def]
) -> None:
    server = RunningServer(
        factory_free_server_data, db_url, clock, max_offline=timedelta(days=30)
    ).start()
    try:
        secret = operations.add_factory(server.state.db, "t", datetime.now(UTC), "s")
        device = server.enroll("dev-1", ("s", secret), tmp_path)
        clock.advance(timedelta(days=31))
        status, answer = recover_with_key(server, "dev-1", device.key)
        assert status == 403
        assert answer["error"] == "offline_too_long"
    finally:
        server.stop()


@pytest.fixture
def factory_free_server_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "policy-data"
    ceremonies.init(data, datetime.now(UTC))
    return data


def test_checkins_wait_for_a_busy_sqlite_database_without_stalling_the_server(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds SQLite's write lock: the check-in waits on a thread and is kept.

    Meanwhile the event loop keeps answering other requests, and the batch
    is counted as written on a thread (it is written on the loop only when
    the database is free).
    """
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "server-data"
    ceremonies.init(data, datetime.now(UTC))
    database = tmp_path / "busy.db"
    server = RunningServer(data, f"sqlite:///{database}", clock).start()
    try:
        secret = operations.add_factory(server.state.db, "test", datetime.now(UTC), "station-1")
        device = server.enroll("dev-busy", ("station-1", secret), tmp_path)
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # what another writer would hold
        answers: list[int] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status
            )
        )
        sender.start()
        # The batch gave up on the loop and waits on a thread for the database.
        wait_until(
            "the batch on a thread", lambda: server.metric(_THREAD_BATCHES, missing=0.0) == 1.0
        )
        assert answers == [], "the check-in was answered before it could be recorded"
        # Answered while the database is still held: a blocked loop would not answer
        # before the holder lets go, which happens only after this answer.
        assert server.request("GET", "/openapi.json").status == 200
        assert answers == []
        holder.execute("COMMIT")
        holder.close()
        sender.join(120)
        assert answers == [200]
        assert _checkin_count(server) == 1
        # With the database free again, the next batch is written on the loop.
        assert server.request("POST", "/v1/device/checkin", CHECKIN, device=device).status == 200
        assert _checkin_count(server) == 2
        metrics = server.request("GET", "/metrics").body.decode()
        assert 'homing_checkin_batches_total{path="thread"} 1.0' in metrics
        assert 'homing_checkin_batches_total{path="inline"} 1.0' in metrics
    finally:
        server.stop()
