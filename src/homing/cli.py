"""The operator CLI: parses arguments and calls the library; nothing else.

Every ``HomingError`` becomes one line on stderr and exit status 1; usage
errors exit 2 (click's convention). No traceback reaches the operator.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from homing.errors import HomingError
from homing.fleet import STRATEGY_NAMES

if TYPE_CHECKING:
    from homing.ceremonies import InitSummary

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA = ".homing-data"


class _Console:
    """rich, imported on first use: the agent's commands run on small devices."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        self._console.print(*args, **kwargs)


out = _Console()
err = _Console(stderr=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, status: int = 1) -> None:
    from rich.markup import escape

    # Messages quote user input and TOML tables ("[fleet]"): never markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(status)


def _data_option(f: F) -> F:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path, file_okay=False),
        default=lambda: os.environ.get("HOMING_DATA", DEFAULT_DATA),
        show_default=f"$HOMING_DATA or {DEFAULT_DATA}",
        help="The operator's data directory.",
    )(f)


def _ensure_passphrase(data: Path | None, *, required: bool = False) -> None:
    """Ask for the key passphrase on a terminal when it is needed and not in the environment."""
    from homing.pki.keystore import PASSPHRASE_ENV
    from homing.site import DataDir

    if os.environ.get(PASSPHRASE_ENV):
        return
    if not required and data is not None:
        dd = DataDir(data)
        required = dd.exists() and dd.settings().encrypted
    if required and sys.stdin.isatty():
        os.environ[PASSPHRASE_ENV] = click.prompt(
            "Key passphrase", hide_input=True, confirmation_prompt=data is None
        )


def _paths(values: tuple[str, ...]) -> list[Path]:
    return [Path(v) for v in values]


@click.group()
@click.version_option(package_name="homing")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """homing: devices that always find their way home."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@cli.command()
@_data_option
@click.option("--host", "hosts", multiple=True, help="Server host name or IP (repeatable).")
@click.option("--primary", help="Primary home server URL (default https://HOST:8443).")
@click.option("--mirror", "mirrors", multiple=True, help="Mirror URL (repeatable).")
@click.option("--organization", default="homing", show_default=True)
@click.option("--ceremony", is_flag=True, help="Keep TUF root keys off this machine.")
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    help="Ceremony mode: a path for one root key, e.g. on removable media (repeatable).",
)
@click.option("--threshold", type=int, help="Root keys needed to sign a root (k of n).")
@click.option("--exist-ok", is_flag=True, help="Print the summary if DIR is already set up.")
def init(
    data: Path,
    hosts: tuple[str, ...],
    primary: str | None,
    mirrors: tuple[str, ...],
    organization: str,
    ceremony: bool,
    root_keys: tuple[str, ...],
    threshold: int | None,
    exist_ok: bool,
) -> None:
    """Create a data directory: CA hierarchy, keys and signed trust metadata."""
    from homing import ceremonies
    from homing.site import DataDir

    if exist_ok and DataDir(data).exists():
        _print_existing(data)
        return
    if ceremony and not root_keys:
        _fail("--ceremony needs at least one --root-key PATH (one per key holder)", 2)
    if root_keys and not ceremony:
        _fail("--root-key is only used with --ceremony", 2)
    if ceremony:
        _ensure_passphrase(None, required=True)
    summary = ceremonies.init(
        data,
        _now(),
        hosts=hosts or ceremonies.ceremonies.DEFAULT_HOSTS,
        primary=primary,
        mirrors=mirrors,
        ceremony_root_keys=_paths(root_keys),
        threshold=threshold,
        organization=organization,
    )
    _print_summary(summary)


def _print_summary(s: InitSummary) -> None:
    from rich.table import Table

    for warning in s.warnings:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    table = Table(title=f"homing data directory {s.data_dir}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("mode", f"{s.mode} ({'encrypted keys' if s.encrypted else 'UNENCRYPTED keys'})")
    table.add_row("root keys", f"{s.root_threshold} of {len(s.root_key_locations)}")
    for location in s.root_key_locations:
        table.add_row("  root key", location)
    table.add_row("root CA pin", s.root_ca_pin)
    table.add_row("server CA pin", s.server_ca_pin)
    table.add_row("server CA backup pin", s.server_ca_backup_pin)
    table.add_row("device CA pin", s.device_ca_pin)
    table.add_row("server hosts", ", ".join(s.hosts))
    table.add_row("home server", s.primary)
    table.add_row("trust metadata", f"{s.metadata_dir} (root v{s.root_version})")
    out.print(table)
    out.print(
        "Devices are provisioned with "
        f"{s.metadata_dir / '1.root.json'}; they learn pins and endpoints from it."
    )


def _print_existing(data: Path) -> None:
    from rich.table import Table

    from homing.site import DataDir

    dd = DataDir(data)
    settings = dd.settings()
    repo = dd.repository(settings)
    table = Table(title=f"homing data directory {data} (already set up)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("mode", settings.mode)
    table.add_row("root version", str(repo.root_version()))
    table.add_row("timestamp version", str(repo.timestamp().signed.version))
    table.add_row("timestamp expires", repo.timestamp().signed.expires.isoformat())
    table.add_row("server CA generation", str(settings.server_ca_generation))
    table.add_row("home server", settings.primary)
    out.print(table)


@cli.group()
def rotate() -> None:
    """Trust transitions: root, issuing CAs, server certificate, online keys."""


_sign_with = click.option(
    "--sign-with",
    "sign_with",
    multiple=True,
    help="A current root key file (repeatable; ceremony mode needs a threshold).",
)


@rotate.command("root")
@_data_option
@_sign_with
@click.option("--new-key", "new_keys", multiple=True, help="Path for a new root key (repeatable).")
@click.option("--threshold", type=int, help="Threshold of the new root.")
def rotate_root(
    data: Path, sign_with: tuple[str, ...], new_keys: tuple[str, ...], threshold: int | None
) -> None:
    """Publish root N+1, signed by a threshold of N's keys and of its own."""
    from homing import ceremonies

    _ensure_passphrase(data)
    version = ceremonies.rotate_root(
        data,
        _now(),
        sign_with=_paths(sign_with),
        new_keys=_paths(new_keys),
        threshold=threshold,
        actor=_operator_actor(),
    )
    out.print(f"published root version {version}")


