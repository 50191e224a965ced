"""Retired issuing-CA keys are destroyed only when nothing may use them, and never at the
cost of a rotation that has already taken effect."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.ceremonies.retired_keys import destroy_retired_keys
from homing.site import DataDir


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DataDir:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    ceremonies.init(tmp_path / "site", datetime.now(UTC))
    return DataDir(tmp_path / "site")


def test_the_active_and_backup_keys_are_never_touched_and_trusted_ones_stay(
    site: DataDir,
) -> None:
    now = datetime.now(UTC)
    for _ in range(3):
        ceremonies.rotate_issuing_ca(site, "device", now)  # g4 active, g5 backup
    settings = site.settings()
    store = site.keystore(settings)
    trusted = site.pki_path("device-cas.pem")
    # Every retired generation is still trusted: nothing goes.
    assert destroy_retired_keys(site, settings, store) == []
    # With only the active one trusted, the three retired keys go; 4 and 5 stay.
    trusted.write_bytes(site.pki_path("device-ca.pem").read_bytes())
    assert destroy_retired_keys(site, settings, store) == [
        "device-ca-g1",
        "device-ca-g2",
        "device-ca-g3",
    ]
    assert [g for g in range(1, 8) if store.exists(f"device-ca-g{g}")] == [4, 5]
    # Even with no device CA trusted at all, a call never reaches the active generation.
    trusted.write_bytes(site.pki_path("root-ca.pem").read_bytes())
    assert destroy_retired_keys(site, settings, store) == []
    assert store.exists("device-ca-g4")


def test_a_retired_key_that_cannot_be_read_is_left_and_the_rotation_stands(
    site: DataDir, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    damaged = site.keys_dir / "server-ca-g1.key.pem"
    damaged.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with caplog.at_level(logging.WARNING, "homing.ceremonies.retired_keys"):
        assert ceremonies.rotate_issuing_ca(site, "server", now) == 2
    assert site.settings().server_ca_generation == 2
    assert damaged.exists()
    assert any("retired key server-ca-g1 left" in r.getMessage() for r in caplog.records)
    # The next rotation finds it again, still unreadable, and still goes ahead.
    assert ceremonies.rotate_issuing_ca(site, "server", now) == 3
    assert not (site.keys_dir / "server-ca-g2.key.pem").exists()
