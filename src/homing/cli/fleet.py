"""The fleet: provisioning at the factory, device groups, firmware releases and rollouts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    pass

from homing.cli.operators import devices


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

    state = provision(
        _site(data, db_url),
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
    from homing.operations import rollouts

    db = _site(data, db_url).database()
    rollouts.set_group(db, _operator_actor(), _now(), name, list(device_ids))
    out.print(f"group {name!r}: {len(device_ids)} device(s)")


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
    rel = release(
        _site(data, db_url),
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

    rel = import_signed(_site(data, db_url), signed, _now(), actor=_operator_actor())
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
@click.option("--version", "version", required=True, help="The released version to roll out.")
@click.option("--hardware", required=True, help="The hardware class it is for.")
@click.option(
    "--stages",
    default="1,10,50,100",
    show_default=True,
    help="Increasing percentages of the class; a device is in a stage by a fixed hash of "
    "its id, and every stage holds at least one device and its share rounded up, so a "
    "small fleet's first stage is one device (--group reaches named devices at once).",
)
@click.option(
    "--max-failure-ratio",
    type=float,
    default=0.1,
    show_default=True,
    help="Halt when this share of a stage's devices failed or rolled back.",
)
@click.option(
    "--success-ratio",
    type=float,
    default=0.9,
    show_default=True,
    help="Advance when this share of a stage's devices committed.",
)
@click.option(
    "--soak-minutes",
    type=float,
    default=0.0,
    show_default=True,
    help="Wait this long at a stage after it succeeded before advancing.",
)
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

    ro = rollouts.create(
        _site(data, db_url).database(),
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
    db = _site(data, db_url).database()
    counts = rollouts.status(db, ro.id, _now())["stage_progress"]
    out.print(
        f"rollout {ro.id} of {ro.version} to {ro.hardware} started: "
        + rollouts.stage_summary(ro, counts),
        soft_wrap=True,  # one line per rollout, for a reader's grep as much as their eye
    )


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

    db = _site(data, db_url).database()
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

    click.echo(
        jsonlib.dumps(
            rollouts.status(_site(data, db_url).database(), rollout_id, _now()),
            indent=2,
            default=str,
        )
    )


@rollout.command("list")
@_data_option
@_db_option
def rollout_list(data: Path, db_url: str | None) -> None:
    """Every rollout and its state."""
    from homing.operations import rollouts

    for ro, counts in rollouts.list_with_stages(_site(data, db_url).database(), _now()):
        where = "every device" if counts is None else rollouts.stage_summary(ro, counts)
        out.print(
            f"{ro.id}: {ro.version} -> {ro.hardware} {ro.status}, {where}"
            + (f" ({ro.halt_reason})" if ro.halt_reason else ""),
            soft_wrap=True,
        )
