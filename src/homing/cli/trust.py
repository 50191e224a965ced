"""Trust ceremonies: init, rotations, timestamp and targets re-signing, pins, recovery bundles."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from homing.cli._base import (
    _data_option,
    _ensure_passphrase,
    _fail,
    _forced,
    _guard_options,
    _now,
    _operator_actor,
    _passphrase,
    _paths,
    _site,
    cli,
    err,
    out,
)

if TYPE_CHECKING:
    from homing.ceremonies import InitSummary


@cli.command()
@_data_option
@click.option("--host", "hosts", multiple=True, help="Server host name or IP (repeatable).")
@click.option("--primary", help="Primary home server URL (default https://HOST:8443).")
@click.option("--mirror", "mirrors", multiple=True, help="Mirror URL (repeatable).")
@click.option(
    "--organization",
    default="homing",
    show_default=True,
    help="The O= of the site's CA certificates.",
)
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
    holders: list[bytes] | None = None
    if ceremony:
        _ensure_passphrase(None, required=True)
        holders = _holder_passphrases(root_keys)
    summary = ceremonies.init(
        data,
        _now(),
        hosts=hosts or ceremonies.DEFAULT_HOSTS,
        primary=primary,
        mirrors=mirrors,
        ceremony_root_keys=_paths(root_keys),
        threshold=threshold,
        organization=organization,
        passphrase=_passphrase(),
        holder_passphrases=holders,
    )
    _print_summary(summary)


def _holder_passphrases(root_keys: tuple[str, ...]) -> list[bytes] | None:
    """Each root key holder's own passphrase: HOMING_HOLDER_PASSPHRASE_<i>, or a prompt."""
    import os
    import sys

    given = [os.environ.get(f"HOMING_HOLDER_PASSPHRASE_{i}") for i in range(1, len(root_keys) + 1)]
    if all(given):
        return [g.encode("utf-8") for g in given if g]
    if sys.stdin.isatty():
        return [
            click.prompt(
                f"Passphrase for the holder of {path}", hide_input=True, confirmation_prompt=True
            ).encode("utf-8")
            for path in root_keys
        ]
    return None


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

    dd = _site(data)
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

    version = ceremonies.rotate_root(
        _site(data),
        _now(),
        sign_with=_paths(sign_with),
        new_keys=_paths(new_keys),
        threshold=threshold,
        actor=_operator_actor(),
    )
    out.print(f"published root version {version}")


@rotate.command("server-ca")
@_data_option
@_guard_options("rotation")
def rotate_server_ca(data: Path, live_within_days: float, force: bool, reason: str | None) -> None:
    """Promote the server CA's backup key, re-issue the server certificate, publish pins.

    Refused when a device seen within the live window holds pins that do not
    include the promoted key (it would lose its pinned path home), unless
    forced with a reason.
    """
    from homing import ceremonies

    forced = _forced(force, reason, "rotation")
    generation = ceremonies.rotate_issuing_ca(
        _site(data),
        "server",
        _now(),
        actor=_operator_actor(),
        live_within=timedelta(days=live_within_days),
        force_reason=forced,
    )
    _say_pins(data, f"server-issuing CA generation {generation} is active")


@rotate.command("endpoints")
@_data_option
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    help="A name (or IP) the server answers at, old and new during a move; repeat for each.",
)
@click.option("--primary", required=True, help="The URL devices dial, https://NAME:PORT.")
@click.option("--mirror", "mirrors", multiple=True, help="A metadata mirror URL; repeat for each.")
@_guard_options("move")
def rotate_endpoints(
    data: Path,
    hosts: tuple[str, ...],
    primary: str,
    mirrors: tuple[str, ...],
    live_within_days: float,
    force: bool,
    reason: str | None,
) -> None:
    """Move the home: publish new host names, primary and mirrors through the pin policy.

    First add the new names beside the old (the server's certificate covers
    both), later drop the old ones: refused while a live device still dials
    one, unless forced with a reason (docs/ceremonies.md, "Moving the home").
    """
    from homing.ceremonies.endpoints import move_home

    forced = _forced(force, reason, "move")
    moved = move_home(
        _site(data),
        _now(),
        hosts=list(hosts),
        primary=primary,
        mirrors=list(mirrors),
        actor=_operator_actor(),
        live_within=timedelta(days=live_within_days),
        force_reason=forced,
    )
    done = f"the home is at {moved.primary} (names: {', '.join(moved.hosts)})"
    if moved.dropped:
        done += f"; dropped {', '.join(moved.dropped)}"
    if moved.server_ca_generation is not None:
        done += f"; server CA generation {moved.server_ca_generation} covers the new names"
    _say_pins(data, done)


