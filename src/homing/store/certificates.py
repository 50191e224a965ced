"""The issuance record in the database: serial uniqueness is a primary key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import ConflictError
from homing.store.schema import certificates
from homing.store.sql import db_time, driver_sql

__all__ = [
    "CertificateRow",
    "certificate",
    "certificates_of",
    "insert_certificate",
    "revoke_certificate",
    "revoked_by_issuer",
    "serial_exists",
]


@dataclass(frozen=True)
class CertificateRow:
    serial: int
    kind: str
    subject_id: str
    issuer_pin: str
    issued_at: datetime
    not_after: datetime
    revoked_at: datetime | None
    reason: str | None


def _row(r: object) -> CertificateRow:
    m = r._mapping  # type: ignore[attr-defined]
    return CertificateRow(
        serial=int(m["serial"], 16),
        kind=m["kind"],
        subject_id=m["subject_id"],
        issuer_pin=m["issuer_pin"],
        issued_at=m["issued_at"],
        not_after=m["not_after"],
        revoked_at=m["revoked_at"],
        reason=m["reason"],
    )


def insert_certificate(conn: Connection, row: CertificateRow) -> None:
    """Record an issued certificate; the serial is the primary key (RFC 5280 4.1.2.2).

    A duplicate fails the whole transaction, so nothing of the request that
    drew it is kept.
    """
    try:
        driver_sql(
            conn,
            "INSERT INTO certificates (serial, kind, subject_id, issuer_pin, issued_at, "
            "not_after, revoked_at, reason) VALUES (:serial, :kind, :subject_id, :issuer_pin, "
            ":issued_at, :not_after, :revoked_at, :reason)",
            {
                "serial": format(row.serial, "x"),
                "kind": row.kind,
                "subject_id": row.subject_id,
                "issuer_pin": row.issuer_pin,
                "issued_at": db_time(conn, row.issued_at),
                "not_after": db_time(conn, row.not_after),
                "revoked_at": db_time(conn, row.revoked_at) if row.revoked_at else None,
                "reason": row.reason,
            },
        )
    except IntegrityError as e:
        raise ConflictError(f"serial {row.serial:x} was already issued") from e


def serial_exists(conn: Connection, serial: int) -> bool:
    found = driver_sql(
        conn, "SELECT 1 FROM certificates WHERE serial = :serial", {"serial": format(serial, "x")}
    ).first()
    return found is not None


def certificate(conn: Connection, serial: int) -> CertificateRow | None:
    r = conn.execute(
        select(certificates).where(certificates.c.serial == format(serial, "x"))
    ).first()
    return _row(r) if r else None


def certificates_of(conn: Connection, subject_id: str) -> list[CertificateRow]:
    rows = conn.execute(
        select(certificates)
        .where(certificates.c.subject_id == subject_id)
        .order_by(certificates.c.issued_at)
    )
    return [_row(r) for r in rows]


def revoke_certificate(conn: Connection, serial: int, when: datetime, reason: str) -> bool:
    """Mark a certificate revoked; returns False when it already was."""
    result = conn.execute(
        update(certificates)
        .where(certificates.c.serial == format(serial, "x"), certificates.c.revoked_at.is_(None))
        .values(revoked_at=when, reason=reason)
    )
    return bool(result.rowcount)


def revoked_by_issuer(conn: Connection, issuer_pin: str) -> list[CertificateRow]:
    rows = conn.execute(
        select(certificates).where(
            certificates.c.issuer_pin == issuer_pin, certificates.c.revoked_at.is_not(None)
        )
    )
    return [_row(r) for r in rows]
