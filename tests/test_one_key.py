"""One key, one device: a public key registered to one device is refused for any other.

Attacks on the real server (SQLite and PostgreSQL): a factory station
enrolls a second id with a key already enrolled (a cloned key, or a leaked
secret replaying one), a device re-enrolls onto another device's key, and
the operator's own provisioning tries the same. Each is refused before
anything is issued, and the refusal is audited with the device that holds
the key. A database from before the rule, holding devices that share a
key, migrates: the earliest keeps the key, and no new device can take it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, text

from homing.errors import ConflictError
from homing.operations.provisioning import register_device
from homing.store import Database
from homing.store import devices as device_store
from homing.store.audit import audit_entries
from homing.store.db import MIGRATIONS
from homing.store.schema import certificates
from tests.harness import DeviceCredentials, RunningServer, est_csr


def _enroll(
    server: RunningServer, factory: tuple[str, str], key: ec.EllipticCurvePrivateKey, device_id: str
) -> tuple[int, dict[str, object] | bytes]:
    token = base64.b64encode(f"{factory[0]}:{factory[1]}".encode()).decode()
    answer = server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.b64encode(est_csr(key, device_id)),
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
    )
    return answer.status, (answer.json() if answer.status != 200 else answer.body)


def _certificates_of(server: RunningServer, device_id: str) -> int:
    with server.state.db.begin() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(certificates)
                .where(certificates.c.subject_id == device_id)
            ).scalar_one()
        )


def test_a_key_enrolled_once_is_refused_for_every_other_id(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert _enroll(server, factory, key, "dev-1")[0] == 200
    for clone in ("dev-2", "dev-3", "dev-4"):
        status, answer = _enroll(server, factory, key, clone)
        assert status == 409
        assert isinstance(answer, dict)
        assert "registered to another device" in str(answer["message"])
        assert "dev-1" not in str(answer["message"])  # the sender is not told which
        assert _certificates_of(server, clone) == 0
        with server.state.db.begin() as conn:
            assert device_store.device(conn, clone) is None
    with server.state.db.begin() as conn:
        refused = [e for e in audit_entries(conn, 50) if e["action"] == "enroll_refused"]
    assert len(refused) == 3
    assert {e["target"] for e in refused} == {"dev-2", "dev-3", "dev-4"}
    assert all(e["detail"]["holder"] == "dev-1" for e in refused)


def test_a_device_cannot_re_enroll_onto_another_devices_key(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    taken = ec.generate_private_key(ec.SECP256R1())
    assert _enroll(server, factory, taken, "dev-1")[0] == 200
    mover: DeviceCredentials = server.enroll("dev-2", factory, tmp_path)
    answer = server.request(
        "POST",
        "/.well-known/est/simplereenroll",
        base64.b64encode(est_csr(taken, "dev-2")),
        headers={"Content-Type": "application/pkcs10"},
        device=mover,
    )
    assert answer.status == 409, answer.body
    assert "registered to another device" in answer.json()["message"]
    # It keeps its own key and certificate: it still checks in.
    checkin = server.request("POST", "/v1/device/checkin", {"firmware_version": "1"}, device=mover)
    assert checkin.status == 200
    with server.state.db.begin() as conn:
        refused = [e for e in audit_entries(conn, 50) if e["action"] == "enroll_refused"]
    assert [(e["actor"], e["target"]) for e in refused] == [("device:dev-2", "dev-2")]


def test_provisioning_refuses_a_key_another_device_holds(
    server: RunningServer, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    register_device(server.state.dd, key, "made-1", datetime.now(UTC))
    with pytest.raises(ConflictError, match="registered to another device"):
        register_device(server.state.dd, key, "made-2", datetime.now(UTC))
    assert _certificates_of(server, "made-2") == 0


def test_a_database_with_shared_keys_migrates_and_the_key_stays_with_the_first(
    tmp_path: Path, db_url: str
) -> None:
    db = Database(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with db.begin() as conn:
        for n, when in ((1, "2021-01-01"), (2, "2022-01-01"), (3, "2023-01-01")):
            conn.execute(
                text(
                    "INSERT INTO devices (device_id, status, key_spki, enrolled_at, enrolled_by) "
                    "VALUES (:d, 'active', :k, :t, 'old')"
                ),
                {"d": f"old-{n}", "k": spki, "t": datetime.fromisoformat(when).replace(tzinfo=UTC)},
            )
    db.migrate()
    with db.begin() as conn:
        assert device_store.key_holder(conn, spki) == "old-1"
        rows = {d: device_store.device(conn, d) for d in ("old-1", "old-2", "old-3")}
        assert rows["old-1"] is not None
        assert rows["old-1"].key_sha256 == device_store.key_fingerprint(spki)
        assert [rows[d].key_sha256 for d in ("old-2", "old-3")] == [None, None]  # type: ignore[union-attr]
        with pytest.raises(ConflictError, match="registered to another device"):
            device_store.enroll_device(conn, "new-1", spki, datetime.now(UTC), "test")
    db.dispose()
