"""Fleet operations shared by the admin API and the CLI: same code, same audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from homing import ceremonies
from homing.errors import NotFoundError
from homing.operations.overview import (
    CERTIFICATE_WARNING,
    OFFLINE_ROLE_WARNING,
    expiry_timeline,
)
from homing.site import DataDir
from homing.store import Database, audit, credentials
from homing.store import certificates as certs
from homing.store import devices as device_store

__all__ = [
    "OFFLINE_ROLE_WARNING",
    "add_factory",
    "add_token",
    "device_detail",
    "disable_factory",
    "fleet_status",
    "list_devices",
    "list_factories",
    "list_tokens",
    "revoke_device",
    "revoke_token",
]


def list_devices(
    db: Database,
    actor: str,
    now: datetime,
    *,
    search: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    with db.begin() as conn:
        rows = device_store.list_devices(
            conn, search=search, status=status, limit=limit, offset=offset
        )
        audit.audit(conn, now, actor, "list_devices", None, {"search": search} if search else None)
    return [r.to_json() for r in rows]


def device_detail(db: Database, actor: str, now: datetime, device_id: str) -> dict[str, Any]:
    with db.begin() as conn:
        row = device_store.device(conn, device_id)
        if row is None:
            raise NotFoundError(f"no device {device_id!r}")
        issued = certs.certificates_of(conn, device_id)
        audit.audit(conn, now, actor, "show_device", device_id)
    detail = row.to_json()
    detail["certificates"] = [
        {
            "serial": format(c.serial, "x"),
            "issued_at": c.issued_at.isoformat(),
            "not_after": c.not_after.isoformat(),
            "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None,
        }
        for c in issued
    ]
    return detail


def revoke_device(
    dd: DataDir, db: Database, actor: str, now: datetime, device_id: str, reason: str
) -> int:
    """Revoke a device and its certificates, then re-sign the CRLs (``ceremonies.revoke``)."""
    return ceremonies.revoke(dd, now, device_id=device_id, reason=reason, actor=actor)


def add_factory(db: Database, actor: str, now: datetime, name: str) -> str:
    from homing.fsutil import safe_name

    safe_name(name, "factory station name")
    with db.begin() as conn:
        secret = credentials.add_factory(conn, name, now)
        audit.audit(conn, now, actor, "add_factory", name)
    return secret


def add_token(db: Database, actor: str, now: datetime, name: str, role: str) -> str:
    from homing.fsutil import safe_name

    safe_name(name, "token name")
    with db.begin() as conn:
        token = credentials.add_token(conn, name, role, now)
        audit.audit(conn, now, actor, "add_token", name, {"role": role})
    return token


def list_tokens(db: Database, actor: str, now: datetime) -> list[dict[str, Any]]:
    with db.begin() as conn:
        rows = credentials.list_tokens(conn)
        audit.audit(conn, now, actor, "list_tokens")
    return rows


def revoke_token(db: Database, actor: str, now: datetime, name: str) -> None:
    with db.begin() as conn:
        credentials.revoke_token(conn, name, now)
        audit.audit(conn, now, actor, "revoke_token", name)


def list_factories(db: Database, actor: str, now: datetime) -> list[dict[str, Any]]:
    with db.begin() as conn:
        rows = credentials.list_factories(conn)
        audit.audit(conn, now, actor, "list_factories")
    return rows


def disable_factory(db: Database, actor: str, now: datetime, name: str) -> None:
    with db.begin() as conn:
        credentials.disable_factory(conn, name, now)
        audit.audit(conn, now, actor, "disable_factory", name)


def fleet_status(dd: DataDir, db: Database, actor: str, now: datetime) -> dict[str, Any]:
    """Devices by trust and firmware version, what expires soon, and warnings."""
    settings = dd.settings()
    repo = dd.repository(settings)
    with db.begin() as conn:
        summary = device_store.fleet_summary(conn, now, CERTIFICATE_WARNING)
        audit.audit(conn, now, actor, "status")
    timeline = expiry_timeline(dd, now)
    expiries = {
        e.name.removesuffix(" metadata"): e.expires for e in timeline if e.kind == "metadata"
    }
    server_leaf = dd.certificates("server-chain.pem")[0]
    warnings = [e.warning for e in timeline if e.warning]
    if summary["device_certificates_expiring"]:
        warnings.append(
            f"{summary['device_certificates_expiring']} device certificates expire within 30 days"
        )
    from homing.operations import rollouts as rollout_ops
    from homing.store import firmware

    with db.engine.connect() as conn:
        listed = firmware.list_rollouts(conn)
    rollout_view = [rollout_ops.status(db, r.id, now) for r in listed if r.status != "done"]
    for r in listed:
        if r.status == "halted":
            warnings.append(f"rollout {r.id} halted: {r.halt_reason}")
    return {
        **summary,
        "rollouts": rollout_view,
        "metadata_versions": {
            "root": repo.root_version(),
            "timestamp": repo.timestamp().signed.version,
            "targets": repo.targets().signed.version,
        },
        "metadata_expires": {k: v.isoformat() for k, v in expiries.items()},
        "server_certificate_expires": server_leaf.not_valid_after_utc.isoformat(),
        "warnings": warnings,
    }
