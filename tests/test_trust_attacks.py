"""Attacks on the trust metadata a device refreshes, and the walks it must survive.

Each attack is served to a device through the same refresh code a device runs;
after a refused attack the device's trusted state on disk is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Timestamp

from homing import ceremonies
from homing.config import Limits
from homing.errors import CeremonyError, ConfigError, MetadataError, TransportError
from homing.site import DataDir
from homing.trust import TrustState, refresh_trust
from homing.trust.signing import signer_for


class Device:
    """A device's trust state directory, refreshed from a directory 'mirror'."""

    def __init__(self, home: Path, data: Path) -> None:
        self.dir = home / "trust"
        self.factory_root = (data / "repository" / "metadata" / "1.root.json").read_bytes()

    def refresh(self, source: Path, now: datetime, limits: Limits | None = None) -> TrustState:
        return refresh_trust(
            self.dir,
            (source / "metadata").as_uri() + "/",
            now,
            bootstrap_root=self.factory_root,
            limits=limits,
        )

    def snapshot_state(self) -> dict[str, bytes]:
        return {
            str(p.relative_to(self.dir)): p.read_bytes()
            for p in sorted(self.dir.rglob("*"))
            if p.is_file()
        }


@pytest.fixture
def device(tmp_path: Path, data_dir: Path) -> Device:
    return Device(tmp_path / "device", data_dir)


def _repo(data: Path) -> Path:
    return data / "repository"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_fresh_device_gets_pins(device: Device, data_dir: Path, now: datetime) -> None:
    state = device.refresh(_repo(data_dir), now)
    assert state.root_version == 1
    assert state.targets_version == 1
    assert len(state.pin_policy.spki_pins) == 2


