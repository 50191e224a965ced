"""The home's MQTT brokers: name them for devices, keep their certificates and CRLs current."""

from __future__ import annotations

from pathlib import Path

import click

from homing.cli._base import (
    _data_option,
    _db_option,
    _fail,
    _now,
    _operator_actor,
    _site,
    cli,
    out,
)


@cli.group()
def broker() -> None:
    """MQTT brokers devices reach with homing's trust (docs/device-apps.md, "MQTT")."""


@broker.command("set")
@_data_option
@_db_option
@click.argument("urls", nargs=-1)
@click.option("--none", "clear", is_flag=True, help="Name no broker (devices are told so).")
def broker_set(data: Path, db_url: str | None, urls: tuple[str, ...], clear: bool) -> None:
    """Name the site's MQTT brokers (mqtts://HOST:PORT, HOST one of the site's hosts) and
    publish them to devices with the pins."""
    from homing.ceremonies.brokers import set_brokers

    if bool(urls) == clear:
        _fail("name one or more brokers (mqtts://HOST:PORT), or --none", 2)
    version = set_brokers(_site(data, db_url), list(urls), _now(), actor=_operator_actor())
    named = ", ".join(urls) or "no broker"
    if version is None:
        out.print(
            f"{named} saved; the targets key is with its holders: publish with "
            "`homing ceremony propose-targets`, their signatures, then `homing ceremony publish`"
        )
    else:
        out.print(f"{named} published to devices (targets v{version})")


@broker.command("export")
@_data_option
@_db_option
@click.option("--host", required=True, help="The broker's host name, one of the site's hosts.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the broker reads its files: DIR/current/ (see docs/device-apps.md).",
)
@click.option(
    "--hook",
    help="A command run when the files changed, e.g. 'systemctl reload mosquitto' "
    "({trust_dir} becomes DIR/current).",
)
def broker_export(
    data: Path, db_url: str | None, host: str, directory: Path, hook: str | None
) -> None:
    """Write or renew the broker's certificate, key, device CAs and device CRLs (run it
    from a timer: it writes only what is due, then runs the hook)."""
    from homing.ceremonies.brokers import export_broker
    from homing.hooks import check_hook, run_hook
    from homing.operations.clock import clock_doubt

    if hook is not None:
        check_hook(hook)
    site, now = _site(data, db_url), _now()
    # It issues a certificate and signs CRLs: only at a time the home believes.
    doubt = clock_doubt(site.database(), now)
    if doubt is not None:
        _fail(f"signing nothing: {doubt}")
    done = export_broker(site, host, directory, now, actor=_operator_actor())
    for name in done.without_crl:
        out.print(f"warning: this site lacks the key of device CA {name}: no CRL for it")
    if not done.changed:
        out.print(f"{done.current} is current")
        return
    what = f"certificate serial {done.issued.serial_number:x}, " if done.issued else ""
    out.print(f"{done.current} updated ({what}CRLs of {done.crl_authorities} device CAs)")
    if hook is not None and not run_hook(hook, done.current):
        _fail(f"the files are in place, but the hook {hook!r} failed (see the log above)")
