"""Key stores, the data directory, and ceremonies that must fail safely."""

from __future__ import annotations

import json
import logging
import stat
from datetime import datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.errors import CeremonyError, ConfigError, HomingError, KeyStoreError
from homing.pki import FileKeyStore, FileLedger, generate_signing_key, generate_tls_key
from homing.pki.ledger import IssuedRecord
from homing.site import DataDir

PASS = "correct horse battery staple"


def test_encrypted_store_round_trip(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, PASS.encode())
    key = generate_tls_key()
    store.store("ca", key)
    text = store.path("ca").read_bytes()
    assert b"ENCRYPTED" in text
    assert stat.S_IMODE(store.path("ca").stat().st_mode) == 0o600
    assert store.load("ca").private_numbers() == key.private_numbers()  # type: ignore[union-attr]


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    FileKeyStore(tmp_path, PASS.encode()).store("k", generate_signing_key())
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        FileKeyStore(tmp_path, b"nope").load("k")
    with pytest.raises(KeyStoreError, match="encrypted: set HOMING_KEY_PASSPHRASE"):
        FileKeyStore(tmp_path, None, unsafe_plaintext=True).load("k")
    with pytest.raises(KeyStoreError, match="passphrase is required"):
        FileKeyStore(tmp_path, None)


def test_plaintext_store_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="homing.pki.keystore")
    store = FileKeyStore(tmp_path, None, unsafe_plaintext=True)
    assert store.unsafe_plaintext
    assert "UNENCRYPTED" in caplog.text


@pytest.mark.parametrize("name", ["../x", ".", "/", "ö", "a/b", "", ".hidden"])
def test_key_names_cannot_escape_the_store(tmp_path: Path, name: str) -> None:
    store = FileKeyStore(tmp_path / "keys", PASS.encode())
    with pytest.raises(ConfigError, match="invalid key name"):
        store.store(name, generate_tls_key())
    assert not (tmp_path / "x.key.pem").exists()


def test_missing_or_damaged_key_is_a_keystore_error(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, PASS.encode())
    with pytest.raises(KeyStoreError, match="cannot read key"):
        store.load("absent")
    store.path("bad").write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyStoreError, match="not a PEM private key"):
        store.load("bad")