@rotate.command("server-ca")
@_data_option
def rotate_server_ca(data: Path) -> None:
    """Promote the server CA's backup key, re-issue the server certificate, publish pins."""
    from homing import ceremonies

    _ensure_passphrase(data)
    generation = ceremonies.rotate_issuing_ca(data, "server", _now(), actor=_operator_actor())
    out.print(f"server-issuing CA generation {generation} is active; new pins published")


@rotate.command("device-ca")
@_data_option
def rotate_device_ca(data: Path) -> None:
    """Promote the device CA's backup key; devices of the old CA keep working."""
    from homing import ceremonies

    _ensure_passphrase(data)
    generation = ceremonies.rotate_issuing_ca(data, "device", _now(), actor=_operator_actor())
    out.print(f"device-issuing CA generation {generation} is active")


@rotate.command("server-cert")
@_data_option
def rotate_server_cert(data: Path) -> None:
    """Issue the server a new key and certificate from the active server CA."""
    from homing import ceremonies

    _ensure_passphrase(data)
    leaf = ceremonies.rotate_server_cert(data, _now(), actor=_operator_actor())
    out.print(
        f"new server certificate {leaf.serial_number:x}, valid until "
        f"{leaf.not_valid_after_utc.isoformat()}"
    )


@rotate.command("online-keys")
@_data_option
@_sign_with
def rotate_online_keys(data: Path, sign_with: tuple[str, ...]) -> None:
    """Replace the snapshot and timestamp keys in a new root version."""
    from homing import ceremonies

    _ensure_passphrase(data)
    version = ceremonies.rotate_online_keys(
        data, _now(), sign_with=_paths(sign_with), actor=_operator_actor()
    )
    out.print(f"online keys replaced in root version {version}")


@cli.group()
def timestamp() -> None:
    """The online timestamp role."""


@timestamp.command("refresh")
@_data_option
@click.option("--expires-in", type=float, help="Hours until the new timestamp expires.")
def timestamp_refresh(data: Path, expires_in: float | None) -> None:
    """Re-sign the timestamp with a new version and expiry."""
    from homing import ceremonies

    _ensure_passphrase(data)
    delta = timedelta(hours=expires_in) if expires_in is not None else None
    version = ceremonies.refresh_timestamp(data, _now(), delta, actor=_operator_actor())
    out.print(f"timestamp version {version} published")


@cli.group()
def targets() -> None:
    """The offline targets role (the pin policy lives in it)."""


@targets.command("refresh")
@_data_option
def targets_refresh(data: Path) -> None:
    """Re-sign targets with the current pins before they expire (yearly: they live two years)."""
    from homing import ceremonies

    _ensure_passphrase(data)
    version = ceremonies.refresh_targets(data, _now(), actor=_operator_actor())
    out.print(f"targets version {version} published")


