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

__all__ = ["db_time", "driver_executemany", "driver_rows", "driver_sql"]

_NAMED = re.compile(r":([a-z_][a-z0-9_]*)")


def driver_sql(conn: Connection, sql: str, params: Any) -> Any:
    if conn.dialect.name != "sqlite":
        sql = _NAMED.sub(r"%(\1)s", sql)
    return conn.exec_driver_sql(sql, params)


def driver_rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows as plain tuples; on SQLite straight from the driver, in the open transaction.

    For the hottest statements only (the check-in batch runs with the write
    lock held): SQLAlchemy's result handling costs more than SQLite's work.
    """
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        assert raw is not None
        return list(raw.execute(sql, params).fetchall())
    return [tuple(row) for row in driver_sql(conn, sql, params)]


def driver_executemany(conn: Connection, sql: str, rows: list[dict[str, Any]]) -> None:
    """One statement for many rows; on SQLite straight to the driver (see ``driver_rows``).

    Errors from that path are the driver's own (``sqlite3.Error``), so it is
    for statements that cannot conflict, such as the check-in batch's.
    """
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.executemany(sql, rows)
        return
    driver_sql(conn, sql, rows)


def db_time(conn: Connection, value: datetime) -> Any:
    """A timestamp as the schema's UTCDateTime stores it on this backend."""
    value = value.astimezone(UTC)
    if conn.dialect.name == "sqlite":
        return value.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
