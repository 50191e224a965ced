"""Sign-then-combine: k-of-n holders, each in their own process with their own key and passphrase.

Each holder's command runs through the installed entry point with only that
holder's key directory and passphrase in its environment (never the
server's). The attacks: a threshold short by one, a signature made over
different bytes, a key that may not sign, a wrong passphrase.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from homing.trust.client import DirectoryFetcher, refresh_trust
from tests.harness import assert_one_error, run_homing

SERVER = "server passphrase, not a holder's"
HOLDERS = ("alice's own passphrase", "bob's own passphrase", "carol's own passphrase")


def _holder(i: int) -> dict[str, str]:
    return {"HOMING_HOLDER_PASSPHRASE": HOLDERS[i]}


def _server() -> dict[str, str]:
    return {"HOMING_KEY_PASSPHRASE": SERVER}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A ceremony-mode site whose three root keys each sit with their holder."""
    holders = [tmp_path / name for name in ("alice", "bob", "carol")]
    for directory in holders:
        directory.mkdir()
    data = tmp_path / "site"
    env = {**_server(), **{f"HOMING_HOLDER_PASSPHRASE_{i + 1}": p for i, p in enumerate(HOLDERS)}}
    roots = [arg for h in holders for arg in ("--root-key", str(h / "root-1.pem"))]
    _ok(run_homing("init", "--data", str(data), "--ceremony", *roots, "--threshold", "2", env=env))
    return data, holders


def _root_version(data: Path) -> int:
    return max(
        int(p.name.split(".")[0]) for p in (data / "repository" / "metadata").glob("*.root.json")
    )


