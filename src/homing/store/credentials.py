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

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import AuthError, ConflictError, NotFoundError
from homing.store.schema import factory_credentials, operator_tokens

__all__ = [
    "ROLES",
    "add_factory",
    "add_token",
    "disable_factory",
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
    result = conn.execute(
        update(factory_credentials)
        .where(factory_credentials.c.name == name)
        .values(disabled_at=when)
    )
    if not result.rowcount:
        raise NotFoundError(f"no factory station {name!r}")


def verify_factory(conn: Connection, name: str, secret: str) -> None:
    row = conn.execute(
        select(factory_credentials).where(factory_credentials.c.name == name)
    ).first()
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


def verify_token(conn: Connection, token: str) -> tuple[str, str]:
    """Return (name, role) of a valid token; AuthError otherwise."""
    row = conn.execute(
        select(operator_tokens).where(operator_tokens.c.token_hash == _hash(token))
    ).first()
    if row is None or row.revoked_at is not None:
        raise AuthError("operator token is not valid")
    return str(row.name), str(row.role)
