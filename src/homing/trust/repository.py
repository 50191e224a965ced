"""The trust repository: standard TUF metadata written with python-tuf.

Roles (TUF spec §2.1): ``root`` (k-of-n offline keys), ``targets`` (offline;
signs the pin policy), the delegated ``firmware`` role (release key),
``snapshot`` and ``timestamp`` (online keys). Consistent snapshots
(§5.5): every metadata file but timestamp is written as ``N.<role>.json`` and
every target as ``<sha256>.<name>``, and nothing is ever deleted, so a device
can walk ``1.root.json`` ... ``N.root.json`` years later and a mirror can
serve the directory as static files.

Every write is checked with python-tuf's own ``verify_delegate`` before it
reaches the disk: a ceremony with too few or the wrong keys fails here, not
on a device.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from homing.config import Expiries
from homing.errors import CeremonyError
from homing.trust.repository_files import (
    FIRMWARE_PATHS,
    FIRMWARE_ROLE,
    KEEP_VERSIONS,
    SPEC_VERSION,
    RepositoryFiles,
    RoleKeys,
    _check,
    _check_succession,
    _sign,
    fnmatch_path,
)

__all__ = ["FIRMWARE_ROLE", "KEEP_VERSIONS", "RoleKeys", "TrustRepository", "fnmatch_path"]


class TrustRepository(RepositoryFiles):
    """A TUF repository on disk, with the operations homing's ceremonies need."""

    @classmethod
    def create(
        cls,
        directory: Path,
        keys: RoleKeys,
        root_signers: Sequence[Signer],
        targets_signer: Signer,
        firmware_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
        *,
        initial_targets: Mapping[str, bytes] | None = None,
        expiries: Expiries | None = None,
    ) -> TrustRepository:
        """Write version 1 of every role (TUF spec §4: root first, timestamp last)."""
        expiries = expiries or Expiries()
        if (directory / "metadata").exists() and any((directory / "metadata").iterdir()):
            raise CeremonyError(f"a trust repository already exists at {directory}")
        (directory / "metadata").mkdir(parents=True, exist_ok=True)
        (directory / "targets").mkdir(parents=True, exist_ok=True)
        repo = cls(directory, expiries)

        root = Metadata(Root(expires=now + expiries.root, consistent_snapshot=True))
        root.signed.spec_version = SPEC_VERSION
        for key in keys.root:
            root.signed.add_key(key, Root.type)
        root.signed.roles[Root.type].threshold = keys.root_threshold
        root.signed.add_key(keys.targets, Targets.type)
        root.signed.add_key(keys.snapshot, Snapshot.type)
        root.signed.add_key(keys.timestamp, Timestamp.type)
        _sign(root, root_signers)
        _check(root, Root.type, root, "the new root")
        repo._write("1.root.json", root)

        firmware = Metadata(Targets(expires=now + expiries.delegations))
        firmware.signed.spec_version = SPEC_VERSION
        targets = Metadata(Targets(expires=now + expiries.targets))
        targets.signed.spec_version = SPEC_VERSION
        targets.signed.delegations = Delegations(
            keys={keys.firmware.keyid: keys.firmware},
            roles={
                FIRMWARE_ROLE: DelegatedRole(
                    name=FIRMWARE_ROLE,
                    keyids=[keys.firmware.keyid],
                    threshold=1,
                    terminating=True,
                    paths=list(FIRMWARE_PATHS),
                )
            },
        )
        for name, data in (initial_targets or {}).items():
            targets.signed.targets[name] = repo._store_target(name, data)
        _sign(firmware, [firmware_signer])
        _check(targets, FIRMWARE_ROLE, firmware, "the firmware role")
        _sign(targets, [targets_signer])
        _check(root, Targets.type, targets, "targets")
        repo._write(f"1.{FIRMWARE_ROLE}.json", firmware)
        repo._write("1.targets.json", targets)
        repo._publish_snapshot(
            {"targets.json": 1, f"{FIRMWARE_ROLE}.json": 1},
            snapshot_signer,
            timestamp_signer,
            now,
            root,
            snapshot_version=1,
        )
        return repo

    def publish_targets(
        self,
        files: Mapping[str, bytes],
        targets_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Add or replace top-level targets; returns the new targets version."""
        root = self.root()
        targets = self.targets()
        for name, data in files.items():
            targets.signed.targets[name] = self._store_target(name, data)
        targets.signed.version += 1
        targets.signed.expires = now + self.expiries.targets
        targets.signatures.clear()
        _sign(targets, [targets_signer])
        _check(root, Targets.type, targets, "targets")
        return self._publish_role(Targets.type, targets, snapshot_signer, timestamp_signer, now)

    def publish_firmware(
        self,
        name: str,
        data: bytes,
        custom: Mapping[str, Any],
        firmware_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
        *,
        retire: Collection[str] = (),
    ) -> int:
        """Add an image to the delegated firmware role; returns the role's new version.

        ``custom`` (version, hardware class, sequence, ...) is signed with the
        hashes, so a device trusts it exactly as far as the image.
        ``retire``: older images that leave the role in the same version, so
        the role every device downloads does not grow with each release.
        """
        if not fnmatch_path(name):
            raise CeremonyError(f"firmware target {name!r} must match {FIRMWARE_PATHS[0]}")
        targets = self.targets()
        firmware = self.targets(FIRMWARE_ROLE)
        info = self._store_target(name, data)
        info.unrecognized_fields["custom"] = dict(custom)
        for old in retire:
            if old != name:
                firmware.signed.targets.pop(old, None)
        firmware.signed.targets[name] = info
        firmware.signed.version += 1
        firmware.signed.expires = now + self.expiries.delegations
        firmware.signatures.clear()
        _sign(firmware, [firmware_signer])
        _check(targets, FIRMWARE_ROLE, firmware, "the firmware role")
        return self._publish_role(FIRMWARE_ROLE, firmware, snapshot_signer, timestamp_signer, now)

    def rotate_firmware_key(
        self,
        new_key: Key,
        new_signer: Signer,
        targets_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Delegate the firmware role to ``new_key`` alone; returns the new targets version.

        TUF spec 5.6.6: a delegated role is verified with the keys its
        delegator names, so targets (signed by the targets key) names the new
        key and drops the old one in one version, and the firmware role is
        re-signed by the new key with every image it held. A device takes
        both in the same refresh; the old key signs nothing it accepts again.
        """
        targets = self.targets()
        firmware = self.targets(FIRMWARE_ROLE)
        delegations = targets.signed.delegations
        if (
            delegations is None
            or delegations.roles is None
            or FIRMWARE_ROLE not in delegations.roles
        ):
            raise CeremonyError("targets does not delegate the firmware role")
        role = delegations.roles[FIRMWARE_ROLE]
        if new_key.keyid in role.keyids:
            raise CeremonyError("the new firmware key is the one already delegated")
        for old in role.keyids:
            delegations.keys.pop(old, None)
        delegations.keys[new_key.keyid] = new_key
        role.keyids = [new_key.keyid]
        targets.signed.version += 1
        targets.signed.expires = now + self.expiries.targets
        targets.signatures.clear()
        _sign(targets, [targets_signer])
        _check(self.root(), Targets.type, targets, "targets")
        firmware.signed.version += 1
        firmware.signed.expires = now + self.expiries.delegations
        firmware.signatures.clear()
        _sign(firmware, [new_signer])
        _check(targets, FIRMWARE_ROLE, firmware, "the firmware role")
        self._write(f"{targets.signed.version}.{Targets.type}.json", targets)
        self._write(f"{firmware.signed.version}.{FIRMWARE_ROLE}.json", firmware)
        meta = {k: v.version for k, v in self.snapshot().signed.meta.items()}
        meta[f"{Targets.type}.json"] = targets.signed.version
        meta[f"{FIRMWARE_ROLE}.json"] = firmware.signed.version
        self._publish_snapshot(meta, snapshot_signer, timestamp_signer, now, self.root())
        return targets.signed.version

    def import_firmware(
        self,
        firmware: Metadata[Targets],
        name: str,
        data: bytes,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Publish a firmware role version signed elsewhere (ceremony mode)."""
        _check(self.targets(), FIRMWARE_ROLE, firmware, "the firmware role")
        self._store_target(name, data)
        return self._publish_role(FIRMWARE_ROLE, firmware, snapshot_signer, timestamp_signer, now)

    def rotate_root(
        self,
        old_signers: Sequence[Signer],
        new_root_keys: Sequence[Key],
        new_signers: Sequence[Signer],
        threshold: int,
        now: datetime,
        *,
        role_keys: Mapping[str, Key] | None = None,
    ) -> Metadata[Root]:
        """Write root N+1, signed by a threshold of N's keys and of its own (TUF §5.3.4).

        ``role_keys`` replaces the key of top-level roles (``targets``,
        ``snapshot``, ``timestamp``) in the same version.
        """
        if not 1 <= threshold <= len(new_root_keys):
            raise CeremonyError(
                f"threshold {threshold} must be between 1 and the {len(new_root_keys)} new keys"
            )
        old = self.root()
        new = Metadata[Root].from_bytes(old.to_bytes())
        new.signatures.clear()
        new.signed.version += 1
        new.signed.expires = now + self.expiries.root
        for keyid in list(new.signed.roles[Root.type].keyids):
            new.signed.revoke_key(keyid, Root.type)
        for key in new_root_keys:
            new.signed.add_key(key, Root.type)
        new.signed.roles[Root.type].threshold = threshold
        for role, key in (role_keys or {}).items():
            if role not in (Targets.type, Snapshot.type, Timestamp.type):
                raise CeremonyError(f"cannot replace the key of role {role!r} in root")
            for keyid in list(new.signed.roles[role].keyids):
                new.signed.revoke_key(keyid, role)
            new.signed.add_key(key, role)
        _sign(new, [*old_signers, *new_signers])
        _check_succession(old, new)
        self._write(f"{new.signed.version}.root.json", new)
        return new

    def import_root(self, new: Metadata[Root]) -> None:
        """Write root N+1 signed elsewhere (a sign-then-combine ceremony), checked first."""
        old = self.root()
        if new.signed.version != old.signed.version + 1:
            raise CeremonyError(
                f"root v{new.signed.version} cannot follow root v{old.signed.version}"
            )
        _check_succession(old, new)
        self._write(f"{new.signed.version}.root.json", new)

    def import_targets(
        self,
        md: Metadata[Targets],
        files: Mapping[str, bytes],
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Publish a targets version signed elsewhere, with the files it names."""
        if md.signed.version != self.targets().signed.version + 1:
            raise CeremonyError(
                f"targets v{md.signed.version} cannot follow v{self.targets().signed.version}"
            )
        _check(self.root(), Targets.type, md, "targets")
        for name, data in files.items():
            named = md.signed.targets.get(name)
            info = TargetFile.from_data(name, data, ["sha256"])
            if named is None or named.hashes != info.hashes or named.length != info.length:
                raise CeremonyError(f"the file {name!r} is not the one targets names")
        for name, data in files.items():
            self._store_target(name, data)
        return self._publish_role(Targets.type, md, snapshot_signer, timestamp_signer, now)

    def resign_targets(
        self,
        targets_signer: Signer,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
    ) -> int:
        """Re-sign targets unchanged (after its key rotated, or before it expires)."""
        return self.publish_targets({}, targets_signer, snapshot_signer, timestamp_signer, now)

    def republish_from(
        self,
        at_least: int,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
        *,
        targets_signer: Signer | None = None,
        firmware_signer: Signer | None = None,
    ) -> dict[str, int]:
        """Re-sign the roles whose signers are given at versions of at least ``at_least``.

        After a restore, devices may hold newer versions than the restored
        files; TUF's rollback checks (spec 5.3.x: timestamp, snapshot and
        every role the snapshot names) refuse anything lower. The content is
        unchanged. Returns each re-signed role's new version.
        """
        root = self.root()
        meta = {k: v.version for k, v in self.snapshot().signed.meta.items()}
        done: dict[str, int] = {}
        targets = self.targets()
        if targets_signer is not None:
            targets.signed.version = max(targets.signed.version + 1, at_least)
            targets.signed.expires = now + self.expiries.targets
            targets.signatures.clear()
            _sign(targets, [targets_signer])
            _check(root, Targets.type, targets, "targets")
            self._write(f"{targets.signed.version}.{Targets.type}.json", targets)
            meta[f"{Targets.type}.json"] = done[Targets.type] = targets.signed.version
        if firmware_signer is not None:
            firmware = self.targets(FIRMWARE_ROLE)
            firmware.signed.version = max(firmware.signed.version + 1, at_least)
            firmware.signed.expires = now + self.expiries.delegations
            firmware.signatures.clear()
            _sign(firmware, [firmware_signer])
            _check(targets, FIRMWARE_ROLE, firmware, "the firmware role")
            self._write(f"{firmware.signed.version}.{FIRMWARE_ROLE}.json", firmware)
            meta[f"{FIRMWARE_ROLE}.json"] = done[FIRMWARE_ROLE] = firmware.signed.version
        snapshot_version = max(self.snapshot().signed.version + 1, at_least)
        timestamp_version = max(self.timestamp().signed.version + 1, at_least)
        self._publish_snapshot(
            meta,
            snapshot_signer,
            timestamp_signer,
            now,
            root,
            snapshot_version=snapshot_version,
            timestamp_version=timestamp_version,
        )
        done[Snapshot.type] = snapshot_version
        done[Timestamp.type] = timestamp_version
        return done

    def refresh_snapshot(
        self, snapshot_signer: Signer, timestamp_signer: Signer, now: datetime
    ) -> int:
        meta = {k: v.version for k, v in self.snapshot().signed.meta.items()}
        return self._publish_snapshot(meta, snapshot_signer, timestamp_signer, now, self.root())

    def refresh_timestamp(
        self, timestamp_signer: Signer, now: datetime, expires_in: Any = None
    ) -> Metadata[Timestamp]:
        """Re-sign the timestamp with a new version and expiry (online key)."""
        root = self.root()
        old = self.timestamp()
        ts = Metadata(
            Timestamp(
                version=old.signed.version + 1,
                expires=now + (expires_in or self.expiries.timestamp),
                snapshot_meta=MetaFile(version=old.signed.snapshot_meta.version),
            )
        )
        ts.signed.spec_version = SPEC_VERSION
        _sign(ts, [timestamp_signer])
        _check(root, Timestamp.type, ts, "timestamp")
        self._write("timestamp.json", ts)
        return ts

    def sign_bundle_state(
        self,
        snapshot_signer: Signer,
        timestamp_signer: Signer,
        now: datetime,
        valid_until: datetime,
    ) -> tuple[Metadata[Snapshot], Metadata[Timestamp]]:
        """A snapshot and timestamp for an offline recovery bundle, valid until ``valid_until``.

        They take versions S+1 and T+1 and are never published; the live
        repository moves on to S+2 and T+2 (with the usual short expiry) at
        once, so every online device is past the bundle's versions and no two
        different files ever share a version. The bundle's long expiry is the
        window in which it could be replayed to a device older than it: the
        operator chooses it, and it ends before any offline role expires.
        """
        root = self.root()
        targets_roles = {"targets": self.targets().signed.expires}
        snapshot = self.snapshot()
        for name in snapshot.signed.meta:
            role = name.removesuffix(".json")
            targets_roles[role] = self.targets(role).signed.expires
        limits = {"root": root.signed.expires, **targets_roles}
        role, first = min(limits.items(), key=lambda item: item[1])
        if valid_until > first:
            raise CeremonyError(
                f"a bundle can be valid until {first.isoformat()} at most, when {role} metadata "
                "expires: renew it first (homing targets refresh / rotate root) or choose a "
                "shorter validity"
            )
        if valid_until <= now:
            raise CeremonyError("a recovery bundle's validity must be positive")
        s_version = snapshot.signed.version + 1
        t_version = self.timestamp().signed.version + 1
        bundle_snapshot = Metadata(
            Snapshot(
                version=s_version,
                expires=valid_until,
                meta={k: MetaFile(version=v.version) for k, v in snapshot.signed.meta.items()},
            )
        )
        bundle_snapshot.signed.spec_version = SPEC_VERSION
        _sign(bundle_snapshot, [snapshot_signer])
        _check(root, Snapshot.type, bundle_snapshot, "bundle snapshot")
        bundle_timestamp = Metadata(
            Timestamp(
                version=t_version,
                expires=valid_until,
                snapshot_meta=MetaFile(version=s_version),
            )
        )
        bundle_timestamp.signed.spec_version = SPEC_VERSION
        _sign(bundle_timestamp, [timestamp_signer])
        _check(root, Timestamp.type, bundle_timestamp, "bundle timestamp")
        meta = {k: v.version for k, v in snapshot.signed.meta.items()}
        self._publish_snapshot(
            meta,
            snapshot_signer,
            timestamp_signer,
            now,
            root,
            snapshot_version=s_version + 1,
            timestamp_version=t_version + 1,
        )
        return bundle_snapshot, bundle_timestamp
