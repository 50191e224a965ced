"""Hand-written SQL for the few hot paths, on either backend.

Statements use ``:name`` parameters (SQLite's own style) and are turned into
``%(name)s`` for PostgreSQL drivers; they skip SQLAlchemy's statement
compilation, which costs more than the statement itself on a busy check-in
or issuance path. Everything else goes through SQLAlchemy expressions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

__all__ = ["db_time", "driver_sql"]

_NAMED = re.compile(r":([a-z_][a-z0-9_]*)")


def driver_sql(conn: Connection, sql: str, params: Any) -> Any:
    if conn.dialect.name != "sqlite":
        sql = _NAMED.sub(r"%(\1)s", sql)
    return conn.exec_driver_sql(sql, params)


def db_time(conn: Connection, value: datetime) -> Any:
    """A timestamp as the schema's UTCDateTime stores it on this backend."""
    value = value.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
