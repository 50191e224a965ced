"""Firmware releases: an image becomes a signed target of the delegated firmware role.

Versions are compared as versions (PEP 440 via ``packaging``), never as
strings. Anti-rollback rests on the release **sequence number**, monotonic
per hardware class and separate from the version (as in SUIT, RFC 9019 and
RFC 9124): a device never installs a lower sequence number. A deliberate
downgrade is a new release with a higher sequence number, flagged and
recorded.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from homing.ceremonies._common import _online_signers, _open, _signer, firmware_key_name, serialized
from homing.errors import CeremonyError
from homing.site.datadir import DataDir
from homing.store import audit
from homing.store import firmware as store
from homing.trust.repository import FIRMWARE_ROLE

__all__ = ["import_signed", "parse_version", "release", "sign_offline"]

_HARDWARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_IMAGE_BYTES = 4 * 1024**3
# Releases of one hardware class kept in the signed firmware role (plus any in use).
KEEP_RELEASES = 3


def parse_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as e:
        raise CeremonyError(f"{text!r} is not a version (PEP 440, e.g. 2.1.0)") from e


@serialized
def release(
    data: Path | DataDir,
    image: Path,
    version: str,
    hardware: str,
    now: datetime,
    *,
    sequence: int | None = None,
    notes: str | None = None,
    downgrade: bool = False,
    actor: str = "cli",
) -> store.Release:
    """Sign ``image`` into the firmware role and record the release."""
    if not _HARDWARE.fullmatch(hardware):
        raise CeremonyError(f"invalid hardware class {hardware!r}")
    new_version = parse_version(version)
    try:
        size = image.stat().st_size
    except OSError as e:
        raise CeremonyError(f"cannot read image {image}: {e.strerror}") from e
    if size > MAX_IMAGE_BYTES:
        raise CeremonyError("the image is larger than the limit")
    dd, settings, keys = _open(data)
    db = dd.database()
    with db.engine.connect() as conn:
        latest = store.latest_release(conn, hardware)
    floor = settings.release_sequence_floor
    if sequence is None:
        sequence = max(latest.sequence if latest is not None else 0, floor) + 1
    elif sequence <= floor:
        raise CeremonyError(
            f"sequence {sequence} is not above {floor}: this site was restored from a backup, "
            "and devices may run releases it does not know up to that sequence"
        )
    if latest is not None:
        if sequence <= latest.sequence:
            raise CeremonyError(
                f"sequence {sequence} is not above {latest.sequence}, the newest for {hardware}: "
                "devices would refuse it"
            )
        if new_version <= parse_version(latest.version) and not downgrade:
            raise CeremonyError(
                f"version {version} is not newer than {latest.version}: pass --downgrade to "
                "release it deliberately (with a higher sequence number)"
            )
    if sequence < 1:
        raise CeremonyError("the sequence number must be positive")
    payload = image.read_bytes()
    name = f"firmware/{hardware}-{new_version}-{sequence}.img"
    custom = {
        "version": str(new_version),
        "hardware": hardware,
        "sequence": sequence,
        "downgrade": bool(downgrade),
        "notes": notes or "",
    }
    repo = dd.repository(settings)
    snapshot, timestamp = _online_signers(keys, settings)
    rel = store.Release(
        target=name,
        hardware=hardware,
        version=str(new_version),
        sequence=sequence,
        length=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        downgrade=downgrade,
        notes=notes,
        created_at=now,
    )
    with db.begin() as conn:
        store.add_release(conn, rel)
        retire = _retired_by(
            repo.targets(FIRMWARE_ROLE), hardware, store.releases_in_use(conn, hardware)
        )
        repo.publish_firmware(
            name,
            payload,
            custom,
            _signer(keys, firmware_key_name(settings.firmware_key_generation)),
            snapshot,
            timestamp,
            now,
            retire=retire,
        )
        audit.audit(
            conn,
            now,
            actor,
            "release",
            name,
            {"version": str(new_version), "sequence": sequence, "downgrade": downgrade},
        )
    return rel


def _retired_by(firmware_md: Any, hardware: str, in_use: set[str]) -> list[str]:
    """The images of ``hardware`` that leave the firmware role with the next release.

    The newest ``KEEP_RELEASES - 1`` stay beside the new one, and any still in
    use (an unfinished rollout's, or one an active device runs); the rest go.
    A device on a retired release still takes the newest: the anti-rollback
    rule compares sequences, not the presence of its own.
    """
    ours = sorted(
        (
            (int(info.custom.get("sequence", 0)), name)
            for name, info in firmware_md.signed.targets.items()
            if isinstance(info.custom, dict) and info.custom.get("hardware") == hardware
        ),
        reverse=True,
    )
    kept = {name for _, name in ours[: KEEP_RELEASES - 1]}
    return [name for _, name in ours if name not in kept and name not in in_use]


def _latest_signed(firmware_md: Any, hardware: str) -> tuple[int, str | None]:
    """Newest sequence and its version for ``hardware`` in signed firmware metadata."""
    best, version = 0, None
    for info in firmware_md.signed.targets.values():
        custom = info.custom if isinstance(info.custom, dict) else {}
        if custom.get("hardware") == hardware and int(custom.get("sequence", 0)) > best:
            best, version = int(custom["sequence"]), str(custom.get("version"))
    return best, version


def sign_offline(
    metadata_dir: Path,
    image: Path,
    version: str,
    hardware: str,
    release_key: Path,
    out: Path,
    now: datetime,
    *,
    sequence: int | None = None,
    notes: str | None = None,
    downgrade: bool = False,
    expires_in: Any = None,
    passphrase: bytes | None = None,
) -> Path:
    """Ceremony mode: sign the next firmware role version on a machine off the network.

    ``metadata_dir`` is a copy of the repository's metadata; the release key
    never leaves this machine. ``out`` receives the signed role metadata and
    the image, for ``import_signed`` on the server.
    """
    import json
    import shutil

    from tuf.api.metadata import Metadata, TargetFile, Targets

    from homing.ceremonies._common import _read_offline_key
    from homing.config import Expiries
    from homing.trust.signing import signer_for

    if not _HARDWARE.fullmatch(hardware):
        raise CeremonyError(f"invalid hardware class {hardware!r}")
    new_version = parse_version(version)
    snapshot_files = sorted(
        metadata_dir.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0])
    )
    if not snapshot_files:
        raise CeremonyError(f"no repository metadata in {metadata_dir}")
    snapshot = json.loads(snapshot_files[-1].read_bytes())
    current = snapshot["signed"]["meta"][f"{FIRMWARE_ROLE}.json"]["version"]
    firmware = Metadata[Targets].from_bytes(
        (metadata_dir / f"{current}.{FIRMWARE_ROLE}.json").read_bytes()
    )
    latest, latest_version = _latest_signed(firmware, hardware)
    sequence = sequence if sequence is not None else latest + 1
    if sequence <= latest:
        raise CeremonyError(f"sequence {sequence} is not above {latest}, the newest for {hardware}")
    if latest_version and new_version <= parse_version(latest_version) and not downgrade:
        raise CeremonyError(
            f"version {version} is not newer than {latest_version}: pass --downgrade"
        )
    payload = image.read_bytes()
    name = f"firmware/{hardware}-{new_version}-{sequence}.img"
    info = TargetFile.from_data(name, payload, ["sha256"])
    info.unrecognized_fields["custom"] = {
        "version": str(new_version),
        "hardware": hardware,
        "sequence": sequence,
        "downgrade": bool(downgrade),
        "notes": notes or "",
    }
    firmware.signed.targets[name] = info
    firmware.signed.version += 1
    firmware.signed.expires = now + (expires_in or Expiries().delegations)
    firmware.signatures.clear()
    firmware.sign(signer_for(_read_offline_key(release_key, passphrase)))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{firmware.signed.version}.{FIRMWARE_ROLE}.json").write_bytes(firmware.to_bytes())
    shutil.copyfile(image, out / "image")
    return out


@serialized
def import_signed(
    data: Path | DataDir, signed: Path, now: datetime, actor: str = "cli"
) -> store.Release:
    """Server side of ceremony mode: verify the offline-signed firmware role and publish it."""
    from tuf.api.metadata import Metadata, Targets

    from homing.trust.repository_files import FIRMWARE_ROLE, _check

    dd, settings, keys = _open(data)
    repo = dd.repository(settings)
    files = sorted(signed.glob(f"*.{FIRMWARE_ROLE}.json"))
    if len(files) != 1 or not (signed / "image").is_file():
        raise CeremonyError(f"{signed} must hold one N.{FIRMWARE_ROLE}.json and the image")
    firmware = Metadata[Targets].from_bytes(files[0].read_bytes())
    current = repo.targets(FIRMWARE_ROLE)
    if firmware.signed.version != current.signed.version + 1:
        raise CeremonyError(
            f"signed firmware role is version {firmware.signed.version}; the repository expects "
            f"{current.signed.version + 1} (sign again from current metadata)"
        )
    _check(repo.targets(), FIRMWARE_ROLE, firmware, "the offline-signed firmware role")
    new = set(firmware.signed.targets) - set(current.signed.targets)
    if len(new) != 1:
        raise CeremonyError("the signed firmware role must add exactly one image")
    (name,) = new
    info = firmware.signed.targets[name]
    payload = (signed / "image").read_bytes()
    import io

    try:
        info.verify_length_and_hashes(io.BytesIO(payload))
    except Exception as e:
        raise CeremonyError(f"the image does not match the signed target: {e}") from e
    custom = info.custom
    rel = store.Release(
        target=name,
        hardware=str(custom["hardware"]),
        version=str(custom["version"]),
        sequence=int(custom["sequence"]),
        length=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        downgrade=bool(custom.get("downgrade")),
        notes=str(custom.get("notes") or "") or None,
        created_at=now,
    )
    db = dd.database()
    snapshot, timestamp = _online_signers(keys, settings)
    with db.begin() as conn:
        store.add_release(conn, rel)
        repo.import_firmware(firmware, name, payload, snapshot, timestamp, now)
        audit.audit(conn, now, actor, "release_import", name, {"sequence": rel.sequence})
    return rel
