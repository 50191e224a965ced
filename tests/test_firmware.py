"""Firmware releases, rollouts and installs with real agents on loopback."""

from __future__ import annotations

import contextlib
import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from homing.agent.agent import Agent, CycleReport
from homing.agent.decide import Assignment
from homing.agent.state import DeviceState
from homing.agent.update import apply_update, installer_for
from homing.ceremonies.releases import release
from homing.errors import CeremonyError, ConflictError
from homing.operations import rollouts
from homing.operations.provisioning import provision
from homing.store import firmware
from homing.store.schema import rollout_devices
from tests.harness import RunningServer, run_homing

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

IMAGE = b"\x7fELF homing firmware image " * 4000


def _image(tmp_path: Path, payload: bytes = IMAGE, name: str = "fw.img") -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


def _device(
    server: RunningServer,
    tmp_path: Path,
    name: str,
    hardware: str = "board-a",
    health: str | None = None,
) -> DeviceState:
    state = provision(
        server.state.dd,
        tmp_path / name,
        datetime.now(UTC),
        device_id=name,
        hardware=hardware,
        server=f"https://127.0.0.1:{server.port}",
    )
    if health:
        config = state.config()
        config.health_command = health
        from homing.fsutil import atomic_write

        atomic_write(state.config_path, config.to_json())
    return state


def _agent(state: DeviceState) -> Agent:
    return Agent(state, firmware_version="1.0.0")


def _rollout(
    server: RunningServer,
    version: str = "2.0.0",
    stages: tuple[int, ...] = (100,),
    ratio: float = 0.2,
) -> int:
    ro = rollouts.create(
        server.state.db,
        "test",
        datetime.now(UTC),
        version,
        "board-a",
        rollouts.RolloutPlan(stages=stages, max_failure_ratio=ratio),
    )
    server.settle()  # the server re-reads active rollouts every second; now, here
    return ro.id


def _states(server: RunningServer, rollout_id: int) -> dict[str, str]:
    with server.state.db.engine.connect() as conn:
        return dict(
            conn.execute(
                select(rollout_devices.c.device_id, rollout_devices.c.state).where(
                    rollout_devices.c.rollout_id == rollout_id
                )
            ).all()
        )


def test_release_rules(server: RunningServer, tmp_path: Path) -> None:
    dd, now = server.state.dd, datetime.now(UTC)
    first = release(dd, _image(tmp_path), "2.0.0", "board-a", now)
    assert first.sequence == 1
    with pytest.raises(CeremonyError, match=r"not newer than 2\.0\.0"):
        release(dd, _image(tmp_path, b"x"), "1.9.0", "board-a", now)
    with pytest.raises(CeremonyError, match="not above 1"):
        release(dd, _image(tmp_path, b"y"), "2.1.0", "board-a", now, sequence=1)
    # Versions compare as versions: 2.10.0 is newer than 2.9.0.
    assert release(dd, _image(tmp_path, b"z"), "2.9.0", "board-a", now).sequence == 2
    assert release(dd, _image(tmp_path, b"w"), "2.10.0", "board-a", now).sequence == 3
    downgrade = release(dd, _image(tmp_path, b"v"), "2.0.1", "board-a", now, downgrade=True)
    assert downgrade.sequence == 4
    assert downgrade.downgrade
    with pytest.raises(CeremonyError, match="not a version"):
        release(dd, _image(tmp_path, b"u"), "two", "board-a", now)
    with pytest.raises(CeremonyError, match="invalid hardware"):
        release(dd, _image(tmp_path, b"t"), "3.0", "../x", now)
    repo = dd.repository(dd.settings())
    signed = repo.targets("firmware").signed.targets
    custom = signed[downgrade.target].custom
    assert custom["sequence"] == 4
    assert custom["hardware"] == "board-a"
    # No device runs the first and no rollout hands it out: it left the role.
    assert first.target not in signed
    assert len(signed) == 3


