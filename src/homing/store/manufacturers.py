"""Manufacturer CAs, kept as factory stations so every station bound applies to them.

A manufacturer is a row of ``factory_credentials`` that carries CA
certificates instead of a usable secret: its manifest, quota, expiry, rate
limit, disabling and bulk revocation ("every device this station enrolled")
are the ones a secret station has. The certificates live in the database so
that every server of a shared site sees an import at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import AuthError, ConflictError, NotFoundError
from homing.store.schema import factory_credentials

__all__ = [
    "NOT_A_HASH",
    "ManufacturerRow",
    "active_manufacturers",
    "add_manufacturer",
    "manufacturer_cas",
    "require_active",
    "set_crls",
]

# Not a SHA-256 hex digest, so no secret ever matches a manufacturer's row.
NOT_A_HASH = "manufacturer: no secret"


def add_manufacturer(
    conn: Connection, name: str, cas_pem: str, crls_pem: str | None, id_from: str, when: datetime
) -> None:
    try:
        with conn.begin_nested():
            conn.execute(
                insert(factory_credentials).values(
                    name=name,
                    secret_hash=NOT_A_HASH,
                    created_at=when,
                    manufacturer_cas=cas_pem,
                    manufacturer_crls=crls_pem,
                    id_from=id_from,
                )
            )
    except IntegrityError as e:
        raise ConflictError(f"factory station {name!r} exists already") from e


def set_crls(conn: Connection, name: str, crls_pem: str) -> None:
    """Replace a manufacturer's CRLs with newer ones."""
    found = conn.execute(
        select(factory_credentials.c.manufacturer_cas).where(factory_credentials.c.name == name)
    ).first()
    if found is None or found.manufacturer_cas is None:
        raise NotFoundError(f"no manufacturer CA {name!r}")
    conn.execute(
        update(factory_credentials)
        .where(factory_credentials.c.name == name)
        .values(manufacturer_crls=crls_pem)
    )


@dataclass(frozen=True)
class ManufacturerRow:
    """A manufacturer as stored: its CA certificates and CRLs (PEM) and its id field."""

    name: str
    cas_pem: str
    crls_pem: str | None
    id_from: str


def manufacturer_cas(conn: Connection, name: str) -> str:
    """The PEM of a manufacturer's CA certificates."""
    found = conn.execute(
        select(factory_credentials.c.manufacturer_cas).where(factory_credentials.c.name == name)
    ).first()
    if found is None or found.manufacturer_cas is None:
        raise NotFoundError(f"no manufacturer CA {name!r}")
    return str(found.manufacturer_cas)


def active_manufacturers(conn: Connection) -> list[ManufacturerRow]:
    """Every manufacturer CA not disabled (checked at import; parsed by the caller)."""
    rows = conn.execute(
        select(
            factory_credentials.c.name,
            factory_credentials.c.manufacturer_cas,
            factory_credentials.c.manufacturer_crls,
            factory_credentials.c.id_from,
        ).where(
            factory_credentials.c.manufacturer_cas.is_not(None),
            factory_credentials.c.disabled_at.is_(None),
        )
    )
    return [
        ManufacturerRow(row.name, row.manufacturer_cas, row.manufacturer_crls, row.id_from)
        for row in rows
    ]


def require_active(conn: Connection, name: str) -> None:
    """Checked again in the enrollment's transaction: disabling takes effect at once."""
    row = conn.execute(
        select(factory_credentials.c.disabled_at).where(
            factory_credentials.c.name == name,
            factory_credentials.c.manufacturer_cas.is_not(None),
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no manufacturer CA {name!r}")
    if row.disabled_at is not None:
        raise AuthError(f"manufacturer {name!r} is disabled")
