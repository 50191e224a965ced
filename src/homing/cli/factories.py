"""Bounding a factory station: its manifest, its quota and expiry, and blocked ids."""

from __future__ import annotations

from pathlib import Path

import click

from homing.cli._base import _data_option, _db_option, _now, _operator_actor, _site, out
from homing.cli.operators import _instant, factory


@factory.command("manifest")
@click.argument("name")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_data_option
@_db_option
def factory_manifest(name: str, manifest: Path, data: Path, db_url: str | None) -> None:
    """Limit a station to the device ids of MANIFEST (one a line, optionally with the
    SHA-256 hex of the DER public key each must enroll with)."""
    from homing.operations import allowlists

    entries = allowlists.parse_manifest(manifest)
    db = _site(data, db_url).database()
    added = allowlists.add_manifest(db, _operator_actor(), _now(), name, entries)
    out.print(f"factory station {name!r} may enroll {added} more listed device id(s), nothing else")


@factory.command("limit")
@click.argument("name")
@click.option("--quota", type=int, help="Devices the station may enroll in all.")
@click.option("--expires", help="Nothing from this time on (ISO 8601).")
@_data_option
@_db_option
def factory_limit(
    name: str, quota: int | None, expires: str | None, data: Path, db_url: str | None
) -> None:
    """Bound a station by a quota and an expiry (either left out: unbounded)."""
    from homing.operations import allowlists

    until = _instant(expires, "--expires")
    db = _site(data, db_url).database()
    allowlists.set_station_limits(db, _operator_actor(), _now(), name, quota, until)
    bounds = [f"quota {quota}" if quota is not None else "no quota"]
    bounds.append(f"until {until.isoformat()}" if until else "no expiry")
    out.print(f"factory station {name!r}: {', '.join(bounds)}")


@factory.command("block")
@click.argument("device_id")
@click.option(
    "--reason", default="unspecified", show_default=True, help="Why (kept in the audit log)."
)
@_data_option
@_db_option
def factory_block(device_id: str, reason: str, data: Path, db_url: str | None) -> None:
    """No station may enroll DEVICE_ID (a unit lost or stolen before it was enrolled)."""
    from homing.operations import allowlists

    db = _site(data, db_url).database()
    allowlists.block_device_id(db, _operator_actor(), _now(), device_id, reason)
    out.print(f"device id {device_id!r} blocked: no station may enroll it")


@factory.command("add-manufacturer")
@click.argument("name")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="PEM file of the manufacturer's CA certificates (issuing CAs and their roots).",
)
@click.option(
    "--crl",
    "crl_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The manufacturer's CRLs (PEM, or one DER CRL).",
)
@click.option(
    "--id-from",
    type=click.Choice(["serial-number", "uri", "common-name"]),
    default="serial-number",
    show_default=True,
    help="Where an IDevID names its device id: the subject's serialNumber (802.1AR), "
    "a urn:homing:device URI SAN, or the subject's CN.",
)
@_data_option
@_db_option
def factory_add_manufacturer(
    name: str,
    ca_file: Path,
    crl_file: Path | None,
    id_from: str,
    data: Path,
    db_url: str | None,
) -> None:
    """Let devices enroll by their manufacturer certificate (IDevID) over EST with mutual TLS.

    NAME then acts as a factory station: manifests, quotas, expiries,
    `factory disable` and `revoke-batch --station` apply to it.
    """
    from homing.operations import manufacturers

    db = _site(data, db_url).database()
    crl = crl_file.read_bytes() if crl_file else None
    count = manufacturers.add_manufacturer(
        db, _operator_actor(), _now(), name, ca_file.read_bytes(), crl, id_from
    )
    out.print(
        f"manufacturer {name!r}: {count} CA certificate(s) imported"
        + (" with CRLs" if crl is not None else ", no CRL")
        + f"; devices enroll by IDevID, id from its {id_from}"
    )


@factory.command("update-crl")
@click.argument("name")
@click.argument("crl_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_data_option
@_db_option
def factory_update_crl(name: str, crl_file: Path, data: Path, db_url: str | None) -> None:
    """Replace a manufacturer's CRLs with the ones in CRL_FILE."""
    from homing.operations import manufacturers

    db = _site(data, db_url).database()
    revoked = manufacturers.update_crls(db, _operator_actor(), _now(), name, crl_file.read_bytes())
    out.print(f"manufacturer {name!r}: CRLs replaced; they revoke {revoked} certificate(s)")
