"""The server's operators: tokens, factory stations, revocation, status, devices."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from homing.cli._base import (
    _data_option,
    _db_option,
    _now,
    _operator_actor,
    _site,
    cli,
    err,
    out,
)
from homing.errors import ConfigError

if TYPE_CHECKING:
    pass


@cli.group()
def factory() -> None:
    """Factory station credentials for EST enrollment."""


@factory.command("add")
@click.argument("name")
@_data_option
@_db_option
def factory_add(name: str, data: Path, db_url: str | None) -> None:
    """Create a station credential; the secret is printed once."""
    from homing.operations import fleet as operations

    db = _site(data, db_url).database()
    secret = operations.add_factory(db, _operator_actor(), _now(), name)
    out.print(f"factory station {name!r} created; its secret (shown once):")
    click.echo(f"{name}:{secret}")


@factory.command("list")
@_data_option
@_db_option
def factory_list(data: Path, db_url: str | None) -> None:
    """Every factory station and whether it is disabled."""
    from homing.operations import fleet as operations

    rows = operations.list_factories(_site(data, db_url).database(), _operator_actor(), _now())
    for row in rows:
        state = f"disabled {row['disabled_at']}" if row["disabled_at"] else "active"
        out.print(
            f"{row['name']}: {row['kind']}, {state} (created {row['created_at']})",
            highlight=False,
        )


@factory.command("disable")
@click.argument("name")
@_data_option
@_db_option
def factory_disable(name: str, data: Path, db_url: str | None) -> None:
    """Disable a station's credential for good (a lost or retired station)."""
    from homing.operations import fleet as operations

    operations.disable_factory(_site(data, db_url).database(), _operator_actor(), _now(), name)
    out.print(f"factory station {name!r} disabled; its secret enrolls nothing from now on")


@cli.group()
def token() -> None:
    """Operator tokens for the admin API."""


@token.command("list")
@_data_option
@_db_option
def token_list(data: Path, db_url: str | None) -> None:
    """Every operator token by name and role (never the token itself)."""
    from homing.operations import fleet as operations

    rows = operations.list_tokens(_site(data, db_url).database(), _operator_actor(), _now())
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        out.print(f"{row['name']}: {row['role']}, {state}", highlight=False)


@token.command("revoke")
@click.argument("name")
@_data_option
@_db_option
def token_revoke(name: str, data: Path, db_url: str | None) -> None:
    """Revoke an operator token; the admin API refuses it at its next request."""
    from homing.operations import fleet as operations

    operations.revoke_token(_site(data, db_url).database(), _operator_actor(), _now(), name)
    out.print(f"token {name!r} revoked")


@token.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["read-only", "operator"]),
    default="read-only",
    show_default=True,
    help="read-only reads the fleet; operator may also change it.",
)
@_data_option
@_db_option
def token_add(name: str, role: str, data: Path, db_url: str | None) -> None:
    """Create an operator token; it is printed once."""
    from homing.operations import fleet as operations

    db = _site(data, db_url).database()
    value = operations.add_token(db, _operator_actor(), _now(), name, role)
    out.print(f"token {name!r} ({role}) created; send it as 'Authorization: Bearer ...':")
    click.echo(value)


@cli.command("revoke")
@click.argument("device_id")
@click.option(
    "--reason", default="unspecified", show_default=True, help="Why (kept in the audit log)."
)
@_data_option
@_db_option
def revoke_cmd(device_id: str, reason: str, data: Path, db_url: str | None) -> None:
    """Revoke a device; running servers refuse it from its next request."""
    from homing.operations import fleet as operations

    dd = _site(data, db_url)
    count = operations.revoke_device(
        dd, dd.database(), _operator_actor(), _now(), device_id, reason
    )
    out.print(f"device {device_id!r} revoked ({count} certificate(s)); CRL re-signed")