@cli.group()
def pki() -> None:
    """Issue certificates from CSRs, revoke, and sign CRLs."""


@pki.command("issue")
@_data_option
@click.option("--profile", type=click.Choice(["server", "device"]), required=True)
@click.option("--csr", "csr_path", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--device-id", help="Device id the certificate is for (device profile).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False))
def pki_issue(
    data: Path, profile: str, csr_path: Path, device_id: str | None, out_path: Path | None
) -> None:
    """Issue a certificate from a CSR (PEM or DER) under a profile."""
    from homing import ceremonies

    _ensure_passphrase(data)
    from cryptography.hazmat.primitives import serialization

    try:
        csr = csr_path.read_bytes()
    except OSError as e:
        _fail(f"cannot read {csr_path}: {e.strerror}")
    chain = ceremonies.issue_certificate(
        data, csr, profile, _now(), device_id=device_id, actor=_operator_actor()
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    if out_path:
        from homing.fsutil import atomic_write

        atomic_write(out_path, pem)
        out.print(f"issued {chain[0].serial_number:x} to {out_path}")
    else:
        click.echo(pem.decode(), nl=False)


@pki.command("revoke")
@_data_option
@click.option("--device", "device_id", help="Revoke every certificate of this device.")
@click.option("--serial", help="Revoke one certificate by serial (hex).")
@click.option("--reason", default="unspecified", show_default=True)
def pki_revoke(data: Path, device_id: str | None, serial: str | None, reason: str) -> None:
    """Revoke by device id or serial and re-sign the CRLs."""
    from homing import ceremonies

    _ensure_passphrase(data)
    number: int | None = None
    if serial is not None:
        try:
            number = int(serial.replace(":", ""), 16)
        except ValueError:
            _fail(f"serial {serial!r} is not hexadecimal", 2)
    count = ceremonies.revoke(
        data,
        _now(),
        device_id=device_id,
        serial=number,
        reason=reason,
        actor=_operator_actor(),
    )
    out.print(f"revoked {count} certificate(s); CRLs re-signed")


@pki.command("crl")
@_data_option
@click.option("--ca", "kind", type=click.Choice(["server", "device"]), required=True)
def pki_crl(data: Path, kind: str) -> None:
    """Sign a fresh CRL for an issuing CA."""
    from homing import ceremonies

    _ensure_passphrase(data)
    path = ceremonies.write_crl(data, kind, _now())
    out.print(f"CRL written to {path}")


@cli.group()
def pins() -> None:
    """The pin policy devices receive."""


@pins.command("show")
@_data_option
def pins_show(data: Path) -> None:
    """Print the published pin policy (JSON)."""
    from homing.site import DataDir

    dd = DataDir(data)
    repo = dd.repository(dd.settings())
    click.echo(repo.target_bytes("pins.json").decode(), nl=False)


_db_option = click.option(
    "--db", "db_url", help="Database URL (default: SQLite in the data directory, or $HOMING_DB)."
)


def _operator_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@cli.command()
@_data_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT")
@_db_option
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes.")
@click.option(
    "--trusted-proxy",
    "proxies",
    multiple=True,
    help="CIDR of a TLS-terminating proxy allowed to pass X-Client-Cert (repeatable).",
)
@click.option(
    "--max-offline-days",
    type=float,
    help="Recovery policy: refuse devices silent for longer (default: unlimited).",
)
@click.option("--access-log", is_flag=True, help="Log every request as a JSON line.")
@click.option(
    "--init",
    "init_first",
    is_flag=True,
    help="Create a development data directory first if there is none.",
)
def serve(
    data: Path,
    listen: str,
    db_url: str | None,
    workers: int,
    proxies: tuple[str, ...],
    max_offline_days: float | None,
    access_log: bool,
    init_first: bool,
) -> None:
    """Run the home server (HTTPS with optional client certificates on one port)."""
    from homing import ceremonies
    from homing.server.config import ServerConfig, parse_listen
    from homing.server.runner import serve as run_server
    from homing.site import DataDir

    if init_first and not DataDir(data).exists():
        _print_summary(ceremonies.init(data, _now()))
    _ensure_passphrase(data)
    host, port = parse_listen(listen)
    config = ServerConfig(
        data=data,
        host=host,
        port=port,
        db_url=db_url,
        workers=workers,
        trusted_proxies=proxies,
        max_offline=timedelta(days=max_offline_days) if max_offline_days else None,
        access_log=access_log,
    )
    dd = DataDir(data)
    settings = dd.settings()
    policy = ceremonies.pin_policy(dd, settings, dd.keystore(settings))
    url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    out.print(f"[bold]homing[/] home server on {url} ({workers} worker(s))")
    out.print(f"  pinned SPKIs: {', '.join(policy.spki_pins)}")
    out.print(f"  trust metadata: {url}/tuf/metadata/  health: {url}/healthz")
    out.print("  next: create a factory credential and enroll a device:")
    out.print(f"    homing factory add station-1 --data {data}")
    out.print("    (see docs/est-with-curl.md for enrolling with curl and openssl)")
    run_server(config)


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
    from homing.site import DataDir

    db = DataDir(data).database(db_url)
    secret = operations.add_factory(db, _operator_actor(), _now(), name)
    out.print(f"factory station {name!r} created; its secret (shown once):")
    click.echo(f"{name}:{secret}")


@factory.command("list")
@_data_option
@_db_option
def factory_list(data: Path, db_url: str | None) -> None:
    """Every factory station and whether it is disabled."""
    from homing.operations import fleet as operations
    from homing.site import DataDir

    rows = operations.list_factories(DataDir(data, db_url).database(), _operator_actor(), _now())
    for row in rows:
        state = f"disabled {row['disabled_at']}" if row["disabled_at"] else "active"
        out.print(f"{row['name']}: {state} (created {row['created_at']})", highlight=False)


@factory.command("disable")
@click.argument("name")
@_data_option
@_db_option
def factory_disable(name: str, data: Path, db_url: str | None) -> None:
    """Disable a station's credential for good (a lost or retired station)."""
    from homing.operations import fleet as operations
    from homing.site import DataDir

    operations.disable_factory(DataDir(data, db_url).database(), _operator_actor(), _now(), name)
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
    from homing.site import DataDir

    rows = operations.list_tokens(DataDir(data, db_url).database(), _operator_actor(), _now())
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
    from homing.site import DataDir

    operations.revoke_token(DataDir(data, db_url).database(), _operator_actor(), _now(), name)
    out.print(f"token {name!r} revoked")


@token.command("add")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["read-only", "operator"]), default="read-only", show_default=True
)
@_data_option
@_db_option
def token_add(name: str, role: str, data: Path, db_url: str | None) -> None:
    """Create an operator token; it is printed once."""
    from homing.operations import fleet as operations
    from homing.site import DataDir

    db = DataDir(data).database(db_url)
    value = operations.add_token(db, _operator_actor(), _now(), name, role)
    out.print(f"token {name!r} ({role}) created; send it as 'Authorization: Bearer ...':")
    click.echo(value)