def test_ceremony_init_keeps_root_keys_off_the_data_directory(
    tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    media = [tmp_path / f"usb{i}" / "root.key" for i in range(3)]
    summary = ceremonies.init(
        tmp_path / "data", now, ceremony_root_keys=media, passphrase=PASS.encode()
    )
    site = DataDir(tmp_path / "data", passphrase=PASS.encode())
    assert summary.mode == "ceremony"
    assert summary.root_threshold == 2
    assert summary.encrypted
    assert not list((tmp_path / "data" / "keys").glob("tuf-root*"))
    for path in media:
        assert b"ENCRYPTED" in path.read_bytes()
    for key_file in (tmp_path / "data" / "keys").iterdir():
        assert b"ENCRYPTED" in key_file.read_bytes()
    new_media = [tmp_path / f"new{i}" / "root.key" for i in range(3)]
    assert ceremonies.rotate_root(site, now, sign_with=media[1:], new_keys=new_media) == 2
    # The old keys no longer count: a rotation signed with them is refused.
    with pytest.raises(CeremonyError, match="not signed by enough valid keys"):
        ceremonies.rotate_root(site, now, sign_with=media[:2])
    assert ceremonies.rotate_root(site, now, sign_with=new_media[:2]) == 3


def test_ceremony_mode_requires_a_passphrase(
    tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with pytest.raises(CeremonyError, match="set HOMING_KEY_PASSPHRASE"):
        ceremonies.init(tmp_path / "data", now, ceremony_root_keys=[tmp_path / "k"])
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": []}, "at least one server host"),
        ({"hosts": ["bad host"]}, "invalid host name"),
        ({"primary": "http://plain.example"}, "must be an https:// URL"),
        ({"threshold": 2}, "threshold 2 must be between 1 and the 1 root keys"),
    ],
)
def test_bad_init_arguments_leave_nothing_behind(
    tmp_path: Path, now: datetime, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(HomingError, match=message):
        ceremonies.init(tmp_path / "data", now, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "data").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.init-")]


def test_init_refuses_a_non_empty_directory(data_dir: Path, now: datetime) -> None:
    before = (data_dir / "homing.json").read_bytes()
    with pytest.raises(CeremonyError, match="not empty"):
        ceremonies.init(data_dir, now)
    assert (data_dir / "homing.json").read_bytes() == before


def test_missing_or_damaged_settings_are_clear(
    tmp_path: Path, data_dir: Path, now: datetime
) -> None:
    with pytest.raises(ConfigError, match="run 'homing init"):
        DataDir(tmp_path / "nothing").settings()
    (data_dir / "homing.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a homing settings file"):
        ceremonies.refresh_timestamp(data_dir, now)


def test_server_ca_rotation_keeps_stale_devices_pinned(data_dir: Path, now: datetime) -> None:
    """A device holding pins from before the rotation still pins the new server chain."""
    from homing.errors import PinError
    from homing.pki import verify_pins, verify_server_chain

    dd = DataDir(data_dir)
    settings = dd.settings()
    stale = ceremonies.pin_policy(dd, settings, dd.keystore(settings))
    assert ceremonies.rotate_issuing_ca(data_dir, "server", now) == 2
    leaf, ca = dd.certificates("server-chain.pem")
    chain = verify_server_chain(leaf, [ca], stale.root_cas, "localhost", now)
    verify_pins(chain, stale.spki_pins)
    # Two rotations on, the stale pins no longer match: that is what the
    # trust metadata refresh is for (see the trust tests).
    ceremonies.rotate_issuing_ca(data_dir, "server", now)
    leaf, ca = dd.certificates("server-chain.pem")
    chain = verify_server_chain(leaf, [ca], stale.root_cas, "localhost", now)
    with pytest.raises(PinError, match="pinned"):
        verify_pins(chain, stale.spki_pins)


def test_device_ca_rotation_keeps_old_ca_trusted(data_dir: Path, now: datetime) -> None:
    dd = DataDir(data_dir)
    first = dd.certificate("device-ca.pem")
    ceremonies.rotate_issuing_ca(data_dir, "device", now)
    trusted = dd.certificates("device-cas.pem")
    assert first in trusted
    assert dd.certificate("device-ca.pem") in trusted
    with pytest.raises(CeremonyError, match="unknown issuing CA"):
        ceremonies.rotate_issuing_ca(data_dir, "printer", now)


def test_server_cert_rotation_issues_a_new_key(data_dir: Path, now: datetime) -> None:
    dd = DataDir(data_dir)
    old_leaf = dd.certificates("server-chain.pem")[0]
    new_leaf = ceremonies.rotate_server_cert(data_dir, now)
    assert new_leaf.public_key() != old_leaf.public_key()
    assert dd.certificates("server-chain.pem")[0] == new_leaf


def test_timestamp_refresh_takes_a_custom_expiry(data_dir: Path, now: datetime) -> None:
    from datetime import timedelta

    version = ceremonies.refresh_timestamp(data_dir, now, timedelta(hours=6))
    doc = json.loads((data_dir / "repository" / "metadata" / "timestamp.json").read_bytes())
    assert doc["signed"]["version"] == version == 2
    assert doc["signed"]["expires"] == "2026-11-28T18:00:00Z"
    with pytest.raises(CeremonyError, match="positive"):
        ceremonies.refresh_timestamp(data_dir, now, timedelta(0))


def test_ledger_survives_a_torn_last_line(tmp_path: Path, now: datetime) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = FileLedger(path)
    ledger.record(IssuedRecord(1, "device", "a", "pin", now))
    with path.open("ab") as f:
        f.write(b'{"serial":"2","kind":"dev')  # power cut mid-write
    reloaded = FileLedger(path)
    assert reloaded.contains(1)
    assert not reloaded.contains(2)
    reloaded.record(IssuedRecord(3, "device", "b", "pin", now))
    assert FileLedger(path).contains(3)


def test_ledger_with_a_damaged_middle_line_is_refused(tmp_path: Path, now: datetime) -> None:
    path = tmp_path / "ledger.jsonl"
    FileLedger(path).record(IssuedRecord(1, "device", "a", "pin", now))
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(ConfigError, match="damaged"):
        FileLedger(path)
