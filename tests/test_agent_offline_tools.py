"""The TUF conformance client command and offline recovery bundles."""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.bundle import apply_bundle
from homing.agent.state import DeviceState
from homing.errors import CeremonyError, MetadataExpiredError, TrustError
from homing.operations.provisioning import provision
from homing.site import DataDir
from homing.trust.bundle import extracted
from tests.harness import RunningServer, run_homing


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: this server logs nothing."""


@pytest.fixture
def http_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(data / "repository"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield data, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return run_homing("agent", "tuf-client", *args, timeout=60)


def test_tuf_client_protocol(http_repo: tuple[Path, str], tmp_path: Path) -> None:
    data, url = http_repo
    meta = tmp_path / "client"
    root = data / "repository" / "metadata" / "1.root.json"
    assert _client("--metadata-dir", str(meta), "init", str(root)).returncode == 0
    ceremonies.rotate_root(data, datetime.now(UTC))
    refresh = _client("--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh")
    assert refresh.returncode == 0, refresh.stderr
    for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
        assert (meta / name).exists(), name
    (target,) = (data / "repository" / "targets").glob("*.pins.json")
    download = [
        "--metadata-url",
        f"{url}/metadata/",
        "--metadata-dir",
        str(meta),
        "--target-name",
        "pins.json",
        "--target-dir",
        str(tmp_path / "t"),
        "--target-base-url",
        f"{url}/targets/",
        "download",
    ]
    assert _client(*download).returncode == 0
    assert (tmp_path / "t" / "pins.json").read_bytes() == target.read_bytes()
    # A valid target already downloaded is not fetched again: it survives the server losing it.
    shutil.move(target, tmp_path / "gone")
    assert _client(*download).returncode == 0
    # Failures exit 1 with one line.
    bad = _client(
        "--metadata-url", f"{url}/nothing/", "--metadata-dir", str(tmp_path / "x"), "refresh"
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr


def test_tuf_client_refuses_a_rollback(http_repo: tuple[Path, str], tmp_path: Path) -> None:
    data, url = http_repo
    meta = tmp_path / "client"
    assert (
        _client(
            "--metadata-dir",
            str(meta),
            "init",
            str(data / "repository" / "metadata" / "1.root.json"),
        ).returncode
        == 0
    )
    old = (data / "repository" / "metadata" / "timestamp.json").read_bytes()
    ceremonies.refresh_timestamp(data, datetime.now(UTC))
    assert (
        _client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh"
        ).returncode
        == 0
    )
    (data / "repository" / "metadata" / "timestamp.json").write_bytes(old)
    assert (
        _client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh"
        ).returncode
        == 1
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_recovery_bundle_brings_a_stranded_device_back(
    server: RunningServer, tmp_path: Path
) -> None:
    """A device that reaches nothing takes new roots and pins from a file, then checks in."""
    state = provision(server.state.dd, tmp_path / "dev", datetime.now(UTC), device_id="dev-1")
    now = datetime.now(UTC)
    ceremonies.rotate_root(server.state.dd, now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    bundle = tmp_path / "bundle.tar"
    assert ceremonies.recovery_bundle(server.state.dd, bundle, now).files > 5
    result = run_homing(
        "agent", "apply-bundle", "--state", str(state.root), str(bundle), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "root v2" in result.stdout
    server.settle()
    report = Agent(state, server=f"https://127.0.0.1:{server.port}").run_once()
    assert report.checked_in, report
    assert report.steps[0].startswith("trust refreshed over pinned TLS")


@pytest.mark.parametrize("name", ["../evil", "/etc/x", "metadata/../../evil", "other/file"])
def test_bundle_with_unsafe_entries_is_refused(tmp_path: Path, name: str) -> None:
    bundle = tmp_path / "evil.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(TrustError, match="unsafe"), extracted(bundle):
        pass  # opening the bundle is what must fail
    assert not (tmp_path.parent / "evil").exists()


def test_bundle_with_a_link_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "link.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo("metadata/root.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(TrustError, match="unsafe"), extracted(bundle):
        pass  # opening the bundle is what must fail


def _stranded_device_and_bundle(
    data_dir: Path, tmp_path: Path, now: datetime
) -> tuple[DeviceState, Path, ceremonies.BundleSummary]:
    """A device on root 1 while the site moved to root 2, and a 30-day bundle for it."""
    state = provision(DataDir(data_dir), tmp_path / "dev", now, device_id="dev-far")
    ceremonies.rotate_root(data_dir, now)
    bundle = tmp_path / "bundle.tar"
    summary = ceremonies.recovery_bundle(data_dir, bundle, now, valid_for=timedelta(days=30))
    return state, bundle, summary


def test_a_recovery_bundle_is_valid_for_the_time_chosen_at_creation(
    data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    """Carried by hand for ten days, the bundle still brings the device to today's root."""
    state, bundle, summary = _stranded_device_and_bundle(data_dir, tmp_path, now)
    assert summary.valid_until == now + timedelta(days=30)
    repo = DataDir(data_dir).repository(DataDir(data_dir).settings())
    with extracted(bundle) as directory:
        bundled = json.loads((directory / "metadata" / "timestamp.json").read_bytes())["signed"]
    # The live repository is already past the bundle's versions, with its usual short expiry.
    assert repo.timestamp().signed.version == bundled["version"] + 1
    assert repo.timestamp().signed.expires - now <= timedelta(days=1)
    ten_days_later = Agent(state, clock=lambda: now + timedelta(days=10))
    lines = apply_bundle(ten_days_later, bundle)
    assert "root v2" in lines[0]


def test_an_expired_recovery_bundle_is_refused_saying_when_it_expired(
    data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    state, bundle, summary = _stranded_device_and_bundle(data_dir, tmp_path, now)
    pins_before = (state.root / "pins.json").read_bytes()
    late = Agent(state, clock=lambda: now + timedelta(days=31))
    with pytest.raises(MetadataExpiredError, match="recovery bundle expired on") as refused:
        apply_bundle(late, bundle)
    assert summary.valid_until.isoformat() in str(refused.value)
    assert "--valid-days" in str(refused.value)
    # Refused: the device adopted nothing from it (python-tuf may keep the
    # verified root, which is signed by the one before and safe to keep).
    assert (state.root / "pins.json").read_bytes() == pins_before


def test_a_bundle_cannot_outlive_the_offline_metadata(
    data_dir: Path, tmp_path: Path, now: datetime
) -> None:
    with pytest.raises(CeremonyError, match="targets metadata expires"):
        ceremonies.recovery_bundle(
            data_dir, tmp_path / "b.tar", now, valid_for=timedelta(days=3 * 365)
        )
    assert not (tmp_path / "b.tar").exists()


def test_recovery_bundle_cli_prints_its_validity_and_refuses_a_bad_one(
    data_dir: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "b.tar"
    made = run_homing(
        "recovery-bundle", "--data", str(data_dir), "--out", str(bundle), "--valid-days", "14"
    )
    assert made.returncode == 0, made.stderr
    assert "valid until" in made.stdout
    refused = run_homing(
        "recovery-bundle", "--data", str(data_dir), "--out", str(bundle), "--valid-days", "2000"
    )
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "a bundle can be valid until" in refused.stderr
