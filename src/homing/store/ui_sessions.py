"""Sessions of the web fleet view, kept in the database so every worker and replica knows them.

The browser holds a random session value; the database keeps only its
SHA-256, the operator token it was opened with and a CSRF value. A session
ends at its expiry, at logout, or the moment its token is revoked (every
lookup joins the token's row).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select

from homing.store.schema import operator_tokens, ui_sessions

__all__ = ["Session", "end_session", "open_session", "session"]


@dataclass(frozen=True)
class Session:
    token_name: str
    role: str
    csrf: str
    expires_at: datetime


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def open_session(
    conn: Connection, token_name: str, now: datetime, lifetime: timedelta
) -> tuple[str, str]:
    """A new session for a verified token; returns (cookie value, CSRF value)."""
    conn.execute(delete(ui_sessions).where(ui_sessions.c.expires_at <= now))
    value = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    conn.execute(
        insert(ui_sessions).values(
            session_hash=_hash(value),
            token_name=token_name,
            csrf=csrf,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    return value, csrf


def session(conn: Connection, value: str, now: datetime) -> Session | None:
    """The live session the cookie names, or None (unknown, expired or token revoked)."""
    row = conn.execute(
        select(
            ui_sessions.c.token_name,
            operator_tokens.c.role,
            ui_sessions.c.csrf,
            ui_sessions.c.expires_at,
        )
        .select_from(
            ui_sessions.join(operator_tokens, ui_sessions.c.token_name == operator_tokens.c.name)
        )
        .where(
            ui_sessions.c.session_hash == _hash(value),
            ui_sessions.c.expires_at > now,
            operator_tokens.c.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        return None
    return Session(str(row.token_name), str(row.role), str(row.csrf), row.expires_at)


def end_session(conn: Connection, value: str) -> None:
    conn.execute(delete(ui_sessions).where(ui_sessions.c.session_hash == _hash(value)))