@cli.command("revoke")
@click.argument("device_id")
@click.option("--reason", default="unspecified", show_default=True)
@_data_option
@_db_option
def revoke_cmd(device_id: str, reason: str, data: Path, db_url: str | None) -> None:
    """Revoke a device; running servers refuse it from its next request."""
    from homing.operations import fleet as operations
    from homing.site import DataDir

    _ensure_passphrase(data)
    dd = DataDir(data, db_url)
    count = operations.revoke_device(
        dd, dd.database(), _operator_actor(), _now(), device_id, reason
    )
    out.print(f"device {device_id!r} revoked ({count} certificate(s)); CRL re-signed")


@cli.command("status")
@_data_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(data: Path, db_url: str | None, as_json: bool) -> None:
    """Fleet summary: devices by trust and firmware version, expiries, warnings."""
    import json as jsonlib

    from rich.table import Table

    from homing.operations import fleet as operations
    from homing.site import DataDir

    dd = DataDir(data)
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
@click.option("--status", type=click.Choice(["active", "revoked"]))
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@_data_option
@_db_option
def devices_list(
    search: str | None, status: str | None, limit: int, data: Path, db_url: str | None
) -> None:
    """List devices."""
    from rich.table import Table

    from homing.operations import fleet as operations
    from homing.site import DataDir

    rows = operations.list_devices(
        DataDir(data).database(db_url),
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


@cli.group()
def device() -> None:
    """Factory-station operations on devices."""


@device.command("provision")
@_data_option
@_db_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The device state directory to create.",
)
@click.option("--id", "device_id", help="Device id (default: a random dev-XXXXXXXXXXXX).")
@click.option("--hardware", help="Hardware class of the device.")
@click.option("--server", help="Home server URL the device uses instead of the published one.")
def device_provision(
    data: Path,
    db_url: str | None,
    out_dir: Path,
    device_id: str | None,
    hardware: str | None,
    server: str | None,
) -> None:
    """Offline: make the device key, its certificate and its state directory."""
    from homing.operations.provisioning import provision
    from homing.site import DataDir

    _ensure_passphrase(data)
    state = provision(
        DataDir(data, db_url),
        out_dir,
        _now(),
        device_id=device_id,
        hardware=hardware,
        server=server,
    )
    config = state.config()
    out.print(f"device {config.device_id!r} provisioned in {out_dir}")


