"""The home's own clock: whether the server may sign now, and an operator's confirmation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from homing.cli._base import _data_option, _db_option, _fail, _now, _operator_actor, _site, cli, out

if TYPE_CHECKING:  # the database layer loads with the commands that use it
    from homing.store import Database


def _database(data: Path, db_url: str | None) -> Database:
    """The site's database, after saying plainly if DATA is no data directory at all."""
    site = _site(data, db_url, shared_change=False)
    site.settings()
    return site.database()


@cli.group()
def clock() -> None:
    """The home server signs only at a believable time (docs/deployment.md)."""


@clock.command("status")
@_data_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
def clock_status(data: Path, db_url: str | None, as_json: bool) -> None:
    """This host's time, the last signing, and whether the guard would refuse to sign."""
    from homing.operations.clock import clock_status as status

    report = status(_database(data, db_url), _now())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    out.print(f"now: {report['now']}", highlight=False)
    out.print(f"last signing: {report['last_signing'] or 'never'}", highlight=False)
    if report["doubt"]:
        _fail(f"the server signs nothing: {report['doubt']}")
    out.print("the server may sign at this time")


@clock.command("confirm")
@click.option("--reason", required=True, help="Why this time is right (kept in the audit log).")
@_data_option
@_db_option
def clock_confirm(reason: str, data: Path, db_url: str | None) -> None:
    """Confirm that this host's clock is right now: the server signs again from this time.

    Check the time against a source you trust first (the guard stopped
    signing because the clock moved back, stood still for a month, or
    disagrees with the database server's).
    """
    from homing.operations.clock import confirm_clock

    overridden = confirm_clock(_database(data, db_url), _operator_actor(), _now(), reason)
    if overridden:
        out.print(f"confirmed; it overrides: {overridden}", highlight=False)
    else:
        out.print("confirmed (the guard had no doubt)")
