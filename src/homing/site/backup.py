"""Backup and restore of a whole site: its database and its data directory, in one file.

The database is written logically (every table of ``homing.store.schema``,
one JSON line per row, read at one snapshot) rather than with a backend's
own dump tool, so one archive restores onto SQLite or PostgreSQL, whatever
it came from, and needs no server tool of a matching version. The data
directory's settings, PKI files, repository and key store (as encrypted as
it is) go beside it. A manifest names every file's SHA-256 and every
table's row count; restore checks all of them before it writes anything,
refuses a data directory or database that is not empty, and writes the
rows in one transaction.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, func, insert, select, text

from homing.errors import ConfigError
from homing.fsutil import atomic_write
from homing.site.datadir import DataDir
from homing.store.schema import metadata

__all__ = ["BackupSummary", "backup", "restore"]

SCHEMA = "homing.backup/1"
# What of the data directory is kept: the rest (run/, the SQLite file) is not.
SITE_PARTS = ("homing.json", "replica.json", "keys", "pki", "repository")
# Rows per insert on restore.
BATCH = 1000


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    tables: dict[str, int]
    files: int
    # When the backup was taken: a restore publishes past what came after it.
    taken_at: datetime | None = None


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "$b64" in value:
        return base64.b64decode(value["$b64"])
    if isinstance(value, dict) and "$dt" in value:
        return datetime.fromisoformat(value["$dt"])
    return value


def _site_files(dd: DataDir) -> list[Path]:
    found: list[Path] = []
    for part in SITE_PARTS:
        path = dd.root / part
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
    return found


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o600) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def backup(dd: DataDir, out: Path, now: datetime) -> BackupSummary:
    """Write the site's database and data directory to ``out`` (a .tar.gz), atomically."""
    if not dd.exists():
        raise ConfigError(f"no homing data directory at {dd.root}")
    if out.exists():
        raise ConfigError(f"{out} exists: refusing to overwrite a backup")
    db = dd.database()
    buffer = io.BytesIO()
    tables: dict[str, int] = {}
    digests: dict[str, str] = {}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        snapshot = db.engine.connect()
        if db.dialect == "postgresql":
            snapshot = snapshot.execution_options(isolation_level="REPEATABLE READ")
        with snapshot as conn, conn.begin():
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            for table in metadata.sorted_tables:
                lines = [
                    json.dumps({k: _encode(v) for k, v in row._mapping.items()})
                    for row in conn.execute(select(table))
                ]
                data = ("\n".join(lines) + "\n").encode() if lines else b""
                tables[table.name] = len(lines)
                digests[f"db/{table.name}.jsonl"] = hashlib.sha256(data).hexdigest()
                _add(tar, f"db/{table.name}.jsonl", data)
        for path in _site_files(dd):
            relative = f"site/{path.relative_to(dd.root).as_posix()}"
            data = path.read_bytes()
            digests[relative] = hashlib.sha256(data).hexdigest()
            _add(tar, relative, data, 0o600 if relative.startswith("site/keys/") else 0o644)
        manifest = {
            "schema": SCHEMA,
            "created_at": now.isoformat(),
            "revision": revision,
            "tables": tables,
            "files": digests,
        }
        _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    atomic_write(out, buffer.getvalue(), 0o600)
    return BackupSummary(out, tables, sum(1 for p in digests if p.startswith("site/")), now)


def _read_archive(archive: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or any(p in ("", ".", "..") for p in parts):
                    raise ConfigError(f"{archive} holds an unsafe entry {member.name!r}: refused")
                handle = tar.extractfile(member)
                assert handle is not None
                members[member.name] = handle.read()
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ConfigError(f"{archive} is not a readable homing backup: {e}") from e
    try:
        manifest = json.loads(members.pop("manifest.json"))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{archive} has no readable manifest: not a homing backup") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ConfigError(f"{archive} is not a homing backup ({SCHEMA})")
    files = manifest.get("files", {})
    if set(files) != set(members):
        raise ConfigError(f"{archive} does not hold exactly the files its manifest names")
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != files[name]:
            raise ConfigError(f"{archive}: {name} does not match its SHA-256: damaged")
    return manifest, members


def _empty(conn: Connection) -> bool:
    return all(
        conn.execute(select(func.count()).select_from(t)).scalar_one() == 0
        for t in metadata.sorted_tables
    )


def _advance_sequences(conn: Connection, table: Table) -> None:
    """PostgreSQL: a serial column's sequence continues after the restored rows."""
    for column in table.primary_key.columns:
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
        ).scalar()
        if sequence is None:
            continue
        highest = conn.execute(select(func.max(column))).scalar() or 0
        conn.execute(text("SELECT setval(:s, :v, false)"), {"s": sequence, "v": highest + 1})


def restore(archive: Path, dd: DataDir) -> BackupSummary:
    """Restore ``archive`` into an empty data directory and an empty database."""
    manifest, members = _read_archive(archive)
    if dd.exists() or (dd.root.exists() and any(dd.root.iterdir())):
        raise ConfigError(f"{dd.root} is not empty: restore into a new data directory")
    dd.root.mkdir(parents=True, exist_ok=True)
    db = dd.database()
    with db.engine.begin() as conn:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        if revision != manifest.get("revision"):
            raise ConfigError(
                f"the backup is of schema {manifest.get('revision')}, this homing's is {revision}"
            )
        if not _empty(conn):
            raise ConfigError("the database is not empty: restore into a new database")
        for table in metadata.sorted_tables:
            data = members.get(f"db/{table.name}.jsonl", b"")
            rows = [
                {k: _decode(v) for k, v in json.loads(line).items()}
                for line in data.decode().splitlines()
            ]
            if len(rows) != manifest["tables"].get(table.name, 0):
                raise ConfigError(f"{archive}: table {table.name} has the wrong row count")
            for start in range(0, len(rows), BATCH):
                conn.execute(insert(table), rows[start : start + BATCH])
            if db.dialect == "postgresql":
                _advance_sequences(conn, table)
    for name, data in members.items():
        if name.startswith("site/"):
            relative = name.removeprefix("site/")
            atomic_write(dd.root / relative, data, 0o600 if relative.startswith("keys/") else 0o644)
    summary_tables = {k: int(v) for k, v in manifest["tables"].items()}
    files = sum(1 for n in members if n.startswith("site/"))
    taken_at = manifest.get("created_at")
    return BackupSummary(
        archive,
        summary_tables,
        files,
        datetime.fromisoformat(taken_at) if isinstance(taken_at, str) else None,
    )