def test_two_of_three_root_rotation_by_three_holders_in_three_processes(
    site: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    data, holders = site
    # Each holder makes their new key on their own machine.
    for i, h in enumerate(holders):
        out = _ok(
            run_homing(
                "ceremony", "keygen", "--out", str(h / "root-2.pem"),
                "--public-out", str(h / "root-2.pub"), env=_holder(i),
            )
        )  # fmt: skip
        assert "hand over" in out
        assert "ENCRYPTED" in (h / "root-2.pem").read_text()
    proposal = tmp_path / "root-2.proposal.json"
    keys = [arg for h in holders for arg in ("--key", str(h / "root-2.pub"))]
    out = _ok(
        run_homing(
            "ceremony", "propose-root", "--data", str(data), "--out", str(proposal), *keys,
            "--threshold", "2", env=_server(),
        )
    )  # fmt: skip
    assert "root version 1 -> 2" in out
    assert "root: adds" in out
    sigs = []
    for i in (0, 1):  # alice and bob sign, each with their old and their new key
        h = holders[i]
        sig = tmp_path / f"sig-{i}.json"
        out = _ok(
            run_homing(
                "ceremony", "sign", str(proposal), "--key", str(h / "root-1.pem"),
                "--key", str(h / "root-2.pem"), "--out", str(sig), "--yes", env=_holder(i),
            )
        )  # fmt: skip
        assert "root version 1 -> 2" in out  # they read what changes before signing
        sigs.append(sig)
    # A holder with the wrong passphrase signs nothing.
    assert_one_error(
        run_homing(
            "ceremony", "sign", str(proposal), "--key", str(holders[2] / "root-1.pem"),
            "--out", str(tmp_path / "no.json"), "--yes", env=_holder(0),
        ),
        "wrong passphrase",
    )  # fmt: skip
    # The attack: publish with one holder short of the threshold.
    assert_one_error(
        run_homing("ceremony", "publish", "--data", str(data), str(proposal), str(sigs[0]),
                   env=_server()),
        "needs 2 signatures",
    )  # fmt: skip
    assert _root_version(data) == 1
    # The attack: carol signed a different proposal (threshold 1), passed off as this one's.
    other = tmp_path / "other.proposal.json"
    _ok(
        run_homing(
            "ceremony", "propose-root", "--data", str(data), "--out", str(other), *keys,
            "--threshold", "1", env=_server(),
        )
    )  # fmt: skip
    carol = tmp_path / "sig-carol.json"
    _ok(
        run_homing(
            "ceremony", "sign", str(other), "--key", str(holders[2] / "root-1.pem"),
            "--key", str(holders[2] / "root-2.pem"), "--out", str(carol), "--yes", env=_holder(2),
        )
    )  # fmt: skip
    assert_one_error(
        run_homing("ceremony", "publish", "--data", str(data), str(proposal), str(sigs[0]),
                   str(carol), env=_server()),
        "different bytes",
    )  # fmt: skip
    # Forged: carol's signatures pasted into a file claiming this proposal's digest.
    forged = json.loads(carol.read_text())
    forged["signed_sha256"] = json.loads(sigs[0].read_text())["signed_sha256"]
    forged_file = tmp_path / "sig-forged.json"
    forged_file.write_text(json.dumps(forged))
    assert_one_error(
        run_homing("ceremony", "publish", "--data", str(data), str(proposal), str(sigs[0]),
                   str(forged_file), env=_server()),
        "does not verify over this proposal",
    )  # fmt: skip
    assert _root_version(data) == 1
    # Two of three: published.
    out = _ok(
        run_homing("ceremony", "publish", "--data", str(data), str(proposal), *map(str, sigs),
                   env=_server())
    )  # fmt: skip
    assert "published root version 2" in out
    metadata = data / "repository" / "metadata"
    one = Metadata[Root].from_file(str(metadata / "1.root.json"))
    two = Metadata[Root].from_file(str(metadata / "2.root.json"))
    one.verify_delegate(Root.type, two)
    two.verify_delegate(Root.type, two)
    assert two.signed.roles[Root.type].threshold == 2
    # A device holding root 1 walks to root 2 with python-tuf.
    device = tmp_path / "device"
    device.mkdir()
    (device / "root.json").write_bytes((metadata / "1.root.json").read_bytes())
    trust = refresh_trust(
        device,
        metadata.as_uri() + "/",
        datetime.now(UTC),
        fetcher=DirectoryFetcher(),
        target_url=(data / "repository" / "targets").as_uri() + "/",
    )
    assert trust.root_version == 2


def _hand_targets_to_alice(data: Path, holders: list[Path], tmp_path: Path) -> Path:
    """Alice makes a targets key; alice and bob sign a root naming it. Returns her directory."""
    h = holders[0]
    _ok(
        run_homing(
            "ceremony", "keygen", "--out", str(h / "targets.pem"),
            "--public-out", str(h / "targets.pub"), env=_holder(0),
        )
    )  # fmt: skip
    proposal = tmp_path / "root.json"
    _ok(
        run_homing(
            "ceremony", "propose-root", "--data", str(data), "--out", str(proposal),
            "--targets-key", str(h / "targets.pub"), env=_server(),
        )
    )  # fmt: skip
    sigs = []
    for i in (0, 1):
        sig = tmp_path / f"root-sig-{i}.json"
        _ok(
            run_homing(
                "ceremony", "sign", str(proposal), "--key", str(holders[i] / "root-1.pem"),
                "--out", str(sig), "--yes", env=_holder(i),
            )
        )  # fmt: skip
        sigs.append(str(sig))
    _ok(run_homing("ceremony", "publish", "--data", str(data), str(proposal), *sigs, env=_server()))
    return h


def test_targets_handed_to_a_holder_and_signed_apart(
    site: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    data, holders = site
    h = _hand_targets_to_alice(data, holders, tmp_path)
    # From now on the server's targets key cannot publish pins; the holder's can.
    targets = tmp_path / "targets.json"
    out = _ok(
        run_homing("ceremony", "propose-targets", "--data", str(data), "--out", str(targets),
                   env=_server())
    )  # fmt: skip
    assert "pins:" in out
    assert "unchanged (a re-signing)" in out
    wrong = tmp_path / "targets-wrong.json"
    _ok(
        run_homing(
            "ceremony", "sign", str(targets), "--key", str(holders[1] / "root-1.pem"),
            "--out", str(wrong), "--yes", env=_holder(1),
        )
    )  # fmt: skip
    assert_one_error(
        run_homing("ceremony", "publish", "--data", str(data), str(targets), str(wrong),
                   env=_server()),
        "may not sign targets",
    )  # fmt: skip
    right = tmp_path / "targets-sig.json"
    _ok(
        run_homing(
            "ceremony", "sign", str(targets), "--key", str(h / "targets.pem"),
            "--out", str(right), "--yes", env=_holder(0),
        )
    )  # fmt: skip
    out = _ok(
        run_homing("ceremony", "publish", "--data", str(data), str(targets), str(right),
                   env=_server())
    )  # fmt: skip
    assert "published targets version 2" in out


def test_holder_passphrases_are_their_own(tmp_path: Path) -> None:
    env = {**_server(), "HOMING_HOLDER_PASSPHRASE": SERVER}
    assert_one_error(
        run_homing("ceremony", "keygen", "--out", str(tmp_path / "k.pem"),
                   "--public-out", str(tmp_path / "k.pub"), env=env),
        "must not be the server's",
    )  # fmt: skip
    env = {**_server(), "HOMING_HOLDER_PASSPHRASE_1": SERVER}
    assert_one_error(
        run_homing("init", "--data", str(tmp_path / "d"), "--ceremony",
                   "--root-key", str(tmp_path / "r.pem"), env=env),
        "must not be the server's",
    )  # fmt: skip


def test_a_promotion_leaves_the_new_pins_to_the_targets_holders(
    site: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Once targets is with its holders, a CA promotion defers the pins and says how."""
    data, holders = site
    h = _hand_targets_to_alice(data, holders, tmp_path)
    out = _ok(run_homing("rotate", "server-ca", "--data", str(data), env=_server()))
    assert "publish the new pins with" in out
    pins = tmp_path / "pins.json"
    out = _ok(
        run_homing("ceremony", "propose-targets", "--data", str(data), "--out", str(pins),
                   env=_server())
    )  # fmt: skip
    assert "re-signing" not in out  # the new backup pin is in it
    sig = tmp_path / "pins-sig.json"
    _ok(
        run_homing(
            "ceremony", "sign", str(pins), "--key", str(h / "targets.pem"),
            "--out", str(sig), "--yes", env=_holder(0),
        )
    )  # fmt: skip
    _ok(run_homing("ceremony", "publish", "--data", str(data), str(pins), str(sig), env=_server()))
    out = _ok(run_homing("rotate", "server-cert", "--data", str(data), env=_server()))
    assert "new server certificate" in out


def test_new_online_keys_named_by_a_threshold_root(
    site: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """The server makes the next timestamp and snapshot keys; holders sign the root naming them."""
    from homing.site import DataDir
    from homing.trust.signing import tuf_key

    data, holders = site
    proposal = tmp_path / "root.json"
    out = _ok(
        run_homing(
            "ceremony", "propose-root", "--data", str(data), "--out", str(proposal),
            "--new-online-keys", env=_server(),
        )
    )  # fmt: skip
    assert "timestamp: adds" in out
    assert "snapshot: adds" in out
    # Not in use until the root naming them is published.
    assert DataDir(data).settings().online_key_generation == 1
    sigs = []
    for i in (0, 2):
        sig = tmp_path / f"sig-{i}.json"
        _ok(
            run_homing(
                "ceremony", "sign", str(proposal), "--key", str(holders[i] / "root-1.pem"),
                "--out", str(sig), "--yes", env=_holder(i),
            )
        )  # fmt: skip
        sigs.append(str(sig))
    _ok(run_homing("ceremony", "publish", "--data", str(data), str(proposal), *sigs, env=_server()))
    dd = DataDir(data, passphrase=SERVER.encode())
    settings = dd.settings()
    assert settings.online_key_generation == 2
    root = Metadata[Root].from_file(str(data / "repository" / "metadata" / "2.root.json"))
    timestamp_key = dd.keystore(settings).load("timestamp-2")
    assert root.signed.roles["timestamp"].keyids == [tuf_key(timestamp_key.public_key()).keyid]
    # The keys the published root replaced are destroyed: nothing may sign with them.
    assert not dd.keystore(settings).exists("timestamp-1")
    assert not dd.keystore(settings).exists("snapshot-1")
    # The server signs with the new key from now on: a device verifies it.
    refreshed = _ok(run_homing("timestamp", "refresh", "--data", str(data), env=_server()))
    assert "timestamp" in refreshed
    device = tmp_path / "device"
    device.mkdir()
    metadata = data / "repository" / "metadata"
    (device / "root.json").write_bytes((metadata / "1.root.json").read_bytes())
    trust = refresh_trust(
        device,
        metadata.as_uri() + "/",
        datetime.now(UTC),
        fetcher=DirectoryFetcher(),
        target_url=(data / "repository" / "targets").as_uri() + "/",
    )
    assert trust.root_version == 2
