"""The PKI issuance record kept in the home server's database.

Implements the ``homing.pki.ledger.Ledger`` seam over ``homing.store``, so
the offline ceremonies and the online server share one record of every
certificate, and serial uniqueness is the database's primary key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Connection

from homing.errors import ConflictError, PKIError
from homing.pki.ledger import IssuedRecord
from homing.store import Database
from homing.store import certificates as certs

__all__ = ["DatabaseLedger"]


def _record(row: certs.CertificateRow) -> IssuedRecord:
    return IssuedRecord(
        serial=row.serial,
        kind=row.kind,
        subject_id=row.subject_id,
        issuer_pin=row.issuer_pin,
        not_after=row.not_after,
        revoked_at=row.revoked_at,
        reason=row.reason,
    )


class DatabaseLedger:
    """A ledger on a database; bound to one open transaction when ``conn`` is given."""

    def __init__(self, db: Database, conn: Connection | None = None, now: datetime | None = None):
        self._db = db
        self._conn = conn
        self._now = now

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        if self._conn is not None:
            yield self._conn
        else:
            with self._db.begin() as conn:
                yield conn

    def contains(self, serial: int) -> bool:
        with self._tx() as conn:
            return certs.serial_exists(conn, serial)

    def get(self, serial: int) -> IssuedRecord | None:
        with self._tx() as conn:
            row = certs.certificate(conn, serial)
        return _record(row) if row else None

    def record(self, entry: IssuedRecord) -> None:
        issued_at = self._now or datetime.now(entry.not_after.tzinfo)
        try:
            with self._tx() as conn:
                certs.insert_certificate(
                    conn,
                    certs.CertificateRow(
                        serial=entry.serial,
                        kind=entry.kind,
                        subject_id=entry.subject_id,
                        issuer_pin=entry.issuer_pin,
                        issued_at=issued_at,
                        not_after=entry.not_after,
                        revoked_at=entry.revoked_at,
                        reason=entry.reason,
                    ),
                )
        except ConflictError as e:
            raise PKIError(str(e)) from e

    def by_subject(self, subject_id: str) -> list[IssuedRecord]:
        with self._tx() as conn:
            return [_record(r) for r in certs.certificates_of(conn, subject_id)]

    def revoke(self, serial: int, when: datetime, reason: str) -> IssuedRecord:
        with self._tx() as conn:
            if certs.certificate(conn, serial) is None:
                raise PKIError(f"no certificate with serial {serial:x} was issued here")
            certs.revoke_certificate(conn, serial, when, reason)
            row = certs.certificate(conn, serial)
        assert row is not None
        return _record(row)

    def revoked(self, issuer_pin: str) -> list[IssuedRecord]:
        with self._tx() as conn:
            return [_record(r) for r in certs.revoked_by_issuer(conn, issuer_pin)]
