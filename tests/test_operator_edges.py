"""No sharp edges at 3 a.m.: each bad input an operator or a device installer can type gets one
line saying what is wrong and what to do, a non-zero exit, no secret and no traceback; a failed
enrollment leaves nothing behind, so the corrected retry just works."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.operations import fleet as operations
from tests.harness import RunningServer, assert_one_error, run_homing


@pytest.fixture
def site(tmp_path: Path) -> Path:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    return data


def test_a_database_password_never_reaches_the_error_line(site: Path) -> None:
    for url in (
        "postgresql://ops:hunter2secret@127.0.0.1:notaport/homing",  # does not parse
        "postgresql://ops:hunter2secret@127.0.0.1:1/homing",  # does not answer
    ):
        result = run_homing("status", "--data", str(site), "--db", url)
        assert_one_error(result, "ops:***@127.0.0.1")
        assert "hunter2secret" not in result.stderr + result.stdout


def test_a_missing_data_directory_is_named_with_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for command in (["status"], ["devices", "list"]):
        assert_one_error(
            run_homing(*command, "--data", str(missing)),
            f"no homing data directory at {missing}: run 'homing init --data {missing}'",
        )
    assert not missing.exists()  # and nothing was created there


def test_bad_files_are_named_for_what_they_are_not(site: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x30\x82garbage that is not DER at all")
    assert_one_error(
        run_homing("pki", "issue", "--data", str(site), "--profile", "device",
                   "--csr", str(garbage), "--device-id", "dev-1"),
        "the CSR cannot be parsed: it is not a PKCS#10 request in DER",
    )  # fmt: skip
    state = tmp_path / "device"
    provisioned = run_homing("device", "provision", "--data", str(site), "--out", str(state),
                             "--id", "dev-1")  # fmt: skip
    assert provisioned.returncode == 0, provisioned.stderr
    assert_one_error(
        run_homing("agent", "apply-bundle", "--state", str(state), str(garbage)),
        "this is not a recovery bundle: not a tar archive",
    )
    assert_one_error(
        run_homing("agent", "run", "--state", str(state), "--server", "localhost:28443",
                   "--once"),
        "--server 'localhost:28443' must be https://HOST[:PORT] (e.g. https://localhost:28443)",
    )  # fmt: skip
    bundle = tmp_path / "bundle.tar"
    assert_one_error(
        run_homing("recovery-bundle", "--data", str(site), "--out", str(bundle),
                   "--image", "firmware/board-a/typo.img"),
        "no signed firmware target 'firmware/board-a/typo.img'",
    )  # fmt: skip
    assert not bundle.exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_enrollment_leaves_nothing_and_the_retry_works(
    server: RunningServer, tmp_path: Path
) -> None:
    secret = operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1")
    url = f"https://127.0.0.1:{server.port}"
    state = tmp_path / "device"
    root = server.data / "repository/metadata/1.root.json"

    def enroll(factory: str, root_file: Path) -> subprocess.CompletedProcess[str]:
        return run_homing("agent", "enroll", "--state", str(state), "--server", url,
                          "--factory", factory, "--root", str(root_file), "--id", "dev-9",
                          "--hardware", "board-a")  # fmt: skip

    wrong = base64.b64encode(b"not the secret").decode()
    result = enroll(f"line-1:{wrong}", root)
    assert_one_error(result, "enrollment refused")
    assert not state.exists()
    assert [p.name for p in tmp_path.iterdir() if "enrolling" in p.name] == []
    assert_one_error(
        enroll(f"line-1:{secret}", server.data / "pki" / "root-ca.pem"),
        "--root must be the site's TUF root metadata",
    )
    assert not state.exists()
    done = enroll(f"line-1:{secret}", root)
    assert done.returncode == 0, done.stderr
    assert (state / "device.json").exists()
    assert_one_error(
        enroll(f"line-1:{secret}", root),
        "already holds a device state: this device is enrolled",
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_device_pointed_at_another_sites_server_is_told_so(
    server: RunningServer, tmp_path: Path
) -> None:
    """A device of site A dialling site B's server: not 'signed by 0/1 keys' alone, but what
    it means."""
    other = tmp_path / "other-site"
    ceremonies.init(other, datetime.now(UTC))
    state = tmp_path / "device-of-other-site"
    made = run_homing("device", "provision", "--data", str(other), "--out", str(state),
                      "--id", "dev-a")  # fmt: skip
    assert made.returncode == 0, made.stderr
    ran = run_homing("agent", "run", "--state", str(state), "--once",
                     "--server", f"https://127.0.0.1:{server.port}")  # fmt: skip
    assert_one_error(ran, "this server serves another site's metadata (check --server)")
