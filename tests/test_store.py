"""Storage on both backends: migrations match the schema, constraints hold, credentials hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from homing.errors import AuthError, ConflictError, NotFoundError, PKIError
from homing.pki.ledger import IssuedRecord
from homing.site.ledger import DatabaseLedger
from homing.store import Database, credentials, recovery
from homing.store import device_contacts as contacts
from homing.store import devices as device_store
from homing.store.schema import factory_credentials, metadata, operator_tokens

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str):  # type: ignore[no-untyped-def]
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


def test_migrations_create_exactly_the_schema(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrating_twice_is_harmless(db: Database) -> None:
    db.migrate()


def test_ledger_refuses_duplicate_serials(db: Database) -> None:
    ledger = DatabaseLedger(db, now=NOW)
    record = IssuedRecord(0xABC, "device", "d1", "pin", NOW + timedelta(days=1))
    ledger.record(record)
    with pytest.raises(PKIError, match="already issued"):
        ledger.record(record)
    assert ledger.get(0xABC) == record
    assert ledger.revoke(0xABC, NOW, "keyCompromise").revoked_at == NOW
    assert [r.serial for r in ledger.revoked("pin")] == [0xABC]
    assert ledger.by_subject("d1")[0].reason == "keyCompromise"


def test_device_rows_and_checkins(db: Database) -> None:
    with db.engine.begin() as conn:
        device_store.enroll_device(conn, "d1", b"spki", NOW, "factory:x", "board")
    with pytest.raises(ConflictError), db.engine.begin() as conn:
        device_store.enroll_device(conn, "d1", b"spki", NOW, "factory:x")
    with db.engine.begin() as conn:
        contacts.record_checkins(
            conn,
            [
                contacts.CheckIn("d1", NOW + timedelta(minutes=2), "2.0", 3, 4, 5, {"ok": True}),
                contacts.CheckIn("d1", NOW + timedelta(minutes=1), "1.0", 1, 1, 1, None),
            ],
        )
        row = device_store.device(conn, "d1")
    assert row is not None
    assert row.firmware_version == "2.0"  # the newest check-in wins, whatever the order
    assert row.last_seen == NOW + timedelta(minutes=2)
    assert row.health == {"ok": True}
    with db.engine.begin() as conn:
        assert contacts.count_checkins(conn, "d1") == 2
        with pytest.raises(NotFoundError):
            device_store.revoke_device(conn, "nobody", NOW, "x")


def test_search_escapes_wildcards(db: Database) -> None:
    with db.engine.begin() as conn:
        for name in ("a_1", "ab1", "x%y"):
            device_store.enroll_device(conn, name, name.encode(), NOW, "f")  # a key each
        assert [d.device_id for d in device_store.list_devices(conn, search="_")] == ["a_1"]
        assert [d.device_id for d in device_store.list_devices(conn, search="%")] == ["x%y"]


def test_secrets_are_stored_only_as_hashes(db: Database) -> None:
    with db.engine.begin() as conn:
        secret = credentials.add_factory(conn, "line-1", NOW)
        token = credentials.add_token(conn, "alice", "operator", NOW)
    with db.engine.begin() as conn:
        stored = conn.execute(select(factory_credentials.c.secret_hash)).scalar_one()
        assert secret not in stored
        assert token not in conn.execute(select(operator_tokens.c.token_hash)).scalar_one()
        credentials.verify_factory(conn, "line-1", secret)
        assert credentials.verify_token(conn, token) == ("alice", "operator")
        with pytest.raises(AuthError):
            credentials.verify_factory(conn, "line-1", secret + "x")
        with pytest.raises(AuthError):
            credentials.verify_token(conn, token + "x")
        with pytest.raises(AuthError, match="unknown role"):
            credentials.add_token(conn, "bob", "root", NOW)
        credentials.disable_factory(conn, "line-1", NOW)
        with pytest.raises(AuthError, match="disabled"):
            credentials.verify_factory(conn, "line-1", secret)


def test_recovery_nonces_are_single_use_and_bound(db: Database) -> None:
    with db.engine.begin() as conn:
        nonce = recovery.issue_nonce(conn, "d1", NOW, timedelta(minutes=5))
    with db.engine.begin() as conn, pytest.raises(AuthError):
        recovery.consume_nonce(conn, nonce, "d2", NOW)
    with db.engine.begin() as conn:
        recovery.consume_nonce(conn, nonce, "d1", NOW)
    with db.engine.begin() as conn, pytest.raises(AuthError):
        recovery.consume_nonce(conn, nonce, "d1", NOW)


def test_naive_datetimes_are_refused(db: Database) -> None:
    from sqlalchemy.exc import StatementError

    with pytest.raises(StatementError), db.engine.begin() as conn:
        device_store.enroll_device(conn, "d1", b"k", datetime(2026, 1, 1), "f")


def test_a_failed_write_transaction_leaves_nothing(db: Database) -> None:
    """Issuance and enrollment commit together or not at all (savepoints included)."""
    from homing.store import certificates as certs

    row = certs.CertificateRow(
        0x5EED, "device", "d1", "pin", NOW, NOW + timedelta(days=1), None, None
    )

    def enroll_then_fail() -> None:
        with db.begin() as conn:
            certs.insert_certificate(conn, row)
            device_store.enroll_device(conn, "d1", b"k", NOW, "f")  # uses a savepoint
            raise RuntimeError("power cut between the two")

    with pytest.raises(RuntimeError):
        enroll_then_fail()
    with db.engine.connect() as conn:
        assert certs.certificate(conn, 0x5EED) is None
        assert device_store.device(conn, "d1") is None
    with db.begin() as conn:
        certs.insert_certificate(conn, row)
    with pytest.raises(ConflictError), db.begin() as conn:
        certs.insert_certificate(conn, row)