@devices.command("group")
@click.argument("name")
@click.argument("device_ids", nargs=-1)
@_data_option
@_db_option
def devices_group(name: str, device_ids: tuple[str, ...], data: Path, db_url: str | None) -> None:
    """Make the named device group exactly these devices (for rollouts with --group)."""
    from homing.fsutil import safe_name
    from homing.site import DataDir
    from homing.store import audit, firmware

    safe_name(name, "group name")
    db = DataDir(data, db_url).database()
    with db.begin() as conn:
        firmware.set_group(conn, name, list(device_ids))
        audit.audit(
            conn, _now(), _operator_actor(), "set_group", name, {"devices": list(device_ids)}
        )
    out.print(f"group {name!r}: {len(device_ids)} device(s)")


@cli.group()
def agent() -> None:
    """What runs on the device."""


_state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The device state directory.",
)


@agent.command("enroll")
@_state_option
@click.option("--server", required=True, help="Home server URL, e.g. https://home.example.com")
@click.option("--factory", "factory_cred", required=True, help="NAME:SECRET of the station.")
@click.option(
    "--root",
    "root_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Root metadata the factory gives every device.",
)
@click.option("--id", "device_id", help="Device id (default: random).")
@click.option("--hardware", help="Hardware class of the device.")
def agent_enroll(
    state_dir: Path,
    server: str,
    factory_cred: str,
    root_file: Path,
    device_id: str | None,
    hardware: str | None,
) -> None:
    """Online: make the key on the device and enroll over EST."""
    from homing.agent.enroll import enroll

    try:
        root = root_file.read_bytes()
    except OSError as e:
        _fail(f"cannot read {root_file}: {e.strerror}")
    state = enroll(
        state_dir, server, factory_cred, root, _now(), device_id=device_id, hardware=hardware
    )
    out.print(f"device {state.config().device_id!r} enrolled with {server}")


@agent.command("run")
@_state_option
@click.option("--once", is_flag=True, help="One full cycle; exit 0 only if checked in.")
@click.option("--server", help="Override the endpoints from the trust metadata (pins unchanged).")
@click.option(
    "--interval",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds between cycles (jittered).",
)
@click.option("--firmware-version", help="Version the device reports.")
def agent_run(
    state_dir: Path, once: bool, server: str | None, interval: float, firmware_version: str | None
) -> None:
    """Check in, keep trust fresh, renew or recover the certificate."""
    if not once:
        # The resident process carries only the agent: re-execute into the
        # lean entry point instead of keeping the operator CLI loaded for ever.
        argv = [
            sys.executable,
            "-m",
            "homing.agent.daemon",
            "--state",
            str(state_dir),
            "--interval",
            str(interval),
        ]
        if server:
            argv += ["--server", server]
        if firmware_version:
            argv += ["--firmware-version", firmware_version]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    from homing.agent.agent import Agent
    from homing.agent.state import DeviceState

    report = Agent(
        DeviceState(state_dir), server=server, firmware_version=firmware_version
    ).run_once()
    for step in report.steps:
        out.print(f"  {step}")
    if not report.checked_in:
        _fail(report.error or "not checked in")
    out.print("checked in")


@agent.command("status")
@_state_option
@click.option("--json", "as_json", is_flag=True)
def agent_status(state_dir: Path, as_json: bool) -> None:
    """Device id, trust versions, certificate expiry, last result."""
    import json as jsonlib

    from homing.agent.state import DeviceState

    state = DeviceState(state_dir)
    config = state.config()
    cert = state.certificate()
    last = state.last_run()
    from homing.agent.installer import SlotInstaller

    slots = SlotInstaller(state.root / "slots")
    doc = {
        "device_id": config.device_id,
        "hardware": config.hardware,
        "certificate_expires": cert.not_valid_after_utc.isoformat() if cert else None,
        "trust": last.get("trust", {}),
        "slots": slots.slots(),
        "active_slot": slots.active_slot(),
        "active_version": slots.active_version(),
        "update_pending_commit": slots.pending(),
        "last_update": [s for s in last.get("steps", []) if "firmware" in s or "update" in s],
        "last_run": last,
    }
    if as_json:
        click.echo(jsonlib.dumps(doc, indent=2))
        return
    for key, value in doc.items():
        out.print(f"{key}: {value}")