def test_rollout_installs_commits_and_reports(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-1")
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server)
    report = _agent(state).run_once()
    assert report.checked_in, report
    assert "firmware 2.0.0 committed" in report.steps
    installer = installer_for(_agent(state))
    assert installer.active_version() == "2.0.0"
    assert (state.root / "slots" / installer.active_slot() / "image").read_bytes() == IMAGE
    assert _states(server, rollout_id) == {"dev-1": "committed"}
    with server.state.db.engine.connect() as conn:
        assert firmware.rollout(conn, rollout_id).status == "done"
    # Next cycle: the device runs 2.0.0 and gets nothing more.
    again = _agent(state).run_once()
    assert again.checked_in
    assert not [s for s in again.steps if "firmware" in s]


def test_failed_health_check_rolls_back_and_is_reported(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _device(server, tmp_path, "dev-1", health="false")
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server, ratio=0.5)
    report = _agent(state).run_once()
    assert any(
        s.startswith("firmware 2.0.0 rolled back: health check failed") for s in report.steps
    )
    installer = installer_for(_agent(state))
    assert installer.active_version() is None  # back on the factory slot
    assert not installer.pending()
    assert _states(server, rollout_id) == {"dev-1": "rolled_back"}


def _assignment(server: RunningServer, target: str, version: str) -> dict[str, object]:
    with server.state.db.engine.begin() as conn:
        rel = firmware.release(conn, "board-a", version)
        ro = firmware.add_rollout(
            conn,
            rel,
            [100],
            0.5,
            0.9,
            timedelta(0),
            timedelta(hours=1),
            datetime.now(UTC),
        )
    return {"rollout": ro, "target": target, "version": version}


def _apply(state: DeviceState, assignment: dict[str, object]) -> CycleReport:
    agent = _agent(state)
    report = CycleReport()
    trust = agent.refresh_trust(datetime.now(UTC), report)
    job = agent.firmware_job(agent.client(trust.pin_policy, datetime.now(UTC)), report)
    apply_update(job, Assignment(int(assignment["rollout"]), str(assignment["target"])), report)
    return report


