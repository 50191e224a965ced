"""Every ceremony many times over: no list that grows with ceremonies locks a device out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from homing import ceremonies
from homing.ceremonies.generations import retired_device_cas
from homing.pki.keys import spki_pin
from homing.site import DataDir
from tests.fleet import check_in, device, move_server_clock
from tests.harness import RunningServer

on_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@on_sqlite
def test_thirty_device_ca_generations_keep_every_device_home(
    server: RunningServer, tmp_path: Path
) -> None:
    dd = server.state.dd
    first = device(server, tmp_path, "dev-first", "board-a")
    check_in(server, first)
    middle = None
    for generation in range(2, 32):
        assert ceremonies.rotate_issuing_ca(dd, "device", datetime.now(UTC)) == generation
        server.settle()
        if generation == 16:
            middle = device(server, tmp_path, "dev-middle", "board-a")
        check_in(server, first)
    assert middle is not None
    # Every retired generation is still trusted (its devices' certificates live on),
    # so its key stays: the broker's CRL of those devices is signed with it.
    assert _ca_keys(dd, "device") == list(range(1, 33))
    last = device(server, tmp_path, "dev-last", "board-a")
    for state in (first, middle, last):
        check_in(server, state)
    assert len(dd.certificates("device-cas.pem")) == 31
    assert len(retired_device_cas(dd)) == 30
    # A year and a month on, every certificate the retired generations issued
    # has expired: the next rotation leaves them out of trust, and each
    # device recovers by key proof into the newest generation.
    move_server_clock(server, timedelta(days=400))
    ceremonies.rotate_server_cert(dd, server.clock())  # as the server's maintenance does
    ceremonies.rotate_issuing_ca(dd, "device", server.clock())
    server.settle()
    trusted = dd.certificates("device-cas.pem")
    assert [c.subject.rfc4514_string().split(",")[0] for c in trusted] == [
        "CN=homing device-issuing CA 32",
        "CN=homing device-issuing CA 31",
    ]
    # What records the retirements shrank with the trust: only generation 31 is left.
    assert list(retired_device_cas(dd)) == [spki_pin(trusted[1])]
    # The keys of the thirty generations that left trust are destroyed, and the audit
    # log says which: the store keeps the still-trusted 31, the active 32, the backup 33.
    assert _ca_keys(dd, "device") == [31, 32, 33]
    assert _last_audit(dd, "rotate_device_ca")["destroyed_keys"] == [
        f"device-ca-g{g}" for g in range(1, 31)
    ]
    for state in (first, middle, last):
        assert check_in(server, state).recovered
        assert check_in(server, state).checked_in


@on_sqlite
def test_thirty_server_ca_promotions_keep_a_device_pinned(
    server: RunningServer, tmp_path: Path
) -> None:
    from homing.agent.decide import TrustChannel

    dd = server.state.dd
    regular = device(server, tmp_path, "dev-regular", "board-a")
    for generation in range(2, 32):
        ceremonies.rotate_issuing_ca(dd, "server", datetime.now(UTC))
        server.settle()
        report = check_in(server, regular)
        # It held the promoted key's pin already: no bootstrap channel needed.
        assert report.trust_channel is TrustChannel.PINNED, report.steps
        # Nothing signs with a retired server CA: its key is destroyed at once,
        # so the store never holds more than the active and the backup.
        assert _ca_keys(dd, "server") == [generation, generation + 1]
        assert _last_audit(dd, "rotate_server_ca")["destroyed_keys"] == [
            f"server-ca-g{generation - 1}"
        ]
    assert dd.settings().server_ca_generation == 31
    assert not any(dd.root.glob("keys/server-ca-g1.*"))


def _ca_keys(dd: DataDir, kind: str) -> list[int]:
    """The generations of ``kind``'s CA whose private key the site's key store holds."""
    store = dd.keystore(dd.settings())
    return [g for g in range(1, 100) if store.exists(f"{kind}-ca-g{g}")]


def _last_audit(dd: DataDir, action: str) -> dict[str, Any]:
    from homing.store.audit import audit_entries

    with dd.database().engine.connect() as conn:
        entry = next(e for e in audit_entries(conn, 10) if e["action"] == action)
    return dict(entry["detail"] or {})


@on_sqlite
def test_ten_x509_root_ca_rotations_keep_every_device_home(
    server: RunningServer, tmp_path: Path
) -> None:
    dd = server.state.dd
    first = device(server, tmp_path, "dev-first", "board-a")
    asleep = device(server, tmp_path, "dev-asleep", "board-a")
    check_in(server, first)
    for generation in range(2, 12):
        assert ceremonies.rotate_root_ca(dd, datetime.now(UTC)) == generation
        server.settle()
        check_in(server, first)
        check_in(server, device(server, tmp_path, f"dev-g{generation}", "board-a"))
    # What the server presents stays within what an agent accepts.
    assert len(dd.certificates("server-chain.pem")) - 1 <= 4
    check_in(server, asleep)


@on_sqlite
def test_ten_firmware_key_rotations_keep_updates_flowing(
    server: RunningServer, tmp_path: Path
) -> None:
    from homing.ceremonies.releases import release

    dd = server.state.dd
    regular = device(server, tmp_path, "dev-regular", "board-a")
    asleep = device(server, tmp_path, "dev-asleep", "board-a")
    image = tmp_path / "fw.img"
    for generation in range(2, 12):
        assert ceremonies.rotate_firmware_key(dd, datetime.now(UTC)) == generation
        image.write_bytes(b"firmware generation %d " % generation * 64)
        release(dd, image, f"2.{generation}.0", "board-a", datetime.now(UTC))
        server.settle()
        check_in(server, regular)
    check_in(server, asleep)


@on_sqlite
def test_ten_online_key_rotations_keep_every_device_home(
    server: RunningServer, tmp_path: Path
) -> None:
    dd = server.state.dd
    regular = device(server, tmp_path, "dev-regular", "board-a")
    asleep = device(server, tmp_path, "dev-asleep", "board-a")
    check_in(server, asleep)
    for generation in range(2, 12):
        ceremonies.rotate_online_keys(dd, datetime.now(UTC))
        server.settle()
        check_in(server, regular)
        # Nothing signs with the replaced keys: they are destroyed, the audit says so.
        store = dd.keystore(dd.settings())
        held = [n for g in range(1, 13) for n in (f"snapshot-{g}", f"timestamp-{g}")]
        assert [n for n in held if store.exists(n)] == [
            f"snapshot-{generation}",
            f"timestamp-{generation}",
        ]
        assert _last_audit(dd, "rotate_online_keys")["destroyed_keys"] == [
            f"snapshot-{generation - 1}",
            f"timestamp-{generation - 1}",
        ]
    check_in(server, asleep)


@on_sqlite
def test_concurrent_ceremonies_each_start_from_the_newest_state(
    server: RunningServer, tmp_path: Path
) -> None:
    """Two operators (and the server's maintenance) at once: every ceremony succeeds."""
    from concurrent.futures import ThreadPoolExecutor

    dd = server.state.dd
    regular = device(server, tmp_path, "dev-regular", "board-a")
    check_in(server, regular)
    ceremonies_at_once = (
        lambda: ceremonies.rotate_root(dd.root, datetime.now(UTC)),
        lambda: ceremonies.rotate_online_keys(dd.root, datetime.now(UTC)),
        lambda: ceremonies.rotate_server_cert(dd.root, datetime.now(UTC)),
        lambda: ceremonies.refresh_timestamp(dd.root, datetime.now(UTC)),
    )
    for _ in range(8):
        with ThreadPoolExecutor(len(ceremonies_at_once)) as pool:
            futures = [pool.submit(ceremony) for ceremony in ceremonies_at_once]
        for future in futures:
            future.result()  # raises what the ceremony raised
        server.settle()
        check_in(server, regular)
    # Two root versions per round (a rotation and the online-key rotation's root).
    assert dd.repository(dd.settings()).root_version() == 1 + 8 * 2


@on_sqlite
def test_concurrent_ceremony_commands_from_outside_all_succeed(
    server: RunningServer, tmp_path: Path
) -> None:
    """The operator's commands run at once through the installed entry point, three rounds."""
    import subprocess

    from tests.harness import homing_entry_point

    data = str(server.state.dd.root)
    regular = device(server, tmp_path, "dev-regular", "board-a")
    commands = (
        ("rotate", "root"),
        ("rotate", "online-keys"),
        ("rotate", "server-cert"),
        ("timestamp", "refresh"),
    )
    for _ in range(3):
        running = [
            subprocess.Popen(
                [homing_entry_point(), *command, "--data", data],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for command in commands
        ]
        for process in running:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, (process.args, out, err)
        server.settle()
        check_in(server, regular)


def test_a_ceremony_that_cannot_wait_names_the_one_running(tmp_path: Path) -> None:
    """The lock held by another thread: a caller that gives up says who holds it."""
    import threading

    from homing.errors import CeremonyError
    from homing.site.lock import ceremony_lock

    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with ceremony_lock(tmp_path, "rotate_root"):
            holding.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        refused = pytest.raises(CeremonyError, match=r"another ceremony .*rotate_root, pid")
        with refused, ceremony_lock(tmp_path, "rotate_online_keys", timeout=0.2):
            pytest.fail("the lock was taken while another thread held it")
    finally:
        release.set()
        holder.join()
    # Released: the next one takes it at once, and re-entrantly (the holder stays the
    # outer ceremony, as another process waiting on it would be told).
    holder_file = tmp_path / "run" / "ceremony.lock"
    with (
        ceremony_lock(tmp_path, "rotate_online_keys", timeout=0),
        ceremony_lock(tmp_path, "rotate_server_cert", timeout=0),
    ):
        assert holder_file.read_text().startswith("rotate_online_keys, pid ")
    assert holder_file.read_text() == ""


def test_a_ceremony_on_a_missing_data_directory_makes_nothing(tmp_path: Path) -> None:
    from homing.errors import HomingError

    missing = tmp_path / "nowhere" / "data"
    with pytest.raises(HomingError):
        ceremonies.rotate_server_cert(missing, datetime.now(UTC))
    assert not (tmp_path / "nowhere").exists()


@on_sqlite
def test_a_hundred_releases_keep_what_devices_download_and_the_disk_bounded(
    server: RunningServer, tmp_path: Path
) -> None:
    """Four hardware classes, 25 releases each: the firmware role and the disk stay small."""
    from homing.ceremonies.releases import KEEP_RELEASES, release
    from homing.operations import rollouts
    from homing.server.maintenance import maintain
    from homing.trust.repository import FIRMWARE_ROLE, KEEP_VERSIONS

    dd = server.state.dd
    classes = ("board-a", "board-b", "board-c", "board-d")
    regular = device(server, tmp_path, "dev-regular", "board-a")
    image = tmp_path / "fw.img"
    metadata = dd.root / "repository" / "metadata"
    sizes = []
    for n in range(1, 26):
        for hardware in classes:
            image.write_bytes(f"{hardware} firmware {n} ".encode() * 200)
            release(dd, image, f"2.{n}.0", hardware, datetime.now(UTC))
        sizes.append(len((metadata / f"{_firmware_version(dd)}.firmware.json").read_bytes()))
        if n == 2:
            # An unfinished rollout keeps its release signed, however old.
            plan = rollouts.RolloutPlan(stages=(100,))
            rollouts.create(server.state.db, "test", server.clock(), "2.2.0", "board-b", plan)
    repo = dd.repository(dd.settings())
    signed = repo.targets(FIRMWARE_ROLE).signed.targets
    assert len(signed) == len(classes) * KEEP_RELEASES + 1
    assert "firmware/board-b-2.2.0-2.img" in signed
    # The role every device downloads stopped growing after the first releases.
    assert sizes[-1] <= sizes[KEEP_RELEASES] * 1.1, sizes
    maintain(dd, datetime.now(UTC))
    # The next passes find nothing more to prune (and read no firmware metadata for it).
    assert repo.prune() == 0
    for role in ("snapshot", "targets", FIRMWARE_ROLE):
        assert len(list(metadata.glob(f"*.{role}.json"))) <= KEEP_VERSIONS
    # Images stay only while a kept firmware version names one: not 100.
    images = list((dd.root / "repository" / "targets" / "firmware").iterdir())
    assert len(images) <= len(classes) * KEEP_RELEASES + 1 + KEEP_VERSIONS
    # A device on board-a still takes the newest release, from a role that no
    # longer lists most of the releases before it.
    newest = "2.25.0"
    plan = rollouts.RolloutPlan(stages=(100,))
    rollouts.create(server.state.db, "test", server.clock(), newest, "board-a", plan)
    server.settle()
    report = check_in(server, regular)
    assert f"firmware {newest} committed" in report.steps, report.steps


def _firmware_version(dd: DataDir) -> int:
    from homing.trust.repository import FIRMWARE_ROLE

    repo = dd.repository(dd.settings())
    return repo.snapshot().signed.meta[f"{FIRMWARE_ROLE}.json"].version


def test_ten_device_ca_thefts_leave_a_bounded_distrusted_list(
    data_dir: Path, now: datetime
) -> None:
    """Each theft adds its CA to the distrusted ones; an expired one leaves by itself."""
    from homing.site.datadir import DISTRUSTED_DEVICE_CAS

    dd = DataDir(data_dir)
    for day in range(10):
        ceremonies.rotate_issuing_ca(dd, "device", now + timedelta(days=day), compromised=True)
    assert len(dd.certificates(DISTRUSTED_DEVICE_CAS)) == 10
    # Eleven years on, every CA stolen in the first year has expired.
    later = now + timedelta(days=11 * 365)
    ceremonies.rotate_issuing_ca(dd, "device", later, compromised=True)
    distrusted = dd.certificates(DISTRUSTED_DEVICE_CAS)
    assert len(distrusted) == 1
    assert [c.not_valid_after_utc > later for c in dd.certificates("device-cas.pem")] == [True]