@agent.command(
    "tuf-client",
    context_settings={"ignore_unknown_options": False},
)
@click.option("--metadata-dir", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--metadata-url")
@click.option("--target-name", "target_names", multiple=True)
@click.option("--target-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--target-base-url")
@click.argument("command", type=click.Choice(["init", "refresh", "download"]))
@click.argument("root_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
def agent_tuf_client(
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_dir: Path | None,
    target_base_url: str | None,
    command: str,
    root_file: Path | None,
) -> None:
    """The TUF conformance client protocol over homing's trust-update code (exit 0 or 1)."""
    import contextlib

    from homing.agent.fetcher import HTTPSFetcher

    fetcher = HTTPSFetcher(None, _now(), allow_plain_http=True)
    with contextlib.closing(fetcher):
        _tuf_client(
            fetcher,
            metadata_dir,
            metadata_url,
            target_names,
            target_dir,
            target_base_url,
            command,
            root_file,
        )


def _tuf_client(
    fetcher: Any,
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_dir: Path | None,
    target_base_url: str | None,
    command: str,
    root_file: Path | None,
) -> None:
    from homing.trust import conformance

    if command == "init":
        if root_file is None:
            _fail("init needs ROOT_FILE", 1)
        assert root_file is not None
        try:
            root = root_file.read_bytes()
        except OSError as e:
            _fail(f"cannot read {root_file}: {e.strerror}", 1)
        conformance.init_metadata_dir(metadata_dir, root)
        return
    if not metadata_url:
        _fail(f"{command} needs --metadata-url", 1)
    assert metadata_url is not None
    if command == "refresh":
        conformance.refresh_metadata(metadata_dir, metadata_url, fetcher)
        return
    if not target_names or target_dir is None or not target_base_url:
        _fail("download needs --target-name, --target-dir and --target-base-url", 1)
    assert target_dir is not None
    assert target_base_url is not None
    conformance.download_targets(
        metadata_dir, metadata_url, target_names, target_dir, target_base_url, fetcher
    )


@cli.command("recovery-bundle")
@_data_option
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option(
    "--image",
    "images",
    multiple=True,
    help="A firmware target devices should install from the bundle (repeatable).",
)
@click.option(
    "--valid-days",
    type=click.FloatRange(0, min_open=True),
    help="How long the bundle stays valid (default 30 days; at most until targets or root expire).",
)
def recovery_bundle(
    data: Path, out_file: Path, images: tuple[str, ...], valid_days: float | None
) -> None:
    """Write the metadata chain and the pin policy to one file, for devices reached by hand."""
    from homing import ceremonies

    _ensure_passphrase(data)
    summary = ceremonies.recovery_bundle(
        data,
        out_file,
        _now(),
        images=images,
        valid_for=timedelta(days=valid_days) if valid_days is not None else None,
        actor=_operator_actor(),
    )
    out.print(
        f"recovery bundle with {summary.files} files written to {out_file}; "
        f"valid until {summary.valid_until.isoformat()}",
        highlight=False,
        soft_wrap=True,
    )


@agent.command("apply-bundle")
@_state_option
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
def agent_apply_bundle(state_dir: Path, bundle: Path) -> None:
    """Verify and apply a recovery bundle: new roots and pins without any network."""
    from homing.agent.agent import Agent
    from homing.agent.bundle import apply_bundle
    from homing.agent.state import DeviceState

    for line in apply_bundle(Agent(DeviceState(state_dir)), bundle):
        out.print(line, highlight=False, soft_wrap=True)


@cli.command("release")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--version", "version", required=True, help="Firmware version (PEP 440).")
@click.option("--hardware", required=True, help="Hardware class the image is for.")
@click.option("--sequence", type=int, help="Anti-rollback sequence (default: newest + 1).")
@click.option("--notes", help="Release notes.")
@click.option("--downgrade", is_flag=True, help="Release a lower version on purpose.")
@click.option(
    "--offline-metadata",
    type=click.Path(path_type=Path, file_okay=False),
    help="Ceremony mode: a copy of the repository metadata to sign against.",
)
@click.option(
    "--release-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ceremony mode: the release key file.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Ceremony mode: where to write the signed role and image.",
)
@_data_option
@_db_option
def release_cmd(
    image: Path,
    version: str,
    hardware: str,
    sequence: int | None,
    notes: str | None,
    downgrade: bool,
    offline_metadata: Path | None,
    release_key: Path | None,
    out_dir: Path | None,
    data: Path,
    db_url: str | None,
) -> None:
    """Sign a firmware image into the firmware role (a TUF target) and record it.

    With --offline-metadata, --release-key and --out, sign on a machine off the
    network; the server then publishes it with `homing release-import`.
    """
    from homing.ceremonies.releases import release, sign_offline
    from homing.site import DataDir

    if offline_metadata or release_key or out_dir:
        if not (offline_metadata and release_key and out_dir):
            _fail("ceremony mode needs --offline-metadata, --release-key and --out", 2)
        assert offline_metadata
        assert release_key
        assert out_dir
        sign_offline(
            offline_metadata,
            image,
            version,
            hardware,
            release_key,
            out_dir,
            _now(),
            sequence=sequence,
            notes=notes,
            downgrade=downgrade,
        )
        out.print(
            f"signed firmware role written to {out_dir}: import it with "
            f"`homing release-import {out_dir}` on the server"
        )
        return
    _ensure_passphrase(data)
    rel = release(
        DataDir(data, db_url),
        image,
        version,
        hardware,
        _now(),
        sequence=sequence,
        notes=notes,
        downgrade=downgrade,
        actor=_operator_actor(),
    )
    out.print(f"released {rel.target} (version {rel.version}, sequence {rel.sequence})")


@cli.command("release-import")
@click.argument("signed", type=click.Path(path_type=Path, file_okay=False))
@_data_option
@_db_option
def release_import(signed: Path, data: Path, db_url: str | None) -> None:
    """Verify an offline-signed firmware role and publish it (ceremony mode)."""
    from homing.ceremonies.releases import import_signed
    from homing.site import DataDir

    _ensure_passphrase(data)
    rel = import_signed(DataDir(data, db_url), signed, _now(), actor=_operator_actor())
    out.print(f"imported {rel.target} (version {rel.version}, sequence {rel.sequence})")


@cli.group()
def rollout() -> None:
    """Staged rollouts of released images."""


def _stages(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"--stages must be comma-separated percentages, not {text!r}", 2)
        return []


@rollout.command("create")
@click.option("--version", "version", required=True)
@click.option("--hardware", required=True)
@click.option("--stages", default="1,10,50,100", show_default=True)
@click.option("--max-failure-ratio", type=float, default=0.1, show_default=True)
@click.option("--success-ratio", type=float, default=0.9, show_default=True)
@click.option("--soak-minutes", type=float, default=0.0, show_default=True)
@click.option(
    "--deadline-hours",
    type=float,
    default=24.0,
    show_default=True,
    help="A device in progress longer than this counts as stalled.",
)
@click.option("--group", help="Roll out to this named device group at once (no stages).")
@_data_option
@_db_option
def rollout_create(
    version: str,
    hardware: str,
    stages: str,
    max_failure_ratio: float,
    success_ratio: float,
    soak_minutes: float,
    deadline_hours: float,
    group: str | None,
    data: Path,
    db_url: str | None,
) -> None:
    """Start a staged rollout of a released version to a hardware class (or a group)."""
    from homing.operations import rollouts
    from homing.site import DataDir

    ro = rollouts.create(
        DataDir(data, db_url).database(),
        _operator_actor(),
        _now(),
        version,
        hardware,
        rollouts.RolloutPlan(
            stages=tuple(_stages(stages)),
            max_failure_ratio=max_failure_ratio,
            success_ratio=success_ratio,
            soak=timedelta(minutes=soak_minutes),
            deadline=timedelta(hours=deadline_hours),
            group=group,
        ),
    )
    where = f"group {group!r}" if group else f"{ro.percent}%"
    out.print(f"rollout {ro.id} of {ro.version} to {ro.hardware} started at {where}")


@rollout.command("pause")
@click.argument("rollout_id", type=int)
@_data_option
@_db_option
def rollout_pause(rollout_id: int, data: Path, db_url: str | None) -> None:
    """Stop handing out the image (devices already updating finish)."""
    _set_paused(rollout_id, data, db_url, paused=True)


@rollout.command("resume")
@click.argument("rollout_id", type=int)
@_data_option
@_db_option
def rollout_resume(rollout_id: int, data: Path, db_url: str | None) -> None:
    """Resume a paused or halted rollout."""
    _set_paused(rollout_id, data, db_url, paused=False)


def _set_paused(rollout_id: int, data: Path, db_url: str | None, *, paused: bool) -> None:
    from homing.operations import rollouts
    from homing.site import DataDir

    db = DataDir(data, db_url).database()
    rollouts.set_paused(db, _operator_actor(), _now(), rollout_id, paused)
    out.print(f"rollout {rollout_id} {'paused' if paused else 'resumed'}")


@rollout.command("status")
@click.argument("rollout_id", type=int)
@_data_option
@_db_option
def rollout_status(rollout_id: int, data: Path, db_url: str | None) -> None:
    """Progress of a rollout: stage, successes, failures with reasons, stalled devices."""
    import json as jsonlib

    from homing.operations import rollouts
    from homing.site import DataDir

    click.echo(
        jsonlib.dumps(
            rollouts.status(DataDir(data, db_url).database(), rollout_id, _now()),
            indent=2,
            default=str,
        )
    )


@rollout.command("list")
@_data_option
@_db_option
def rollout_list(data: Path, db_url: str | None) -> None:
    """Every rollout and its state."""
    from homing.site import DataDir
    from homing.store import firmware

    with DataDir(data, db_url).database().engine.connect() as conn:
        for ro in firmware.list_rollouts(conn):
            out.print(
                f"{ro.id}: {ro.version} -> {ro.hardware} {ro.status} at {ro.percent}%"
                + (f" ({ro.halt_reason})" if ro.halt_reason else "")
            )


@cli.command("demo")
def demo() -> None:
    """The story homing answers, on loopback in under a minute: nothing bricks."""
    from rich.table import Table

    from homing.fleet.demo import run_demo

    rows = run_demo(lambda line: out.print(f"- {line}", highlight=False, soft_wrap=True))
    table = Table(title="the fleet at the end")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    out.print(table)


@cli.command("simulate")
@click.option("--devices", type=click.IntRange(1, 10_000_000), help="Fleet size (default 100,000).")
@click.option("--years", type=click.FloatRange(0, 50, min_open=True), help="Simulated years.")
@click.option("--seed", type=int, help="Random seed: the same seed gives the same run.")
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    type=click.Choice(STRATEGY_NAMES),
    help="Strategy to compare (repeat; default: all).",
)
@click.option(
    "--scenario",
    "scenario_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Scenario TOML (docs/simulator.md); default: a realistic ten-year fleet.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("homing-simulation"),
    show_default=True,
    help="Where results.json and the plots go.",
)
def simulate_cmd(
    devices: int | None,
    years: float | None,
    seed: int | None,
    strategies: tuple[str, ...],
    scenario_file: Path | None,
    out_dir: Path,
) -> None:
    """Simulate a fleet over years and compare pinning strategies: who bricks, and why."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from homing.fleet.report import HEADERS, table_rows, write_outputs
    from homing.fleet.scenario import Scenario, load_scenario
    from homing.fleet.simulate import simulate

    scenario = load_scenario(scenario_file) if scenario_file else Scenario()
    overrides = {"devices": devices, "years": years, "seed": seed}
    scenario = scenario.with_fleet(**{k: v for k, v in overrides.items() if v is not None})
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("week {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("weeks", total=1)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        results = simulate(scenario, strategies or None, advance)
    written = write_outputs(results, out_dir)
    f = scenario.fleet
    table = Table(
        title=f"{scenario.name}: {f.devices:,} devices, {f.years:g} years, seed {f.seed}",
        title_justify="left",
    )
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in table_rows(results):
        table.add_row(*row)
    out.print(table)
    for result in results.strategies:
        out.print(f"{result.name}: {result.why}", highlight=False, soft_wrap=True, markup=False)
    if results.compromise_day is not None:
        out.print(
            f"stolen key on day {results.compromise_day:g}; homing's exposure is bounded by "
            f"the timestamp expiry ({results.timestamp_expiry_days:g} d)",
            highlight=False,
        )
    out.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)


def _guarded(entry: Callable[[], Any]) -> Callable[[], None]:
    @functools.wraps(entry)
    def run() -> None:
        try:
            entry()
        except HomingError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except OSError as e:
            _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))

    return run


def _run_cli() -> None:
    """click without its own error handling, so usage errors are one line like the rest."""
    try:
        code = cli.main(standalone_mode=False)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def main() -> None:
    """Console entry point."""
    _guarded(_run_cli)()


if __name__ == "__main__":
    main()