def test_image_for_another_hardware_is_refused(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-b", hardware="board-b")
    rel = release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    report = _apply(state, _assignment(server, rel.target, "2.0.0"))
    assert any("image is for hardware 'board-a'" in s for s in report.steps)
    assert installer_for(_agent(state)).active_version() is None


def test_lower_sequence_is_refused(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-1")
    old = release(server.state.dd, _image(tmp_path, b"old"), "2.0.0", "board-a", datetime.now(UTC))
    new = release(server.state.dd, _image(tmp_path, b"new"), "3.0.0", "board-a", datetime.now(UTC))
    assert (
        "firmware 3.0.0 committed" in _apply(state, _assignment(server, new.target, "3.0.0")).steps
    )
    report = _apply(state, _assignment(server, old.target, "2.0.0"))
    assert any("anti-rollback" in s for s in report.steps)
    assert installer_for(_agent(state)).active_version() == "3.0.0"


def test_tampered_image_is_refused(server: RunningServer, tmp_path: Path) -> None:
    """Attack: the image on the server is replaced after it was signed."""
    state = _device(server, tmp_path, "dev-1")
    rel = release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    (stored,) = (server.data / "repository" / "targets" / "firmware").glob(f"{rel.sha256}.*")
    stored.write_bytes(b"\x00" * len(IMAGE))
    report = _apply(state, _assignment(server, rel.target, "2.0.0"))
    assert any("does not match its signed hashes" in s for s in report.steps)
    assert installer_for(_agent(state)).active_version() is None
    assert not list((state.root / "downloads").glob("*"))


def test_truncated_download_resumes(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-1")
    rel = release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    downloads = state.root / "downloads"
    downloads.mkdir()
    (downloads / f"{rel.sha256}.partial").write_bytes(IMAGE[: len(IMAGE) // 3])
    report = _apply(state, _assignment(server, rel.target, "2.0.0"))
    assert "firmware 2.0.0 committed" in report.steps
    assert installer_for(_agent(state)).active_version() == "2.0.0"


def test_rollout_of_twenty_agents_halts_on_failures(server: RunningServer, tmp_path: Path) -> None:
    states = [_device(server, tmp_path, f"dev-{i:02d}", health="false") for i in range(20)]
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server, stages=(25, 100), ratio=0.2)
    in_stage = {
        s.config().device_id
        for s in states
        if firmware.bucket(s.config().device_id, rollout_id) < 25
    }
    assert in_stage, "the seed must put some devices in the first stage"
    for state in states:
        assert _agent(state).run_once().checked_in
    with server.state.db.engine.connect() as conn:
        ro = firmware.rollout(conn, rollout_id)
    assert ro.status == "halted"
    assert "health check failed" in (ro.halt_reason or "")
    touched = _states(server, rollout_id)
    # Only first-stage devices were ever offered the image; the rest were never updated.
    assert set(touched) <= in_stage
    assert 2 <= len([s for s in touched.values() if s == "rolled_back"]) <= len(in_stage)
    for state in states:
        assert installer_for(_agent(state)).active_version() is None


def test_pause_and_resume(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-1")
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server)
    rollouts.set_paused(server.state.db, "test", datetime.now(UTC), rollout_id, True)
    server.settle()
    report = _agent(state).run_once()
    assert report.checked_in
    assert installer_for(_agent(state)).active_version() is None
    with pytest.raises(ConflictError):
        rollouts.set_paused(server.state.db, "test", datetime.now(UTC), rollout_id, True)
    rollouts.set_paused(server.state.db, "test", datetime.now(UTC), rollout_id, False)
    server.settle()
    assert "firmware 2.0.0 committed" in _agent(state).run_once().steps


def test_power_cuts_during_download_and_install(server: RunningServer, tmp_path: Path) -> None:
    """Cut the power anywhere in an update: a bootable slot always, the job done on restart."""
    import random

    from tests.test_agent_power_cuts import RUNS, PowerCut, power_cut_at

    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server, stages=(100,), ratio=1.0 - 1e-9)
    probe = _device(server, tmp_path, "probe")
    with power_cut_at(None, False) as counter:
        assert "firmware 2.0.0 committed" in _agent(probe).run_once().steps
    operations = counter[0]
    rng = random.Random(5)
    for run in range(RUNS):
        state = _device(server, tmp_path, f"cut-{run}")
        index, after = rng.randint(1, operations), rng.random() < 0.5
        with power_cut_at(index, after), contextlib.suppress(PowerCut):
            _agent(state).run_once()
        installer = installer_for(_agent(state))
        active = installer.active_slot()
        version = installer.active_version()
        # Bootable: the factory slot, or a slot holding the whole verified image.
        assert version is None or (state.root / "slots" / active / "image").read_bytes() == IMAGE
        report = _agent(state).run_once()
        assert report.checked_in, (run, index, after, report)
        if installer_for(_agent(state)).active_version() != "2.0.0":
            report = _agent(state).run_once()
        final = installer_for(_agent(state))
        assert final.active_version() == "2.0.0", (
            run,
            index,
            after,
            report,
            _states(server, rollout_id).get(f"cut-{run}"),
            (state.root / "update.json").exists(),
            final.slots(),
        )
        assert not final.pending()
        assert _states(server, rollout_id)[f"cut-{run}"] == "committed"


def test_a_power_cut_between_commit_and_report_still_reports_committed(
    server: RunningServer, tmp_path: Path
) -> None:
    """The home hears of every commit: a power cut at each of the update's last file
    operations (around the slot's commit and the report after it), then a restart, and the
    server's rollout says "committed" for the device, not "booted" for ever."""
    from tests.test_agent_power_cuts import PowerCut, power_cut_at

    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server, stages=(100,), ratio=1.0 - 1e-9)
    probe = _device(server, tmp_path, "probe")
    with power_cut_at(None, False) as counter:
        assert "firmware 2.0.0 committed" in _agent(probe).run_once().steps
    operations = counter[0]
    for index in range(operations - 8, operations + 1):
        name = f"tail-{index}"
        state = _device(server, tmp_path, name)
        with power_cut_at(index, True), contextlib.suppress(PowerCut):
            _agent(state).run_once()
        for _ in range(2):  # the restart finishes the job, and reports what it owes
            assert _agent(state).run_once().checked_in
        assert installer_for(_agent(state)).active_version() == "2.0.0", index
        assert _states(server, rollout_id)[name] == "committed", index
        assert not (state.root / "update.json").exists(), index


def test_rollouts_in_the_admin_api(server: RunningServer, tmp_path: Path) -> None:
    from homing.operations import fleet as operations

    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    reader = {
        "Authorization": "Bearer "
        + operations.add_token(server.state.db, "t", datetime.now(UTC), "reader", "read-only")
    }
    operator = {
        "Authorization": "Bearer "
        + operations.add_token(server.state.db, "t", datetime.now(UTC), "ops", "operator")
    }
    body = {"version": "2.0.0", "hardware": "board-a", "stages": [10, 100]}
    assert server.request("POST", "/v1/admin/rollouts", body, headers=reader).status == 403
    created = server.request("POST", "/v1/admin/rollouts", body, headers=operator)
    assert created.status == 201, created.body
    rollout_id = created.json()["id"]
    assert server.request("POST", "/v1/admin/rollouts", body, headers=operator).status == 409
    bad = {"version": "9.9.9", "hardware": "board-a"}
    assert server.request("POST", "/v1/admin/rollouts", bad, headers=operator).status == 404
    path = f"/v1/admin/rollouts/{rollout_id}"
    assert server.request("POST", f"{path}/pause", {}, headers=operator).status == 200
    shown = server.request("GET", path, headers=reader).json()
    assert shown["status"] == "paused"
    assert "stage_progress" in shown
    assert server.request("POST", f"{path}/resume", {}, headers=operator).status == 200
    listed = server.request("GET", "/v1/admin/rollouts", headers=reader).json()["rollouts"]
    assert [r["status"] for r in listed] == ["active"]
    status = server.request("GET", "/v1/admin/status", headers=reader).json()
    assert status["rollouts"][0]["version"] == "2.0.0"


def test_ceremony_mode_release_signed_offline_and_imported(
    server: RunningServer, tmp_path: Path
) -> None:
    import shutil

    from homing.ceremonies.releases import import_signed, sign_offline

    offline = tmp_path / "offline-metadata"
    shutil.copytree(server.data / "repository" / "metadata", offline)
    key = server.data / "keys" / "firmware.key.pem"  # in ceremony mode: on removable media
    signed = tmp_path / "signed"
    result = run_homing(
        "release",
        str(_image(tmp_path)),
        "--version",
        "2.0.0",
        "--hardware",
        "board-a",
        "--offline-metadata",
        str(offline),
        "--release-key",
        str(key),
        "--out",
        str(signed),
        "--data",
        str(tmp_path / "no-data-needed"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = run_homing(
        "release-import", str(signed), "--data", str(server.data), "--db", server.state.db.url
    )
    assert imported.returncode == 0, imported.stderr
    assert "sequence 1" in imported.stdout
    state = _device(server, tmp_path, "dev-1")
    _rollout(server)
    assert "firmware 2.0.0 committed" in _agent(state).run_once().steps
    # A stale offline signature (the role moved on) and a wrong key are refused.
    with pytest.raises(CeremonyError, match="expects"):
        import_signed(server.state.dd, signed, datetime.now(UTC))
    offline2 = tmp_path / "offline2"
    shutil.copytree(server.data / "repository" / "metadata", offline2)
    wrong_key = server.data / "keys" / "targets.key.pem"
    sign_offline(
        offline2,
        _image(tmp_path, b"v3"),
        "3.0.0",
        "board-a",
        wrong_key,
        tmp_path / "wrong",
        datetime.now(UTC),
    )
    with pytest.raises(CeremonyError, match="not signed by enough valid keys"):
        import_signed(server.state.dd, tmp_path / "wrong", datetime.now(UTC))
    sign_offline(
        offline2,
        _image(tmp_path, b"v3"),
        "3.0.0",
        "board-a",
        key,
        tmp_path / "tampered",
        datetime.now(UTC),
    )
    (tmp_path / "tampered" / "image").write_bytes(b"evil")
    with pytest.raises(CeremonyError, match="does not match"):
        import_signed(server.state.dd, tmp_path / "tampered", datetime.now(UTC))


def test_update_applied_by_hand_from_a_bundle_is_reported(
    server: RunningServer, tmp_path: Path
) -> None:

    from homing.store import devices as device_store

    state = _device(server, tmp_path, "dev-1")
    rel = release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    bundle = tmp_path / "bundle.tar"
    result = run_homing(
        "recovery-bundle",
        "--data",
        str(server.data),
        "--out",
        str(bundle),
        "--image",
        rel.target,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    applied = run_homing(
        "agent", "apply-bundle", "--state", str(state.root), str(bundle), timeout=60
    )
    assert applied.returncode == 0, applied.stderr
    assert "firmware 2.0.0 installed by hand and committed" in " ".join(applied.stdout.split())
    assert _agent(state).run_once().checked_in
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-1")
    assert row is not None
    assert row.firmware_version == "2.0.0"
    assert row.health is not None
    assert row.health["manual_update"]["version"] == "2.0.0"
    assert not (state.root / "manual-update.json").exists()


def test_maintenance_window_and_bandwidth_cap(server: RunningServer, tmp_path: Path) -> None:
    from homing.agent.update import in_window
    from homing.fsutil import atomic_write

    local = datetime(2026, 11, 28, 3, 30).astimezone()
    assert in_window("2-5", local)
    assert not in_window("6-8", local)
    assert in_window("22-4", local)
    assert in_window(None, local)
    state = _device(server, tmp_path, "dev-1")
    config = state.config()
    hour = datetime.now().astimezone().hour
    config.maintenance_window = f"{(hour + 2) % 24}-{(hour + 3) % 24}"
    config.bandwidth_kib_s = 1024
    atomic_write(state.config_path, config.to_json())
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    _rollout(server)
    started = time.monotonic()
    report = _agent(state).run_once()
    elapsed = time.monotonic() - started
    assert any("waits for the maintenance window" in s for s in report.steps)
    assert installer_for(_agent(state)).active_version() is None
    # 108,000 bytes at 1 MiB/s take about 0.1 s.
    assert elapsed >= len(IMAGE) / (1024 * 1024) * 0.9


def test_rollout_to_a_named_group(server: RunningServer, tmp_path: Path) -> None:
    states = [_device(server, tmp_path, f"dev-{i}") for i in range(4)]
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    with server.state.db.engine.begin() as conn:
        firmware.set_group(conn, "lab", ["dev-1", "dev-3"])
    ro = rollouts.create(
        server.state.db,
        "test",
        datetime.now(UTC),
        "2.0.0",
        "board-a",
        rollouts.RolloutPlan(group="lab"),
    )
    server.settle()
    for state in states:
        assert _agent(state).run_once().checked_in
    versions = {s.config().device_id: installer_for(_agent(s)).active_version() for s in states}
    assert versions == {"dev-0": None, "dev-1": "2.0.0", "dev-2": None, "dev-3": "2.0.0"}
    assert _states(server, ro.id) == {"dev-1": "committed", "dev-3": "committed"}
    with pytest.raises(Exception, match="empty or unknown"):
        rollouts.create(
            server.state.db,
            "test",
            datetime.now(UTC),
            "2.0.0",
            "board-a",
            rollouts.RolloutPlan(group="nobody"),
        )


def test_a_rotated_firmware_key_is_followed_and_the_retired_one_is_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    """The release key changes while a device sleeps: it installs the next release by the new
    key; an attacker holding the retired key (and the server's online keys) installs nothing."""
    from tuf.api.metadata import TargetFile

    from homing import ceremonies
    from homing.pki.keystore import FileKeyStore
    from homing.trust.repository import FIRMWARE_ROLE
    from homing.trust.signing import signer_for

    state = _device(server, tmp_path, "dev-1")  # trust from before the rotation
    keys = FileKeyStore(server.data / "keys", None, unsafe_plaintext=True)
    retired = keys.load("firmware")
    assert ceremonies.rotate_firmware_key(server.state.dd, datetime.now(UTC)) == 2
    assert not keys.exists("firmware")  # retired: deleted from the store
    assert keys.exists("firmware-g2")
    rel = release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    assignment = _assignment(server, rel.target, "2.0.0")
    assert "firmware 2.0.0 committed" in _apply(state, assignment).steps

    # Attack: the retired key signs an image and the attacker publishes it with the online keys.
    settings = server.state.dd.settings()
    repo = server.state.dd.repository(settings)
    evil = TargetFile.from_data("firmware/board-a-6.6.6", b"evil", ["sha256"])
    evil.unrecognized_fields["custom"] = {"hardware": "board-a", "version": "6.6.6", "sequence": 99}
    role = repo.targets(FIRMWARE_ROLE)
    role.signed.targets[evil.path] = evil
    role.signed.version += 1
    role.signatures.clear()
    role.sign(signer_for(retired))  # type: ignore[arg-type]
    repo._store_target(evil.path, b"evil")
    snapshot = signer_for(keys.load("snapshot-1"))  # type: ignore[arg-type]
    timestamp = signer_for(keys.load("timestamp-1"))  # type: ignore[arg-type]
    repo._publish_role(FIRMWARE_ROLE, role, snapshot, timestamp, datetime.now(UTC))
    from homing.errors import MetadataError

    with pytest.raises(MetadataError, match="signed by 0/1 keys"):
        _apply(state, {**assignment, "target": evil.path, "version": "6.6.6"})
    assert installer_for(_agent(state)).active_version() == "2.0.0"


def test_every_stage_of_a_small_fleet_holds_a_device_and_says_which(
    server: RunningServer, tmp_path: Path
) -> None:
    """A lab of eight: the default 1 % stage held none of them by the hash alone."""
    names = [f"lab-{i}" for i in range(8)]
    states = {name: _device(server, tmp_path, name) for name in names}
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    site = ["--data", str(server.data), "--db", server.config.db_url or ""]
    created = run_homing(
        "rollout", "create", "--version", "2.0.0", "--hardware", "board-a", *site
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    line = created.stdout.strip()
    assert "stage 1 of 4 (1%): 1 of 8 board-a devices (lab-" in line, line
    rollout_id = int(line.split()[1])
    listed = run_homing("rollout", "list", *site)
    assert f"{rollout_id}: 2.0.0 -> board-a active, stage 1 of 4 (1%): 1 of 8" in listed.stdout
    server.settle()
    # The one device named is the one offered the image; the others are not.
    first = next(n for n in names if f"({n})" in line)
    for name, state in states.items():
        report = _agent(state).run_once()
        assert ("firmware 2.0.0 committed" in report.steps) == (name == first), name
    # Each later stage holds at least its share rounded up, and everyone before it (the
    # server advances stages as devices commit; here each is evaluated once more too).
    seen, stages = {first}, []
    for _ in range(4):
        with server.state.db.begin() as conn:
            ro = rollouts.evaluate(conn, rollout_id, datetime.now(UTC))
        status = run_homing("rollout", "status", str(rollout_id), *site)
        progress = json.loads(status.stdout)["stage_progress"]
        if ro.status == "done":
            break
        members = set(progress["devices"])
        assert progress["size"] == len(members) >= max(1, math.ceil(ro.percent * 8 / 100))
        assert progress["class_size"] == 8
        assert seen <= members, (ro.percent, seen, members)  # nobody flips out
        seen = members
        stages.append(ro.percent)
        for name in members:
            _agent(states[name]).run_once()
    assert ro.status == "done", stages
    assert stages[-1] == 100
    for state in states.values():
        assert installer_for(_agent(state)).active_version() == "2.0.0"


def test_an_image_larger_than_the_agents_memory_installs_in_bounded_memory(
    server: RunningServer, tmp_path: Path
) -> None:
    """A 300 MB image through the installed agent, in a process whose peak resident set
    stays far below the image: download, verification and the slot write all stream."""
    import os
    import subprocess
    import sys

    from tests.harness import homing_entry_point

    size = 300 * 1024 * 1024
    state = _device(server, tmp_path, "big-1")
    image = tmp_path / "big.img"
    with image.open("wb") as out:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            out.write(block[i % 7 :] + block[: i % 7])
    release(server.state.dd, image, "2.0.0", "board-a", datetime.now(UTC))
    _rollout(server)
    # Measured by a small parent of its own: a child forked from this test's process would
    # count this process's pages (the server, the image written) until it execs.
    measure = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen(sys.argv[1:])\n"
        "_, status, usage = os.wait4(child.pid, 0)\n"
        "print('maxrss-kib', usage.ru_maxrss)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    agent = subprocess.run(
        [sys.executable, "-c", measure, homing_entry_point(), "agent", "run",
         "--state", str(state.root), "--once", "--firmware-version", "1.0.0"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOMING_")},
        check=False,
    )  # fmt: skip
    out, err = agent.stdout, agent.stderr
    assert agent.returncode == 0, err
    peak_mib = int(out.split("maxrss-kib")[-1].split()[0]) / 1024
    assert installer_for(_agent(state)).active_version() == "2.0.0", out + err
    slot = installer_for(_agent(state))
    assert (slot.root / slot.active_slot() / "image").stat().st_size == size  # type: ignore[attr-defined]
    # The agent's own footprint (about 50 MB), not the image's 300.
    assert peak_mib < 128, f"peak resident set {peak_mib:.0f} MiB for a 300 MiB image"


def test_a_stage_keeps_its_devices_as_the_fleet_grows(
    server: RunningServer, tmp_path: Path
) -> None:
    """The cutoff is fixed when a stage starts: devices enrolled afterwards may join a stage,
    never push one out of it, however many arrive (five waves of ten)."""
    for i in range(4):
        _device(server, tmp_path, f"first-{i}")
    release(server.state.dd, _image(tmp_path), "2.0.0", "board-a", datetime.now(UTC))
    rollout_id = _rollout(server, stages=(10, 100))
    with server.state.db.engine.connect() as conn:
        ro = firmware.rollout(conn, rollout_id)
        before = set(firmware.stage_counts(conn, ro, datetime.now(UTC))["devices"])
    assert len(before) == 1  # 10 % of four, rounded up
    for wave in range(5):
        for i in range(10):
            _device(server, tmp_path, f"later-{wave}-{i}")
        with server.state.db.engine.connect() as conn:
            now_in = set(firmware.stage_counts(conn, ro, datetime.now(UTC))["devices"])
        assert before <= now_in, (wave, before, now_in)
        assert all(firmware.bucket(d, rollout_id) < ro.threshold for d in now_in)
        before = now_in
