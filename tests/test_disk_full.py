"""A full disk under the database: the operator reads one line, never a traceback.

The database lives on a real tmpfs of one mebibyte (mounted by the test, as
root, like the network namespaces), filled up after the site is made.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from tests.harness import assert_one_error, run_homing, system_tool


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(
        [system_tool("mount"), "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run([system_tool("umount"), str(mountpoint)], check=True)


def _fill(disk: Path) -> None:
    """Everything left on the disk goes to one file, until the disk says it is full."""
    import errno
    import shutil

    def write_until_full() -> None:
        with (disk / "filler").open("wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)

    with pytest.raises(OSError, match="No space left on device") as full:
        write_until_full()
    assert full.value.errno == errno.ENOSPC
    assert shutil.disk_usage(disk).free < 4096


def test_a_full_disk_is_one_line_from_the_cli(tmp_path: Path, tiny_disk: Path) -> None:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    db = f"sqlite:///{tiny_disk / 'homing.db'}"
    first = run_homing("token", "add", "ops", "--data", str(data), "--db", db)
    assert first.returncode == 0, first.stderr
    _fill(tiny_disk)
    for name in ("ops-2", "ops-3", "ops-4"):
        result = run_homing("token", "add", name, "--data", str(data), "--db", db)
        if result.returncode != 0:
            break
    assert_one_error(result, "is the database's disk full? free space, then retry")


def test_a_database_that_refuses_a_write_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """Opened read-only (as after a mount turned read-only): the write fails in one line."""
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    path = tmp_path / "homing.db"
    first = run_homing("token", "add", "ops", "--data", str(data), "--db", f"sqlite:///{path}")
    assert first.returncode == 0, first.stderr
    readonly = f"sqlite:///file:{path}?mode=ro&uri=true"
    result = run_homing("token", "add", "ops-2", "--data", str(data), "--db", readonly)
    assert_one_error(result, "the database refused: attempt to write a readonly database")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_data_directory_is_a_503_that_says_so(
    tiny_disk: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's data directory fills up: a request that must write it is told why."""
    from homing.operations import fleet as operations
    from tests.harness import Clock, RunningServer

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tiny_disk / "site"
    ceremonies.init(data, datetime.now(UTC))
    with RunningServer(data, db_url, Clock()).start() as server:
        factory = operations.add_factory(server.state.db, "t", datetime.now(UTC), "s1")
        server.enroll("dev-1", ("s1", factory), tiny_disk.parent)
        token = operations.add_token(server.state.db, "t", datetime.now(UTC), "ops", "operator")
        _fill(tiny_disk)
        # A revocation re-signs the CRL in the data directory, which has no room.
        answer = server.request(
            "POST",
            "/v1/admin/devices/dev-1/revoke",
            {"reason": "stolen"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status == 503, answer.body
        assert answer.json()["error"] == "disk_full"
        assert "No space left on device" in answer.json()["message"]
        ready = server.request("GET", "/readyz")
        assert ready.status == 503
        assert "the data directory takes no write" in ready.json()["message"]
