"""A stolen device-CA key: distrust it, and every genuine device recovers by key proof.

Real server, real TLS, real agent. The thief holds the old device CA's key
and mints a certificate for a real device id with a key of its own; the
operator runs ``homing rotate device-ca --compromised`` through the entry
point. From the next request on, the genuine device's old certificate and
the thief's are both answered ``certificate_distrusted`` (even one the
server had verified and cached a moment before); the thief cannot pass key
proof; the genuine agent recovers and reaches home on a certificate of the
new CA.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.decide import CertificateAction
from homing.agent.state import DeviceState
from homing.errors import CeremonyError
from homing.fleet.home import SimulatedHome
from homing.fleet.strategy_base import Situation
from homing.operations import fleet as operations
from homing.pki.authority import Authority
from homing.pki.ledger import MemoryLedger
from homing.pki.profiles import approve_csr, device_profile
from homing.site import DataDir
from homing.store import audit
from tests.fleet import check_in, device, url
from tests.harness import (
    DeviceCredentials,
    RunningServer,
    assert_one_error,
    est_csr,
    recover_with_key,
    run_homing,
    save_device,
)

CHECKIN = {"firmware_version": "1.0.0"}


def _stolen_ca(server: RunningServer) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """What the thief took: the active device CA's certificate and key."""
    dd = DataDir(server.data)
    settings = dd.settings()
    key = dd.keystore(settings).load(f"device-ca-g{settings.device_ca_generation}")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return dd.certificate("device-ca.pem"), key


def _forge(
    server: RunningServer, device_id: str, tmp: Path
) -> tuple[DeviceCredentials, ec.EllipticCurvePrivateKey]:
    ca, ca_key = _stolen_ca(server)
    key = ec.generate_private_key(ec.SECP256R1())
    approved = approve_csr(est_csr(key, device_id), device_profile(), device_id=device_id)
    cert = Authority(ca, ca_key, MemoryLedger()).issue(approved, datetime.now(UTC))
    return save_device(tmp / "thief", device_id, key, cert), key


def _as_credentials(state: DeviceState) -> DeviceCredentials:
    """The device's own key and certificate, as a plain TLS client presents them."""
    copy = save_device(state.root.parent, "copy", state.key(), _certificate(state))
    return DeviceCredentials(
        state.config().device_id, copy.key, copy.cert_pem, copy.key_file, copy.cert_file
    )


def _certificate(state: DeviceState) -> x509.Certificate:
    cert = state.certificate()
    assert cert is not None
    return cert


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_stolen_device_ca_is_distrusted_and_devices_recover_by_key_proof(
    server: RunningServer, tmp_path: Path
) -> None:
    genuine = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, genuine)
    old_issuer = _certificate(genuine).issuer
    credentials = _as_credentials(genuine)
    # Verified (and cached by the server) before the theft is known.
    assert server.request("POST", "/v1/device/checkin", CHECKIN, device=credentials).status == 200
    # Revoked before the theft was known: the compromise must not bring it back.
    stolen_device = device(server, tmp_path, "dev-2", "board-a")
    operations.revoke_device(
        server.state.dd, server.state.db, "t", datetime.now(UTC), "dev-2", "stolen"
    )
    forged, thief_key = _forge(server, "dev-1", tmp_path)
    # Even before the ceremony the database refuses a certificate it never issued,
    # and sends it to key-proof recovery, which the thief cannot pass.
    before = server.request("POST", "/v1/device/checkin", CHECKIN, device=forged)
    assert (before.status, before.json()["error"]) == (401, "certificate_unknown")
    assert recover_with_key(server, "dev-1", thief_key)[0] == 403

    result = run_homing(
        "rotate",
        "device-ca",
        "--compromised",
        "--data",
        str(server.data),
        env={"HOMING_DB": server.state.db.url},
    )
    assert result.returncode == 0, result.stderr
    assert "old device CA is distrusted" in result.stdout
    server.settle()

    for presented in (credentials, forged):
        answer = server.request("POST", "/v1/device/checkin", CHECKIN, device=presented)
        assert (answer.status, answer.json()["error"]) == (401, "certificate_distrusted")
        assert "/v1/recover" in answer.json()["message"]
    # The fleet simulator's home answers the same situation by the same rules.
    simulated = SimulatedHome(365).presented(Situation(CertificateAction.KEEP, distrusted=True))
    assert simulated.refusals == (answer.json()["error"],)
    status, refusal = recover_with_key(server, "dev-1", thief_key)
    assert (status, refusal["error"]) == (403, "recovery_refused")
    # EST tells outside clients the CAs to trust now: not the stolen one.
    cacerts = server.request("GET", "/.well-known/est/cacerts")
    assert old_issuer not in [c.subject for c in _pkcs7(cacerts.body)]

    refused = Agent(stolen_device, server=url(server)).run_once()
    assert refused.revoked, refused
    assert not refused.recovered
    assert _certificate(stolen_device).issuer == old_issuer

    report = Agent(genuine, server=url(server)).run_once()
    assert report.checked_in, report
    assert report.recovered
    renewed = genuine.certificate()
    assert renewed is not None
    assert renewed.issuer != old_issuer
    assert renewed.public_key() == credentials.key.public_key()
    with server.state.db.engine.connect() as conn:
        entries = audit.audit_entries(conn, 20)
    assert any(
        e["action"] == "rotate_device_ca" and "distrusted" in json.dumps(e.get("detail"))
        for e in entries
    )


def _pkcs7(body: bytes) -> list[x509.Certificate]:
    from cryptography.hazmat.primitives.serialization import pkcs7

    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_plain_device_ca_rotation_distrusts_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    genuine = device(server, tmp_path, "dev-1", "board-a")
    ceremonies.rotate_issuing_ca(server.data, "device", datetime.now(UTC))
    server.settle()
    assert server.state.distrusted_device_cas == []
    report = Agent(genuine, server=url(server)).run_once()
    assert report.checked_in, report
    assert not report.recovered


def test_only_a_device_ca_is_distrusted_after_a_theft(tmp_path: Path) -> None:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    with pytest.raises(CeremonyError, match="only a device CA"):
        ceremonies.rotate_issuing_ca(data, "server", datetime.now(UTC), compromised=True)
    result = run_homing("rotate", "device-ca", "--compromised", "--data", str(tmp_path / "none"))
    assert_one_error(result, "no homing data directory")
