"""The private PKI by hand: issue, revoke, CRLs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from homing.cli._base import (
    _data_option,
    _fail,
    _now,
    _operator_actor,
    _site,
    cli,
    out,
)

if TYPE_CHECKING:
    pass


@cli.group()
def pki() -> None:
    """Issue certificates from CSRs, revoke, and sign CRLs."""


@pki.command("issue")
@_data_option
@click.option(
    "--profile",
    type=click.Choice(["server", "device"]),
    required=True,
    help="What the certificate is for: a server name, or a device id.",
)
@click.option(
    "--csr",
    "csr_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The PKCS#10 request (PEM or DER).",
)
@click.option("--device-id", help="Device id the certificate is for (device profile).")
@click.option(
    "--out",
    "out_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the chain (PEM; default: standard output).",
)
def pki_issue(
    data: Path, profile: str, csr_path: Path, device_id: str | None, out_path: Path | None
) -> None:
    """Issue a certificate from a CSR (PEM or DER) under a profile."""
    from cryptography.hazmat.primitives import serialization

    from homing import ceremonies

    try:
        csr = csr_path.read_bytes()
    except OSError as e:
        _fail(f"cannot read {csr_path}: {e.strerror}")
    chain = ceremonies.issue_certificate(
        _site(data), csr, profile, _now(), device_id=device_id, actor=_operator_actor()
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
@click.option(
    "--reason", default="unspecified", show_default=True, help="Why (kept in the audit log)."
)
def pki_revoke(data: Path, device_id: str | None, serial: str | None, reason: str) -> None:
    """Revoke by device id or serial and re-sign the CRLs."""
    from homing import ceremonies

    number: int | None = None
    if serial is not None:
        try:
            number = int(serial.replace(":", ""), 16)
        except ValueError:
            _fail(f"serial {serial!r} is not hexadecimal", 2)
    count = ceremonies.revoke(
        _site(data),
        _now(),
        device_id=device_id,
        serial=number,
        reason=reason,
        actor=_operator_actor(),
    )
    out.print(f"revoked {count} certificate(s); CRLs re-signed")


@pki.command("crl")
@_data_option
@click.option(
    "--ca",
    "kind",
    type=click.Choice(["server", "device"]),
    required=True,
    help="Whose CRL to sign.",
)
def pki_crl(data: Path, kind: str) -> None:
    """Sign a fresh CRL for an issuing CA."""
    from homing import ceremonies

    path = ceremonies.write_crl(_site(data), kind, _now())
    out.print(f"CRL written to {path}")


@cli.group()
def keystore() -> None:
    """Where the site's keys are made: files, or a PKCS#11 token (an HSM, SoftHSM2)."""


@keystore.command("pkcs11")
@_data_option
@click.option(
    "--module", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="The token's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.",
)  # fmt: skip
@click.option("--token", required=True, help="The token's label.")
@click.option(
    "--key", "patterns", multiple=True, required=True,
    help="Names of keys made on the token from now on (repeat), e.g. 'timestamp-*'.",
)  # fmt: skip
def keystore_pkcs11(data: Path, module: Path, token: str, patterns: tuple[str, ...]) -> None:
    """Make new keys matching the patterns on a PKCS#11 token (PIN in HOMING_PKCS11_PIN)."""
    from homing.ceremonies.keystores import configure_pkcs11

    configure_pkcs11(
        _site(data), _now(), module=module, token=token, patterns=patterns,
        actor=_operator_actor(),
    )  # fmt: skip
    out.print(f"new keys matching {', '.join(patterns)} are made on token {token!r}")
    out.print("  they take over at the next rotation (rotate online-keys, rotate device-ca)")


@keystore.command("move-offline")
@_data_option
@click.option(
    "--to", "media", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="A directory on removable media for the offline keys.",
)  # fmt: skip
def keystore_move_offline(data: Path, media: Path) -> None:
    """Move the root CA, TUF root, targets and firmware keys off the server.

    They are re-encrypted with the key holder's own passphrase
    (HOMING_HOLDER_PASSPHRASE). Ceremonies then read them from the mounted
    media (HOMING_OFFLINE_KEYS=DIR), and `homing serve` refuses to start if
    any comes back into the server's key store.
    """
    import os

    from homing.ceremonies.custody import move_offline

    holder = os.environ.get("HOMING_HOLDER_PASSPHRASE")
    if not holder:
        _fail("set HOMING_HOLDER_PASSPHRASE: the offline keys' holder's own passphrase")
    assert holder is not None
    moved = move_offline(_site(data), _now(), media, holder.encode(), actor=_operator_actor())
    out.print(f"moved {', '.join(moved) or 'nothing'} to {media}; unmount it and keep it offline")
