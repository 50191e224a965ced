"""The CLI: real commands in a subprocess; errors are one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import device_csr
from tests.harness import run_homing as homing


def _assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli") / "data"
    result = homing("init", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert "server CA backup pin" in result.stdout
    assert "UNENCRYPTED" in result.stderr
    return data


def test_init_then_exist_ok_prints_summary(cli_data: Path) -> None:
    result = homing("init", "--data", str(cli_data), "--exist-ok")
    assert result.returncode == 0
    assert "already set up" in " ".join(result.stdout.split())


def test_init_twice_is_one_clear_error(cli_data: Path) -> None:
    _assert_one_line_error(homing("init", "--data", str(cli_data)), "not empty")


def test_rotations_and_timestamp(cli_data: Path) -> None:
    for args, expected in [
        (("rotate", "root"), "published root version 2"),
        (("rotate", "online-keys"), "online keys replaced in root version 3"),
        (("rotate", "server-ca"), "generation 2 is active"),
        (("rotate", "device-ca"), "generation 2 is active"),
        (("rotate", "server-cert"), "new server certificate"),
        (("timestamp", "refresh", "--expires-in", "2"), "timestamp version"),
        (("targets", "refresh"), "targets version"),
    ]:
        result = homing(*args, "--data", str(cli_data))
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
    pins = json.loads(homing("pins", "show", "--data", str(cli_data)).stdout)
    assert len(pins["spki_pins"]) == 2


def test_issue_revoke_and_crl(cli_data: Path, tmp_path: Path) -> None:
    csr = tmp_path / "d.csr"
    csr.write_bytes(device_csr("cli-dev"))
    out = tmp_path / "d.pem"
    result = homing(
        "pki",
        "issue",
        "--data",
        str(cli_data),
        "--profile",
        "device",
        "--csr",
        str(csr),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().count(b"BEGIN CERTIFICATE") == 2
    result = homing("pki", "revoke", "--data", str(cli_data), "--device", "cli-dev")
    assert result.returncode == 0
    assert "revoked 1" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("rotate", "root", "--data", "/nonexistent/homing"), "no homing data directory"),
        (("pki", "revoke", "--device", "ghost"), "no device 'ghost'"),
        (("pki", "revoke", "--serial", "xyz"), "not hexadecimal"),
        (("pki", "revoke"), "exactly one of a device id or a serial"),
        (("init", "--ceremony"), "--ceremony needs at least one --root-key"),
    ],
)
def test_errors_are_one_line(cli_data: Path, args: tuple[str, ...], expected: str) -> None:
    if "--data" not in args and args[0] != "init":
        args = (*args, "--data", str(cli_data))
    _assert_one_line_error(homing(*args), expected)


def test_bad_csr_is_refused_with_reason(cli_data: Path, tmp_path: Path) -> None:
    csr = tmp_path / "bad.csr"
    csr.write_bytes(b"garbage")
    result = homing(
        "pki", "issue", "--data", str(cli_data), "--profile", "device", "--csr", str(csr)
    )
    _assert_one_line_error(result, "CSR cannot be parsed")


def test_encrypted_data_dir_needs_the_passphrase(tmp_path: Path) -> None:
    data = tmp_path / "enc"
    env = {"HOMING_KEY_PASSPHRASE": "s3cret-s3cret"}
    result = homing("init", "--data", str(data), env=env)
    assert result.returncode == 0, result.stderr
    assert "UNENCRYPTED" not in result.stderr
    _assert_one_line_error(
        homing("rotate", "server-cert", "--data", str(data)), "set HOMING_KEY_PASSPHRASE"
    )
    _assert_one_line_error(
        homing(
            "rotate", "server-cert", "--data", str(data), env={"HOMING_KEY_PASSPHRASE": "wrong"}
        ),
        "wrong passphrase",
    )
    assert homing("rotate", "server-cert", "--data", str(data), env=env).returncode == 0


def test_fleet_commands(cli_data: Path, tmp_path: Path) -> None:
    result = homing("factory", "add", "line-1", "--data", str(cli_data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("line-1:")
    _assert_one_line_error(
        homing("factory", "add", "line-1", "--data", str(cli_data)), "exists already"
    )
    _assert_one_line_error(homing("factory", "add", "../x", "--data", str(cli_data)), "invalid")
    token = homing("token", "add", "ops", "--role", "operator", "--data", str(cli_data))
    assert token.returncode == 0
    assert token.stdout.strip().splitlines()[-1].startswith("hom_")
    status = homing("status", "--json", "--data", str(cli_data))
    assert status.returncode == 0, status.stderr
    assert "metadata_versions" in json.loads(status.stdout)
    assert homing("devices", "list", "--data", str(cli_data)).returncode == 0
    _assert_one_line_error(homing("revoke", "ghost", "--data", str(cli_data)), "no device 'ghost'")
    _assert_one_line_error(
        homing("serve", "--data", str(cli_data), "--listen", "nonsense"),
        "--listen must be HOST:PORT",
    )
    for option, value in (("--checkin-limit", "10"), ("--enroll-limit", "0/5")):
        _assert_one_line_error(
            homing("serve", "--data", str(cli_data), option, value),
            f"{option} must be BURST/SECONDS",
        )
    _assert_one_line_error(
        homing("serve", "--data", str(cli_data), "--enroll-webhook", "ftp://decide.example"),
        "--enroll-webhook must be an http:// or https:// URL",
    )
