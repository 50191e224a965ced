"""A restore never strands a device: the restored site publishes past what devices hold."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.ceremonies.releases import release
from homing.operations import rollouts
from homing.site import DataDir
from homing.site.backup import backup
from tests.fleet import check_in, device
from tests.harness import Clock, RunningServer, assert_one_error, run_homing

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _held_timestamp(state_root: Path) -> int:
    import json

    return int(
        json.loads((state_root / "trust" / "timestamp.json").read_bytes())["signed"]["version"]
    )


def test_devices_that_moved_on_after_the_backup_come_home_to_the_restored_site(
    server: RunningServer, tmp_path: Path
) -> None:
    dd = server.state.dd
    fleet = [device(server, tmp_path, f"dev-{i}", "board-a") for i in range(3)]
    for state in fleet:
        check_in(server, state)
    archive = tmp_path / "daily.tar.gz"
    backup(dd, archive, datetime.now(UTC))
    # The site lives on after the nightly backup: timestamps, a release, a
    # server certificate; every device checks in and holds the newer versions.
    for _ in range(5):
        ceremonies.refresh_timestamp(dd, datetime.now(UTC))
    image = tmp_path / "fw.img"
    image.write_bytes(b"release after the backup " * 100)
    release(dd, image, "2.0.0", "board-a", datetime.now(UTC))
    plan = rollouts.RolloutPlan(stages=(100,))
    rollouts.create(server.state.db, "ops", datetime.now(UTC), "2.0.0", "board-a", plan)
    server.settle()
    for state in fleet:
        assert "firmware 2.0.0 committed" in check_in(server, state).steps
    held = max(_held_timestamp(state.root) for state in fleet)

    # The host is lost; the operator restores last night's backup, from outside.
    restored = tmp_path / "restored"
    result = run_homing("restore", "--data", str(restored), "--from", str(archive))
    assert result.returncode == 0, result.stderr
    assert "published firmware v" in result.stdout, result.stdout
    published = DataDir(restored).repository(DataDir(restored).settings()).timestamp()
    assert published.signed.version > held
    with RunningServer(restored, DataDir(restored).default_db_url(), Clock()).start() as again:
        # No manual step: every device checks in to the restored site by itself.
        for state in fleet:
            check_in(again, state)
            assert _held_timestamp(state.root) == published.signed.version
        # The restored site never heard of release 2.0.0, which the fleet runs;
        # its next release still goes above it, and the fleet takes it.
        site = DataDir(restored)
        image.write_bytes(b"release after the restore " * 100)
        newer = release(site, image, "3.0.0", "board-a", datetime.now(UTC))
        assert newer.sequence > 1
        rollouts.create(site.database(), "ops", datetime.now(UTC), "3.0.0", "board-a", plan)
        again.settle()
        for state in fleet:
            assert "firmware 3.0.0 committed" in check_in(again, state).steps
        site.close()


def test_a_restore_into_a_site_that_exists_is_refused_in_one_line(
    server: RunningServer, tmp_path: Path
) -> None:
    archive = tmp_path / "daily.tar.gz"
    backup(server.state.dd, archive, datetime.now(UTC))
    result = run_homing("restore", "--data", str(server.state.dd.root), "--from", str(archive))
    assert_one_error(result, "not empty")
