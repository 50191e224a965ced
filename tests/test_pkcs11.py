"""Keys on a PKCS#11 token, for real: SoftHSM2, started by the test in its own directory.

Timestamp signing (securesystemslib's HSMSigner) and device issuance over
EST (cryptography's builders calling the token) with keys made on the token
that never leave it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tuf.api.metadata import Metadata, Root, Timestamp

from homing import ceremonies
from homing.ceremonies.keystores import configure_pkcs11
from homing.errors import CeremonyError, KeyStoreError
from homing.operations import fleet as operations
from homing.pki.pkcs11_store import LayeredKeyStore, TokenKey
from homing.site import DataDir
from homing.trust.signing import signer_for
from tests.harness import Clock, RunningServer, certs_from_pkcs7, est_csr, run_homing
from tests.softhsm import PIN, Token, make_token

LABEL = "homing-test"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    return make_token(tmp_path, LABEL, monkeypatch)


def _site(tmp_path: Path, token: Token) -> DataDir:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    dd = DataDir(data, pkcs11_pin=PIN)
    configure_pkcs11(
        dd, datetime.now(UTC), module=token.module, token=token.label,
        patterns=["timestamp-*", "snapshot-*", "device-ca-*"],
    )  # fmt: skip
    return dd


def test_timestamp_is_signed_on_the_token(tmp_path: Path, token: Token) -> None:
    dd = _site(tmp_path, token)
    now = datetime.now(UTC)
    version = ceremonies.rotate_online_keys(dd, now)  # the new online keys are made on the token
    store = dd.keystore(dd.settings())
    assert isinstance(store, LayeredKeyStore)
    key = store.load("timestamp-2")
    assert isinstance(key, TokenKey)
    assert not (dd.keys_dir / "timestamp-2.key.pem").exists()
    with pytest.raises(KeyStoreError, match="cannot be exported"):
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip
    assert type(signer_for(key)).__name__ == "HSMSigner"
    ceremonies.refresh_timestamp(dd, now + timedelta(minutes=1))
    metadata = dd.repository_dir / "metadata"
    root = Metadata[Root].from_file(str(metadata / f"{version}.root.json"))
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json"))
    root.verify_delegate(Timestamp.type, timestamp)  # python-tuf, as a device does
    assert root.signed.get_key(root.signed.roles["timestamp"].keyids[0]).scheme == (
        "ecdsa-sha2-nistp256"
    )
    # The server's own maintenance keeps re-signing it on the token.
    from homing.server.maintenance import maintain

    later = now + timedelta(hours=20)
    assert any("timestamp" in d or "snapshot" in d for d in maintain(dd, later))
    fresh = Metadata[Timestamp].from_file(str(metadata / "timestamp.json"))
    assert fresh.signed.version > timestamp.signed.version
    root.verify_delegate(Timestamp.type, fresh)


def test_devices_are_issued_from_the_token_over_est(tmp_path: Path, token: Token) -> None:
    dd = _site(tmp_path, token)
    now = datetime.now(UTC)
    ceremonies.rotate_issuing_ca(dd, "device", now)  # g2 from files; its backup g3 on the token
    ceremonies.rotate_issuing_ca(dd, "device", now)  # g3, made on the token, is active
    store = dd.keystore(dd.settings())
    active = store.load("device-ca-g3")
    assert isinstance(active, TokenKey)
    assert dd.certificate("device-ca.pem").public_key() == active.public_key()
    server = RunningServer(dd.root, dd.default_db_url(), Clock(), pkcs11_pin=PIN).start()
    try:
        secret = operations.add_factory(server.state.db, "test", now, "line-1")
        from cryptography.hazmat.primitives.asymmetric import ec

        device_key = ec.generate_private_key(ec.SECP256R1())
        auth = base64.b64encode(f"line-1:{secret}".encode()).decode()
        answer = server.request(
            "POST",
            "/.well-known/est/simpleenroll",
            base64.b64encode(est_csr(device_key, "dev-hsm")),
            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {auth}"},
        )
        assert answer.status == 200, answer.body
        cert = certs_from_pkcs7(answer.body)[0]
        cert.verify_directly_issued_by(dd.certificate("device-ca.pem"))
    finally:
        server.stop()


def test_a_device_ca_key_that_left_trust_is_destroyed_on_the_token(
    tmp_path: Path, token: Token
) -> None:
    dd = _site(tmp_path, token)
    now = datetime.now(UTC)
    for _ in range(3):
        ceremonies.rotate_issuing_ca(dd, "device", now)  # g4 active, g5 its backup
    store = dd.keystore(dd.settings())
    assert isinstance(store, LayeredKeyStore)
    # Retired but still trusted (their devices' certificates live on): kept.
    assert store.token.exists("device-ca-g3")
    assert (dd.keys_dir / "device-ca-g1.key.pem").exists()
    # Past the life of every certificate they issued, the next rotation leaves them
    # out of trust: their keys are destroyed, on the token and in the files alike.
    ceremonies.rotate_issuing_ca(dd, "device", now + timedelta(days=400))
    assert not store.token.exists("device-ca-g3")
    assert not (dd.keys_dir / "device-ca-g1.key.pem").exists()
    assert not (dd.keys_dir / "device-ca-g2.key.pem").exists()
    assert [g for g in range(1, 10) if store.exists(f"device-ca-g{g}")] == [4, 5, 6]
    assert isinstance(store.load("device-ca-g5"), TokenKey)


def test_configuring_the_token_refuses_bad_input(tmp_path: Path, token: Token) -> None:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    dd = DataDir(data, pkcs11_pin=PIN)
    now = datetime.now(UTC)
    for kwargs, words in (
        ({"patterns": ["server-*"]}, "cannot live on the token"),
        ({"patterns": []}, "at least one key pattern"),
        ({"module": tmp_path / "nope.so"}, "no PKCS#11 module"),
        ({"token": "no-such-token"}, "cannot open PKCS#11 token"),
    ):
        args = {"module": token.module, "token": token.label, "patterns": ["timestamp-*"], **kwargs}
        with pytest.raises((CeremonyError, KeyStoreError), match=words):
            configure_pkcs11(dd, now, **args)  # type: ignore[arg-type]
    with pytest.raises(KeyStoreError, match="cannot log in"):
        configure_pkcs11(
            DataDir(data, pkcs11_pin="000000"), now, module=token.module, token=token.label,
            patterns=["timestamp-*"],
        )  # fmt: skip
    assert DataDir(data).settings().pkcs11 is None


def test_keystore_pkcs11_through_the_cli(tmp_path: Path, token: Token) -> None:
    data = tmp_path / "site"
    assert run_homing("init", "--data", str(data)).returncode == 0
    args = ["keystore", "pkcs11", "--data", str(data), "--module", str(token.module),
            "--token", token.label, "--key", "timestamp-*"]  # fmt: skip
    wrong = run_homing(*args, env={**token.env, "HOMING_PKCS11_PIN": "999999"})
    assert wrong.returncode != 0
    assert "cannot log in" in wrong.stderr
    done = run_homing(*args, env=token.env)
    assert done.returncode == 0, done.stderr
    assert "made on token" in done.stdout
    rotated = run_homing("rotate", "online-keys", "--data", str(data), env=token.env)
    assert rotated.returncode == 0, rotated.stderr
    refreshed = run_homing("timestamp", "refresh", "--data", str(data), env=token.env)
    assert refreshed.returncode == 0, refreshed.stderr
