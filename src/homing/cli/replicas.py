"""Several hosts: the shared site, replicas, online keys for them, backup and restore."""

from __future__ import annotations

from pathlib import Path

import click

from homing.cli._base import (
    _data_option,
    _db_option,
    _now,
    _operator_actor,
    _passphrase,
    _site,
    cli,
    err,
    out,
)
from homing.cli.pki import keystore


def _database_url(db_url: str | None) -> str:
    import os

    from homing.errors import ConfigError

    url = db_url or os.environ.get("HOMING_DB")
    if not url:
        raise ConfigError("a shared site lives in PostgreSQL: give --db or set HOMING_DB")
    return url


_keys_option = click.option(
    "--keys", "keys", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="The online keys from `homing keystore export-online`.",
)  # fmt: skip


@cli.group()
def site() -> None:
    """The site every replica serves, shared through PostgreSQL."""


@site.command("publish")
@_data_option
@_db_option
def site_publish(data: Path, db_url: str | None) -> None:
    """Publish this data directory's changes (the first time: make it the shared site)."""
    from homing.site import shared

    dd = _site(data, _database_url(db_url), shared_change=False)
    with shared.site_change(dd.database()):
        if shared.is_shared(dd.database()):
            shared.pull(dd, exact=True)
        generation = shared.publish(dd, _now(), _operator_actor())
    out.print(f"published generation {generation}" if generation else "nothing to publish")


@site.command("status")
@_data_option
@_db_option
def site_status(data: Path, db_url: str | None) -> None:
    """The published generation, this host's, and which replica signs."""
    from homing.server.signer import current_signer
    from homing.site import shared

    dd = _site(data, _database_url(db_url), shared_change=False)
    dd.settings()  # a clear error when DATA is not a data directory
    db = dd.database()
    with db.engine.connect() as conn:
        published = shared.published_generation(conn)
    if published is None:
        out.print("not shared: this database holds no published site")
        return
    manifest = shared.Manifest.load(dd)
    out.print(f"site {published[0][:16]}  published generation {published[1]}")
    out.print(f"this host: generation {manifest.generation if manifest else 'never synced'}")
    out.print(f"signer: {current_signer(db) or 'none (no replica holds the lease)'}")


@cli.group()
def replica() -> None:
    """Hosts that serve the shared site."""


@replica.command("join")
@_data_option
@_db_option
@_keys_option
@click.option("--name", required=True, help="This replica's name (its logs and the lease).")
@click.option(
    "--host", "hosts", multiple=True, required=True,
    help="This replica's own DNS name (repeat), under one of the site's names.",
)  # fmt: skip
def replica_join(
    data: Path, db_url: str | None, keys: Path, name: str, hosts: tuple[str, ...]
) -> None:
    """Make DATA a new replica: the site's files, its online keys, its own certificate."""
    from homing.ceremonies.replicas import join_replica

    dd = join_replica(
        data, _database_url(db_url), keys, name, list(hosts), _now(), passphrase=_passphrase()
    )
    dd.close()
    out.print(f"replica {name} ready in {data}: run `homing serve --data {data} --db ...`")


@replica.command("import-keys")
@_data_option
@_keys_option
def replica_import_keys(data: Path, keys: Path) -> None:
    """Take the online keys this replica lacks (after a rotation made new ones elsewhere)."""
    from homing.ceremonies.replicas import import_online_keys, missing_online_keys

    dd = _site(data, shared_change=False)
    done = import_online_keys(dd, keys)
    out.print(f"imported {', '.join(done.copied) or 'nothing new'}")
    if done.removed:
        out.print(f"destroyed retired keys: {', '.join(done.removed)}")
    still = missing_online_keys(dd)
    if still:
        out.print(f"still missing: {', '.join(still)}")


@keystore.command("export-online")
@_data_option
@click.option(
    "--to", "to", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="A directory to carry to a new replica (the keys stay encrypted).",
)  # fmt: skip
def keystore_export_online(data: Path, to: Path) -> None:
    """Copy the online keys (never the offline ones, never this host's TLS key) for a replica."""
    from homing.ceremonies.replicas import export_online_keys

    done = export_online_keys(_site(data, shared_change=False), to)
    out.print(f"exported {', '.join(done.copied) or 'nothing new'} to {to}")
    if done.removed:
        out.print(f"removed from {to} (destroyed on this host): {', '.join(done.removed)}")


@cli.command("backup")
@_data_option
@_db_option
@click.option(
    "--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="The backup file to write (.tar.gz).",
)  # fmt: skip
def backup_command(data: Path, db_url: str | None, out_path: Path) -> None:
    """Back up the database and the data directory into one file."""
    from homing.site.backup import backup

    summary = backup(_site(data, db_url, shared_change=False), out_path, _now())
    rows = sum(summary.tables.values())
    out.print(f"backed up {rows} rows and {summary.files} files to {summary.path}")


@cli.command("restore")
@_data_option
@_db_option
@click.option(
    "--from", "archive", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True, help="A file written by `homing backup`.",
)  # fmt: skip
def restore_command(data: Path, db_url: str | None, archive: Path) -> None:
    """Restore a backup into a new data directory and an empty database.

    Then re-signs the metadata at versions past anything a device may hold
    (devices checked in after the backup was taken), so none is stranded.
    """
    import os
    from datetime import UTC, datetime

    from homing.ceremonies.restoration import publish_past_restore
    from homing.site import DataDir
    from homing.site.backup import restore

    dd = DataDir(data, db_url or os.environ.get("HOMING_DB"), passphrase=_passphrase())
    try:
        summary = restore(archive, dd)
        rows = sum(summary.tables.values())
        out.print(f"restored {rows} rows and {summary.files} files into {data}")
        # A manifest without its time is treated as the oldest possible backup.
        taken_at = summary.taken_at or datetime.fromtimestamp(0, UTC)
        moved = publish_past_restore(dd, _now(), taken_at, actor=_operator_actor())
    finally:
        dd.close()
    versions = ", ".join(f"{role} v{v}" for role, v in sorted(moved.published.items()))
    out.print(
        f"published {versions}: past the versions devices reported "
        f"({', '.join(f'{r} v{v}' for r, v in moved.reported.items())}) and a margin "
        f"for what the site published after the backup; the next release's sequence "
        f"number is above {moved.release_sequence_floor}"
    )
    for warning in moved.warnings:
        err.print(f"warning: {warning}", highlight=False)
