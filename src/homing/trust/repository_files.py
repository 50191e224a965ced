"""A TUF repository's files: read, written (each checked before it reaches the disk), pruned.

The mechanics under homing.trust.repository, whose ceremonies-level
operations (create, publish, rotate, import) build on these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from homing.config import Expiries
from homing.errors import CeremonyError, ConfigError
from homing.fsutil import atomic_write

__all__ = [
    "FIRMWARE_PATHS",
    "FIRMWARE_ROLE",
    "KEEP_VERSIONS",
    "RepositoryFiles",
    "RoleKeys",
    "fnmatch_path",
]

FIRMWARE_ROLE = "firmware"
# Versions of snapshot, targets and the firmware role kept on disk by ``prune``.
KEEP_VERSIONS = 16
FIRMWARE_PATHS = ["firmware/*"]
SPEC_VERSION = "1.0.31"
_ROOT_FILE = re.compile(r"^(\d+)\.root\.json$")

R = TypeVar("R", Root, Targets, Snapshot, Timestamp)

_SERIALIZER = JSONSerializer(compact=False)


class RoleKeys:
    """The public keys of each role when a repository is created."""

    def __init__(
        self,
        root: Sequence[Key],
        root_threshold: int,
        targets: Key,
        firmware: Key,
        snapshot: Key,
        timestamp: Key,
    ) -> None:
        if not 1 <= root_threshold <= len(root):
            raise CeremonyError(
                f"root threshold {root_threshold} must be between 1 and the {len(root)} root keys"
            )
        if len({k.keyid for k in root}) != len(root):
            raise CeremonyError("root keys must be distinct")
        self.root = list(root)
        self.root_threshold = root_threshold
        self.targets = targets
        self.firmware = firmware
        self.snapshot = snapshot
        self.timestamp = timestamp


class RepositoryFiles:
    """A TUF repository's files: reading them, writing them checked, pruning old ones."""

    def __init__(self, directory: Path, expiries: Expiries | None = None) -> None:
        self.directory = directory
        self.metadata_dir = directory / "metadata"
        self.targets_dir = directory / "targets"
        self.expiries = expiries or Expiries()
        if not self.metadata_dir.is_dir():
            raise ConfigError(f"no trust repository at {directory}")

    # -- reading ---------------------------------------------------------

    def root_version(self) -> int:
        versions = [
            int(m.group(1)) for p in self.metadata_dir.iterdir() if (m := _ROOT_FILE.match(p.name))
        ]
        if not versions:
            raise ConfigError(f"no root metadata in {self.metadata_dir}")
        return max(versions)

    def root(self, version: int | None = None) -> Metadata[Root]:
        version = version or self.root_version()
        return self._read(f"{version}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._read("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._read(f"{version}.snapshot.json", Snapshot)

    def targets(self, role: str = Targets.type) -> Metadata[Targets]:
        version = self.snapshot().signed.meta[f"{role}.json"].version
        return self._read(f"{version}.{role}.json", Targets)

    def target_bytes(self, name: str, role: str = Targets.type) -> bytes:
        info = self.targets(role).signed.targets.get(name)
        if info is None:
            raise ConfigError(f"no target {name!r} in role {role!r}")
        return self._target_path(info).read_bytes()

    def _read(self, filename: str, kind: type[R]) -> Metadata[R]:
        path = self.metadata_dir / filename
        try:
            md = Metadata[Any].from_bytes(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        except Exception as e:
            raise ConfigError(f"metadata {path} is damaged: {e}") from e
        if not isinstance(md.signed, kind):
            raise ConfigError(f"{path} is not {kind.type} metadata")
        return md

    # -- writing ---------------------------------------------------------

    def _publish_role(
        self,
        role: str,
        md: Metadata[Targets],
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Write a checked targets-type role, then a snapshot and timestamp that name it."""
        self._write(f"{md.signed.version}.{role}.json", md)
        meta = {k: v.version for k, v in self.snapshot().signed.meta.items()}
        meta[f"{role}.json"] = md.signed.version
        self._publish_snapshot(meta, snapshot_signer, timestamp_signer, now, self.root())
        return md.signed.version

    def prune(self, keep: int = KEEP_VERSIONS) -> int:
        """Delete old versions of snapshot, targets and the firmware role, and unnamed images.

        A TUF client only ever fetches the versions the newest timestamp and
        snapshot name (spec 5.5-5.6), so older consistent-snapshot files serve
        no one; ``keep`` of each are kept for a client between its timestamp
        and its snapshot fetch. Every root version stays (the chain walk needs
        them all), and so does every pin policy (devices report the one they
        hold by its hash). An image leaves the disk once no kept firmware
        version names it. Returns how many files were deleted.
        """
        if keep < 1:
            raise ValueError("keep at least one version")
        deleted = 0
        kept_firmware: list[int] = []
        firmware_dropped = False
        for role in (Snapshot.type, Targets.type, FIRMWARE_ROLE):
            versions = sorted(
                int(path.name.split(".", 1)[0])
                for path in self.metadata_dir.glob(f"*.{role}.json")
                if path.name.split(".", 1)[0].isdigit()
            )
            for version in versions[:-keep]:
                (self.metadata_dir / f"{version}.{role}.json").unlink(missing_ok=True)
                deleted += 1
            if role == FIRMWARE_ROLE:
                kept_firmware, firmware_dropped = versions[-keep:], len(versions) > keep
        # An image can only lose its last naming version when one was dropped:
        # otherwise the (regular) maintenance pass reads no firmware metadata.
        images = self.targets_dir / "firmware"
        if firmware_dropped and images.is_dir():
            named: set[str] = set()
            for version in kept_firmware:
                md = self._read(f"{version}.{FIRMWARE_ROLE}.json", Targets)
                named |= {self._target_path(i).name for i in md.signed.targets.values()}
            for path in images.iterdir():
                if path.is_file() and path.name not in named:
                    path.unlink()
                    deleted += 1
        return deleted

    @staticmethod
    def serialize(md: Metadata[Any]) -> bytes:
        """Metadata bytes exactly as this repository writes them."""
        return md.to_bytes(_SERIALIZER)

    def _publish_snapshot(
        self,
        meta: Mapping[str, int],
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
        root: Metadata[Root],
        *,
        snapshot_version: int | None = None,
        timestamp_version: int | None = None,
    ) -> int:
        if snapshot_version is None:
            snapshot_version = self.snapshot().signed.version + 1
        snapshot = Metadata(
            Snapshot(
                version=snapshot_version,
                expires=now + self.expiries.snapshot,
                meta={name: MetaFile(version=v) for name, v in sorted(meta.items())},
            )
        )
        snapshot.signed.spec_version = SPEC_VERSION
        _sign(snapshot, [snapshot_signer])
        _check(root, Snapshot.type, snapshot, "snapshot")
        self._write(f"{snapshot_version}.snapshot.json", snapshot)
        if timestamp_version is not None:
            ts_version = timestamp_version
        else:
            try:
                ts_version = self.timestamp().signed.version + 1
            except ConfigError:
                ts_version = 1
        timestamp = Metadata(
            Timestamp(
                version=ts_version,
                expires=now + self.expiries.timestamp,
                snapshot_meta=MetaFile(version=snapshot_version),
            )
        )
        timestamp.signed.spec_version = SPEC_VERSION
        _sign(timestamp, [timestamp_signer])
        _check(root, Timestamp.type, timestamp, "timestamp")
        # The timestamp is written last: it is what makes the new state visible.
        self._write("timestamp.json", timestamp)
        return snapshot_version

    def _store_target(self, name: str, data: bytes) -> TargetFile:
        _check_target_name(name)
        info = TargetFile.from_data(name, data, ["sha256"])
        path = self._target_path(info)
        if not path.exists():
            atomic_write(path, data)
        return info

    def _target_path(self, info: TargetFile) -> Path:
        # TUF spec §5.7.3: consistent targets live at <dir>/<hash>.<basename>.
        directory, _, base = info.path.rpartition("/")
        digest = info.hashes["sha256"]
        return self.targets_dir / directory / f"{digest}.{base}"

    def _write(self, filename: str, md: Metadata[Any]) -> None:
        atomic_write(self.metadata_dir / filename, md.to_bytes(_SERIALIZER))


def _sign(md: Metadata[Any], signers: Sequence[Signer]) -> None:
    for signer in signers:
        md.sign(signer, append=True)


def _check(delegator: Metadata[Any], role: str, delegate: Metadata[Any], what: str) -> None:
    """Verify with python-tuf exactly as a client will, before anything is written."""
    try:
        delegator.verify_delegate(role, delegate)
    except UnsignedMetadataError as e:
        raise CeremonyError(f"{what} is not signed by enough valid keys: {e}") from e


def _check_succession(old: Metadata[Root], new: Metadata[Root]) -> None:
    """TUF spec §5.3.4: root N+1 carries a threshold of N's keys and of its own."""
    v, w = new.signed.version, old.signed.version
    _check(old, Root.type, new, f"root {v} by the keys of root {w}")
    _check(new, Root.type, new, f"root {v} by its own keys")


def fnmatch_path(name: str) -> bool:
    """Whether ``name`` falls in the firmware role's delegated paths (TUF spec 5.6.7.2)."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == "firmware" and bool(parts[1])


def _check_target_name(name: str) -> None:
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or not all(re.fullmatch(r"[A-Za-z0-9._+-]+", p) for p in parts)
    ):
        raise CeremonyError(f"invalid target name {name!r}")


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data
