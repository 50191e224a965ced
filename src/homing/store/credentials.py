"""Factory station secrets and operator tokens, stored only as hashes.

Both are 256-bit random values homing generates, so a plain SHA-256 is a
sufficient one-way function (there is nothing to brute-force); comparison
is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import AuthError, ConflictError, NotFoundError
from homing.store.schema import factory_credentials, operator_tokens

__all__ = [
    "ROLES",
    "add_factory",
    "add_token",
    "disable_factory",
    "list_factories",
    "list_tokens",
    "revoke_token",
    "verify_factory",
    "verify_token",
]

ROLES = ("read-only", "operator")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def add_factory(conn: Connection, name: str, when: datetime) -> str:
    """Create a factory station credential; returns the secret (shown once)."""
    secret = secrets.token_urlsafe(32)
    try:
        with conn.begin_nested():
            conn.execute(
                insert(factory_credentials).values(
                    name=name, secret_hash=_hash(secret), created_at=when
                )
            )
    except IntegrityError as e:
        raise ConflictError(f"factory station {name!r} exists already") from e
    return secret


def disable_factory(conn: Connection, name: str, when: datetime) -> None:
    """Disable a station for good: its secret enrolls nothing from now on."""
    row = conn.execute(
        select(factory_credentials.c.disabled_at).where(factory_credentials.c.name == name)
    ).first()
    if row is None:
        raise NotFoundError(f"no factory station {name!r}")
    if row.disabled_at is not None:
        raise ConflictError(f"factory station {name!r} is disabled already")
    conn.execute(
        update(factory_credentials)
        .where(factory_credentials.c.name == name)
        .values(disabled_at=when)
    )


def list_factories(conn: Connection) -> list[dict[str, Any]]:
    """Every station, without its secret hash."""
    rows = conn.execute(
        select(
            factory_credentials.c.name,
            factory_credentials.c.created_at,
            factory_credentials.c.disabled_at,
            factory_credentials.c.manufacturer_cas,
        ).order_by(factory_credentials.c.name)
    )
    return [
        {
            "name": r.name,
            "created_at": r.created_at.isoformat(),
            "disabled_at": r.disabled_at.isoformat() if r.disabled_at else None,
            "kind": "manufacturer" if r.manufacturer_cas is not None else "secret",
        }
        for r in rows
    ]


# Built once: it runs inside every enrollment's write transaction.
_STATION = select(factory_credentials).where(factory_credentials.c.name == bindparam("name"))


def verify_factory(conn: Connection, name: str, secret: str) -> None:
    row = conn.execute(_STATION, {"name": name}).first()
    # Hash even when the name is unknown so timing does not reveal names.
    expected = row.secret_hash if row else _hash(secrets.token_urlsafe(32))
    if not hmac.compare_digest(expected, _hash(secret)) or row is None:
        raise AuthError("factory credentials are not valid")
    if row.disabled_at is not None:
        raise AuthError(f"factory station {name!r} is disabled")


def add_token(conn: Connection, name: str, role: str, when: datetime) -> str:
    """Create an operator token; returns it (shown once)."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}: use {' or '.join(ROLES)}")
    token = "hom_" + secrets.token_urlsafe(32)
    try:
        with conn.begin_nested():
            conn.execute(
                insert(operator_tokens).values(
                    name=name, token_hash=_hash(token), role=role, created_at=when
                )
            )
    except IntegrityError as e:
        raise ConflictError(f"operator token {name!r} exists already") from e
    return token


def list_tokens(conn: Connection) -> list[dict[str, Any]]:
    """Every operator token by name and role, never the token or its hash."""
    rows = conn.execute(
        select(
            operator_tokens.c.name,
            operator_tokens.c.role,
            operator_tokens.c.created_at,
            operator_tokens.c.revoked_at,
        ).order_by(operator_tokens.c.name)
    )
    return [
        {
            "name": r.name,
            "role": r.role,
            "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        for r in rows
    ]


def revoke_token(conn: Connection, name: str, when: datetime) -> None:
    """Revoke a token for good; the next request that sends it is refused."""
    row = conn.execute(
        select(operator_tokens.c.revoked_at).where(operator_tokens.c.name == name)
    ).first()
    if row is None:
        raise NotFoundError(f"no operator token {name!r}")
    if row.revoked_at is not None:
        raise ConflictError(f"operator token {name!r} is revoked already")
    conn.execute(
        update(operator_tokens).where(operator_tokens.c.name == name).values(revoked_at=when)
    )


def verify_token(conn: Connection, token: str) -> tuple[str, str]:
    """Return (name, role) of a valid token; AuthError otherwise."""
    row = conn.execute(
        select(operator_tokens).where(operator_tokens.c.token_hash == _hash(token))
    ).first()
    if row is None or row.revoked_at is not None:
        raise AuthError("operator token is not valid")
    return str(row.name), str(row.role)
