"""The audit log: every admin action, who did it, and when."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from homing.store.schema import audit_log

__all__ = ["audit", "audit_entries"]


# Built once: every write transaction that audits runs it (and holds the write lock).
_INSERT = insert(audit_log)


def audit(
    conn: Connection,
    when: datetime,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        _INSERT,
        {
            "at": when,
            "actor": actor,
            "action": action,
            "target": target,
            "detail": json.dumps(detail, sort_keys=True) if detail else None,
        },
    )


def audit_entries(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))
    return [
        {
            "at": r.at.isoformat(),
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "detail": json.loads(r.detail) if r.detail else None,
        }
        for r in rows
    ]
