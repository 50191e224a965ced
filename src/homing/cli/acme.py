"""The server's certificate from a public CA over ACME: setup, issue, roots, mode."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from homing.cli._base import (
    _data_option,
    _fail,
    _forced,
    _guard_options,
    _now,
    _operator_actor,
    _site,
    cli,
    out,
)


@cli.group()
def acme() -> None:
    """A public-CA server certificate over ACME (RFC 8555), pinned by the server's keys."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        _fail(f"cannot read {what} {path}: {e.strerror}")
        raise AssertionError from e  # _fail exits


@acme.command("setup")
@_data_option
@click.option("--directory", required=True, help="The ACME directory URL (https://).")
@click.option(
    "--public-roots",
    "roots_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="PEM file of the public root CAs devices may accept.",
)
@click.option(
    "--identifier",
    "identifiers",
    multiple=True,
    help="Name or IP to certify (repeatable; default: the server's hosts).",
)
@click.option("--email", help="Contact address for the ACME account.")
@click.option(
    "--directory-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle to trust the ACME server's own HTTPS by (default: the system's).",
)
@click.option("--http-port", type=int, default=80, show_default=True, help="HTTP-01 port.")
@click.option("--http-host", default="", help="Address to answer HTTP-01 on (default: all).")
def acme_setup(
    data: Path,
    directory: str,
    roots_file: Path,
    identifiers: tuple[str, ...],
    email: str | None,
    directory_ca: Path | None,
    http_port: int,
    http_host: str,
) -> None:
    """Make the server's public keys and publish pins that accept them (nothing served changes)."""
    from homing.ceremonies.acme import acme_setup as setup

    version = setup(
        _site(data),
        _now(),
        directory=directory,
        public_roots_pem=_read(roots_file, "public roots"),
        identifiers=identifiers,
        email=email,
        directory_ca=directory_ca,
        http_host=http_host,
        http_port=http_port,
        actor=_operator_actor(),
    )
    out.print(f"ACME set up; pins for the public chain published in targets v{version}")
    out.print(f"  next: homing acme issue --data {data}")


@acme.command("issue")
@_data_option
@click.option(
    "--rotate-key",
    is_flag=True,
    help="Promote the pinned backup key, order for it, and publish a fresh backup.",
)
def acme_issue(data: Path, rotate_key: bool) -> None:
    """Order the server's certificate from the ACME CA and serve it (renewal: same key)."""
    from homing.ceremonies.acme import acme_issue as issue

    leaf = issue(_site(data), _now(), rotate_key=rotate_key, actor=_operator_actor())
    out.print(
        f"serving ACME certificate {leaf.serial_number:x}, valid until "
        f"{leaf.not_valid_after_utc.isoformat()}"
    )


@acme.command("roots")
@_data_option
@click.argument("roots_file", type=click.Path(path_type=Path, dir_okay=False))
def acme_roots(data: Path, roots_file: Path) -> None:
    """Replace the public roots devices accept (refused if the served chain would fail)."""
    from homing.ceremonies.acme import set_public_roots

    version = set_public_roots(
        _site(data), _now(), _read(roots_file, "public roots"), actor=_operator_actor()
    )
    out.print(f"public roots published in targets v{version}")


@acme.command("mode")
@_data_option
@click.argument("mode", type=click.Choice(["private", "mixed", "public"]))
@_guard_options("switch")
def acme_mode(
    data: Path, mode: str, live_within_days: float, force: bool, reason: str | None
) -> None:
    """Which server certificates devices accept: private CA, public CA, or both.

    Refused when a device seen within the live window does not hold the pin
    of the key that serves after the switch, unless forced with a reason.
    """
    from homing.ceremonies.acme import set_tls_mode

    forced = _forced(force, reason, "switch")
    version = set_tls_mode(
        _site(data),
        _now(),
        mode,
        actor=_operator_actor(),
        live_within=timedelta(days=live_within_days),
        force_reason=forced,
    )
    out.print(f"devices accept the {mode} server certificate(s) from targets v{version}")