def _instant(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time from the command line (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as e:
        raise ConfigError(f"{option} must be an ISO 8601 time such as 2026-03-01T00:00Z") from e
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@cli.command("revoke-batch")
@click.option(
    "--ids",
    "ids_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A file of device ids, one a line ('#' starts a comment).",
)
@click.option("--station", help="Every device this factory station enrolled...")
@click.option("--since", help="...from this time (ISO 8601)...")
@click.option("--until", help="...and before this one.")
@click.option(
    "--issuer",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Every device holding a live certificate from this CA (PEM).",
)
@click.option(
    "--reason", default="unspecified", show_default=True, help="Why (kept in the audit log)."
)
@click.option("--dry-run", is_flag=True, help="Only say how many it would revoke.")
@_data_option
@_db_option
def revoke_batch_cmd(
    ids_file: Path | None,
    station: str | None,
    since: str | None,
    until: str | None,
    issuer: Path | None,
    reason: str,
    dry_run: bool,
    data: Path,
    db_url: str | None,
) -> None:
    """Revoke a batch of devices at once (a list, a station's run, or a CA's), one CRL."""
    from cryptography import x509

    from homing import ceremonies
    from homing.pki.keys import spki_pin
    from homing.store.revocation import Selection

    ids: tuple[str, ...] = ()
    if ids_file is not None:
        lines = ids_file.read_text(errors="replace").splitlines()
        ids = tuple(x.split("#", 1)[0].strip() for x in lines if x.split("#", 1)[0].strip())
        if not ids:
            raise ConfigError(f"{ids_file} names no device id")
    issuer_pin = None
    if issuer is not None:
        try:
            issuer_pin = spki_pin(x509.load_pem_x509_certificate(issuer.read_bytes()))
        except ValueError as e:
            raise ConfigError(f"{issuer} is not a PEM certificate: {e}") from e
    selection = Selection(
        device_ids=ids,
        station=station,
        since=_instant(since, "--since"),
        until=_instant(until, "--until"),
        issuer_pin=issuer_pin,
    )
    dd = _site(data, db_url)
    chosen, certificates = ceremonies.revoke_batch(
        dd, _now(), selection, reason=reason, actor=_operator_actor(), dry_run=dry_run
    )
    if dry_run:
        first = f", first: {', '.join(chosen[:5])}" if chosen else ""
        out.print(f"would revoke {len(chosen)} device(s){first}")
        return
    out.print(
        f"revoked {len(chosen)} device(s) and {certificates} certificate(s); "
        "device CRL re-signed once"
    )


@cli.command("audit")
@click.option(
    "--never-seen-days",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Flag devices enrolled this long ago that never checked in.",
)
@click.option(
    "--max-certificate-age-days",
    type=click.FloatRange(0),
    default=365.0,
    show_default=True,
    help="Flag devices whose newest certificate is older.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_data_option
@_db_option
def audit_cmd(
    never_seen_days: float,
    max_certificate_age_days: float,
    as_json: bool,
    data: Path,
    db_url: str | None,
) -> None:
    """What is wrong in the fleet: shared keys, silent devices, old or distrusted certificates."""
    import json as jsonlib

    from homing.operations.fleet_audit import fleet_audit

    dd = _site(data, db_url)
    report = fleet_audit(
        dd,
        dd.database(),
        _operator_actor(),
        _now(),
        never_seen_days=never_seen_days,
        max_certificate_age_days=max_certificate_age_days,
    )
    if as_json:
        click.echo(jsonlib.dumps(report, indent=2))
        return
    for kind, device_ids in report["findings"].items():
        shown = ", ".join(device_ids[:10]) + (" ..." if len(device_ids) > 10 else "")
        out.print(f"{kind}: {len(device_ids)}" + (f" ({shown})" if device_ids else ""))


@cli.command("status")
@_data_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(data: Path, db_url: str | None, as_json: bool) -> None:
    """Fleet summary: devices by trust and firmware version, expiries, warnings."""
    import json as jsonlib

    from rich.table import Table

    from homing.operations import fleet as operations

    dd = _site(data)
    summary = operations.fleet_status(dd, dd.database(db_url), _operator_actor(), _now())
    if as_json:
        click.echo(jsonlib.dumps(summary, indent=2))
        return
    for warning in summary["warnings"]:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    table = Table(title="homing fleet", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "devices_by_status",
        "devices_by_root_version",
        "devices_by_firmware",
        "metadata_versions",
        "metadata_expires",
    ):
        table.add_row(
            key.replace("_", " "), ", ".join(f"{k}: {v}" for k, v in summary[key].items()) or "none"
        )
    table.add_row("device certs expiring (30 d)", str(summary["device_certificates_expiring"]))
    table.add_row("devices never seen", str(summary["devices_never_seen"]))
    table.add_row("last check-in", summary["last_check_in"] or "never")
    table.add_row("server certificate expires", summary["server_certificate_expires"])
    for ro in summary.get("rollouts", []):
        progress = ro["stage_progress"]
        table.add_row(
            f"rollout {ro['id']} ({ro['version']} -> {ro['hardware']})",
            f"{ro['status']} at stage {ro['stage'] + 1} ({ro['percent']}%): "
            f"{progress['committed']} committed, {progress['failed']} failed, "
            f"{progress['stalled']} stalled of {progress['size']}"
            + (f"; {ro['halt_reason']}" if ro.get("halt_reason") else ""),
        )
    out.print(table)


@cli.group()
def devices() -> None:
    """The device registry."""


@devices.command("list")
@click.option("--search", help="Substring of id, firmware version or hardware class.")
@click.option(
    "--status", type=click.Choice(["active", "revoked"]), help="Only devices in this state."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    default=100,
    show_default=True,
    help="At most this many devices.",
)
@_data_option
@_db_option
def devices_list(
    search: str | None, status: str | None, limit: int, data: Path, db_url: str | None
) -> None:
    """List devices."""
    from rich.table import Table

    from homing.operations import fleet as operations

    rows = operations.list_devices(
        _site(data, db_url).database(),
        _operator_actor(),
        _now(),
        search=search,
        status=status,
        limit=limit,
    )
    table = Table(title=f"{len(rows)} device(s)")
    for column in ("device", "status", "hardware", "firmware", "root", "last seen"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["device_id"],
            r["status"],
            r["hardware"] or "",
            r["firmware_version"] or "",
            str(r["trust"]["root"] or ""),
            r["last_seen"] or "never",
        )
    out.print(table)