def _say_pins(data: Path, done: str) -> None:
    from homing.ceremonies.pin_publication import pins_pending

    if pins_pending(_site(data)):
        out.print(f"{done}; the targets key is with its holders: publish the new pins with")
        out.print(
            f"  homing ceremony propose-targets --data {data} --out PROPOSAL (then sign, publish)"
        )
    else:
        out.print(f"{done}; new pins published")


@rotate.command("firmware-key")
@_data_option
def rotate_firmware_key(data: Path) -> None:
    """A new firmware release key, delegated in place of the old one, which is deleted.

    Needs the targets key (mounted media in production) and makes the new
    firmware key where the old one was kept.
    """
    from homing import ceremonies

    generation = ceremonies.rotate_firmware_key(_site(data), _now(), actor=_operator_actor())
    out.print(f"firmware key generation {generation} delegated; the previous key is retired")


@rotate.command("root-ca")
@_data_option
def rotate_root_ca(data: Path) -> None:
    """A new X.509 root CA beside the old one; the issuing CAs are certified by both."""
    from homing import ceremonies

    generation = ceremonies.rotate_root_ca(_site(data), _now(), actor=_operator_actor())
    _say_pins(data, f"root CA generation {generation} is active")


@rotate.command("device-ca")
@_data_option
@click.option(
    "--compromised",
    is_flag=True,
    help="The old key was stolen: distrust its certificates now; devices recover by key proof.",
)
def rotate_device_ca(data: Path, compromised: bool) -> None:
    """Promote the device CA's backup key; devices of the old CA keep working.

    With --compromised they do not: the server answers their certificates
    'certificate_distrusted' and each device proves its registered key to get
    one from the new CA at its next contact.
    """
    from homing import ceremonies

    generation = ceremonies.rotate_issuing_ca(
        _site(data), "device", _now(), actor=_operator_actor(), compromised=compromised
    )
    out.print(f"device-issuing CA generation {generation} is active")
    if compromised:
        out.print(
            "  the old device CA is distrusted: its devices recover by key proof at their "
            "next contact (each recovery is in the audit log)"
        )


@rotate.command("server-cert")
@_data_option
def rotate_server_cert(data: Path) -> None:
    """Issue the server a new key and certificate from the active server CA."""
    from homing import ceremonies

    leaf = ceremonies.rotate_server_cert(_site(data), _now(), actor=_operator_actor())
    out.print(
        f"new server certificate {leaf.serial_number:x}, valid until "
        f"{leaf.not_valid_after_utc.isoformat()}"
    )


@rotate.command("session-tickets")
@_data_option
def rotate_session_tickets(data: Path) -> None:
    """Replace the TLS session-ticket secret: every session sealed with the old one ends."""
    from homing import ceremonies

    ceremonies.rotate_session_tickets(_site(data), _now(), actor=_operator_actor())
    out.print(
        "session-ticket secret replaced: each server process takes it up within its reload "
        "interval; copy DATA/keys/session-tickets.secret to replicas on other hosts"
    )


@rotate.command("online-keys")
@_data_option
@_sign_with
def rotate_online_keys(data: Path, sign_with: tuple[str, ...]) -> None:
    """Replace the snapshot and timestamp keys in a new root version."""
    from homing import ceremonies

    version = ceremonies.rotate_online_keys(
        _site(data), _now(), sign_with=_paths(sign_with), actor=_operator_actor()
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

    delta = timedelta(hours=expires_in) if expires_in is not None else None
    version = ceremonies.refresh_timestamp(_site(data), _now(), delta, actor=_operator_actor())
    out.print(f"timestamp version {version} published")


@cli.group()
def targets() -> None:
    """The offline targets role (the pin policy lives in it)."""


@targets.command("refresh")
@_data_option
def targets_refresh(data: Path) -> None:
    """Re-sign targets with the current pins before they expire (yearly: they live two years)."""
    from homing import ceremonies

    version = ceremonies.refresh_targets(_site(data), _now(), actor=_operator_actor())
    out.print(f"targets version {version} published")


@cli.group()
def pins() -> None:
    """The pin policy devices receive."""


@pins.command("show")
@_data_option
def pins_show(data: Path) -> None:
    """Print the published pin policy (JSON)."""

    dd = _site(data)
    repo = dd.repository(dd.settings())
    click.echo(repo.target_bytes("pins.json").decode(), nl=False)


@cli.command("recovery-bundle")
@_data_option
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The bundle file to write (carry it to the device).",
)
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

    summary = ceremonies.recovery_bundle(
        _site(data),
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