def test_rollback_to_older_metadata_is_refused(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: a mirror replays the repository as it was before the last updates."""
    old = _copy(_repo(data_dir), tmp_path / "old")
    ceremonies.rotate_issuing_ca(data_dir, "server", now)
    ceremonies.refresh_timestamp(data_dir, now)
    current = device.refresh(_repo(data_dir), now)
    before = device.snapshot_state()
    with pytest.raises(MetadataError, match="refused"):
        device.refresh(old, now)
    assert device.snapshot_state() == before
    assert device.refresh(_repo(data_dir), now) == current


def test_expired_timestamp_is_refused(device: Device, data_dir: Path, now: datetime) -> None:
    """Attack: freeze. The mirror keeps serving a timestamp that has expired."""
    device.refresh(_repo(data_dir), now)
    before = device.snapshot_state()
    with pytest.raises(MetadataError, match="expired"):
        device.refresh(_repo(data_dir), now + timedelta(days=1, seconds=1))
    assert device.snapshot_state() == before
    # Negative control: the same files are accepted while the timestamp is valid.
    device.refresh(_repo(data_dir), now + timedelta(hours=23))


def test_refreshed_timestamp_ends_a_freeze(device: Device, data_dir: Path, now: datetime) -> None:
    later = now + timedelta(days=3)
    ceremonies.refresh_timestamp(data_dir, later)
    ceremonies.rotate_root(data_dir, later)  # also re-signs the expired snapshot
    state = device.refresh(_repo(data_dir), later + timedelta(hours=1))
    assert state.timestamp_expires == later + timedelta(days=1)


def test_mix_and_match_targets_is_refused(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: serve the old targets metadata under the name the new snapshot lists."""
    ceremonies.rotate_issuing_ca(data_dir, "server", now)
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    shutil.copy(mirror / "metadata" / "1.targets.json", mirror / "metadata" / "2.targets.json")
    with pytest.raises(MetadataError):
        device.refresh(mirror, now)
    assert not (device.dir / "targets.json").exists()


def test_mix_and_match_snapshot_is_refused(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: pair the new timestamp with an older snapshot."""
    ceremonies.rotate_issuing_ca(data_dir, "server", now)
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    ts = json.loads((mirror / "metadata" / "timestamp.json").read_bytes())
    version = ts["signed"]["meta"]["snapshot.json"]["version"]
    shutil.copy(
        mirror / "metadata" / "1.snapshot.json", mirror / "metadata" / f"{version}.snapshot.json"
    )
    with pytest.raises(MetadataError):
        device.refresh(mirror, now)


def test_tampered_pin_policy_is_refused(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: a mirror swaps the attacker's pins into the signed pin policy target."""
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    (target,) = (mirror / "targets").glob("*.pins.json")
    doc = json.loads(target.read_bytes())
    doc["spki_pins"] = [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ]
    target.write_bytes(json.dumps(doc).encode())
    with pytest.raises(MetadataError):
        device.refresh(mirror, now)
    assert not list((device.dir / "targets").glob("*"))


def test_truncated_pin_policy_is_refused(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    (target,) = (mirror / "targets").glob("*.pins.json")
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(MetadataError):
        device.refresh(mirror, now)


def test_removed_online_key_cannot_sign_timestamp(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: a stolen timestamp key keeps signing after the key was rotated out."""
    dd = DataDir(data_dir)
    store = dd.keystore(dd.settings())
    stolen = store.load("timestamp-1")
    ceremonies.rotate_online_keys(data_dir, now)
    good = device.refresh(_repo(data_dir), now)
    before = device.snapshot_state()
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    path = mirror / "metadata" / "timestamp.json"
    forged = Metadata[Timestamp].from_bytes(path.read_bytes())
    forged.signed.version += 10
    forged.signatures.clear()
    forged.sign(signer_for(stolen))
    path.write_bytes(forged.to_bytes())
    with pytest.raises(MetadataError, match="refused"):
        device.refresh(mirror, now)
    assert device.snapshot_state() == before
    assert good.root_version == 2


def test_removed_root_key_cannot_sign_root(
    device: Device, data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Attack: a root key rotated out of root v2 signs a root v3 for the attacker."""
    dd = DataDir(data_dir)
    store = dd.keystore(dd.settings())
    stolen = store.load("tuf-root-1-1")
    ceremonies.rotate_root(data_dir, now)
    device.refresh(_repo(data_dir), now)
    mirror = _copy(_repo(data_dir), tmp_path / "mirror")
    v2 = Metadata[Root].from_bytes((mirror / "metadata" / "2.root.json").read_bytes())
    v2.signed.version = 3
    v2.signatures.clear()
    v2.sign(signer_for(stolen))
    (mirror / "metadata" / "3.root.json").write_bytes(v2.to_bytes())
    with pytest.raises(MetadataError):
        device.refresh(mirror, now)
    assert json.loads((device.dir / "root.json").read_bytes())["signed"]["version"] == 2


def test_threshold_not_met_is_refused(
    tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: one holder of a 2-of-3 root signs a new root on their own."""
    passphrase = b"correct horse battery staple"
    media = [tmp_path / f"usb{i}" / "root.key" for i in range(3)]
    data = tmp_path / "data"
    ceremonies.init(data, now, ceremony_root_keys=media, threshold=2, passphrase=passphrase)
    site = DataDir(data, passphrase=passphrase)
    # The ceremony itself refuses to publish with one key...
    with pytest.raises(CeremonyError, match="needs 2 of the root keys"):
        ceremonies.rotate_root(site, now, sign_with=media[:1])
    # ...and a root signed by one key anyway is refused by the device.
    from homing.pki.keystore import load_private_key_pem

    key = load_private_key_pem(media[0].read_bytes(), b"correct horse battery staple", "usb0")
    v1 = Metadata[Root].from_bytes((data / "repository" / "metadata" / "1.root.json").read_bytes())
    v1.signed.version = 2
    v1.signatures.clear()
    v1.sign(signer_for(key))
    (data / "repository" / "metadata" / "2.root.json").write_bytes(v1.to_bytes())
    dev = Device(tmp_path / "device", data)
    with pytest.raises(MetadataError):
        dev.refresh(_repo(data), now)
    # Negative control: two holders together can rotate.
    (data / "repository" / "metadata" / "2.root.json").unlink()
    assert ceremonies.rotate_root(site, now, sign_with=media[:2]) == 2
    assert dev.refresh(_repo(data), now).root_version == 2


def test_walks_fifty_root_versions_some_expired(
    device: Device, data_dir: Path, now: datetime
) -> None:
    dd = DataDir(data_dir)
    settings = dd.settings()
    settings.expiry_days["root"] = 10  # so most intermediate roots expire on the way
    dd.save_settings(settings)
    when = now
    for version in range(2, 51):
        if version % 5 == 0:
            when += timedelta(days=20)
        assert ceremonies.rotate_root(data_dir, when) == version
    ceremonies.rotate_issuing_ca(data_dir, "server", when)
    expired = [
        v
        for v in range(1, 50)
        if Metadata[Root]
        .from_bytes((data_dir / "repository" / "metadata" / f"{v}.root.json").read_bytes())
        .signed.is_expired(when)
    ]
    assert len(expired) > 30
    state = device.refresh(_repo(data_dir), when)
    assert state.root_version == 50
    assert len(list((device.dir / "root_history").glob("*.root.json"))) == 50


def test_device_catches_up_past_the_rotation_limit_from_its_newest_root(
    device: Device, data_dir: Path, now: datetime
) -> None:
    """python-tuf walks at most max_root_rotations per refresh; the next starts where it ended."""
    for _ in range(25):
        ceremonies.rotate_root(data_dir, now)
    limits = Limits(max_root_rotations=10)
    versions = [device.refresh(_repo(data_dir), now, limits).root_version for _ in range(3)]
    assert versions == [11, 21, 26]


def test_unreachable_source_is_a_transport_error(
    device: Device, tmp_path: Path, now: datetime
) -> None:
    with pytest.raises(TransportError):
        device.refresh(tmp_path / "nowhere", now)


def test_missing_trusted_root_is_a_config_error(
    tmp_path: Path, data_dir: Path, now: datetime
) -> None:
    with pytest.raises(ConfigError, match="no trusted root"):
        refresh_trust(tmp_path / "empty", (_repo(data_dir) / "metadata").as_uri() + "/", now)


def test_consistent_snapshot_keeps_every_version(data_dir: Path, now: datetime) -> None:
    ceremonies.rotate_root(data_dir, now)
    ceremonies.rotate_issuing_ca(data_dir, "server", now)
    names = {p.name for p in (_repo(data_dir) / "metadata").iterdir()}
    assert {
        "1.root.json",
        "2.root.json",
        "1.targets.json",
        "2.targets.json",
        "timestamp.json",
    } <= names
    for target in (_repo(data_dir) / "targets").glob("*.pins.json"):
        digest = target.name.split(".", 1)[0]
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


def test_device_walks_three_hundred_root_versions(
    device: Device, data_dir: Path, now: datetime
) -> None:
    """Past python-tuf's 256-rotation limit: each refresh starts from the newest verified root."""
    dd = DataDir(data_dir)
    settings = dd.settings()
    store = dd.keystore(settings)
    repo = dd.repository(settings)
    signers = [signer_for(store.load(name)) for name in settings.root_keys]
    keys = [s.public_key for s in signers]
    for _ in range(299):
        repo.rotate_root(signers, keys, signers, 1, now)
    assert repo.root_version() == 300
    first = device.refresh(_repo(data_dir), now)
    assert first.root_version == 257  # 1 + max_root_rotations
    second = device.refresh(_repo(data_dir), now)
    assert second.root_version == 300
